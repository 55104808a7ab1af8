#if canImport(Glibc)
import Glibc
#endif
import Foundation
import HearthCore
import HearthImage
import Synchronization

/// Step results by cache key (`BuildPlan.Step.key`) → the layer the step
/// made, in `<root>/build-cache.json`, written whole and atomically (temp
/// file, fsync, rename). Entries are added only when a build succeeds, with
/// its image. An entry whose layer is no longer in the store (its images
/// were removed) is a miss, and is dropped at the next write.
public final class BuildCache: Sendable {
    public struct Entry: Codable, Sendable, Equatable {
        /// `sha256:…` of the layer.
        public var diffID: String
        /// The step, for a person reading the file.
        public var step: String
        public var created: String
    }

    struct File: Codable {
        static let currentVersion = 1
        var version = File.currentVersion
        var entries: [String: Entry] = [:]
    }

    public let path: String
    private let lock = Mutex(())

    public init(stateRoot: String) {
        path = stateRoot + "/build-cache.json"
    }

    /// The layer of the step with `key`, when the store still has it.
    public func lookup(_ key: String, layerExists: (String) throws -> Bool) throws -> Entry? {
        try lock.withLock { _ in
            guard let entry = try load().entries[key], try layerExists(entry.diffID) else { return nil }
            return entry
        }
    }

    /// Adds `entries`, drops those whose layer is gone, writes the file.
    public func record(_ entries: [String: Entry], layerExists: (String) throws -> Bool) throws {
        try lock.withLock { _ in
            var file = try load()
            file.entries.merge(entries) { _, new in new }
            file.entries = try file.entries.filter { try layerExists($0.value.diffID) }
            try save(file)
        }
    }

    private func load() throws -> File {
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
        if fd < 0 {
            if errno == ENOENT { return File() }
            throw SystemError.current("open", path)
        }
        let handle = FileHandle(fileDescriptor: fd, closeOnDealloc: true)
        let data: Data
        do { data = try handle.readToEnd() ?? Data() } catch {
            throw HearthError(.internal, "reading \(path): \(error)")
        }
        // A corrupt or foreign file costs a rebuild, never a wrong layer.
        guard let file = try? JSONDecoder().decode(File.self, from: data), file.version == File.currentVersion else {
            return File()
        }
        return file
    }

    private func save(_ file: File) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]
        let data: Data
        do { data = try encoder.encode(file) } catch {
            throw HearthError(.internal, "encoding \(path): \(error)")
        }
        try AtomicFile.write(Array(data), to: path)
    }
}

/// temp + fsync + rename + fsync of the directory: a reader sees the old
/// file or the new one, never a torn one, even after a crash.
enum AtomicFile {
    static func write(_ bytes: [UInt8], to path: String, mode: mode_t = 0o600) throws {
        let temp = "\(path).tmp-\(getpid())"
        unlink(temp)
        let fd = open(temp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode)
        guard fd >= 0 else { throw SystemError.current("create", temp) }
        var done = 0
        while done < bytes.count {
            let n = bytes[done...].withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                let e = SystemError.current("write", temp)
                close(fd); unlink(temp)
                throw e
            }
            done += n
        }
        if fsync(fd) != 0 {
            let e = SystemError.current("fsync", temp)
            close(fd); unlink(temp)
            throw e
        }
        close(fd)
        guard rename(temp, path) == 0 else {
            let e = SystemError.current("rename to \(path)", temp)
            unlink(temp)
            throw e
        }
        let dir = (path as NSString).deletingLastPathComponent
        let dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if dfd >= 0 { _ = fsync(dfd); close(dfd) }
    }
}
