#if canImport(Glibc)
import Glibc
#endif
import Foundation
import HearthCore
import Synchronization
import HearthOS

/// A user name and password for one registry.
public struct RegistryCredential: Codable, Sendable, Equatable {
    public var username: String
    public var password: String

    public init(username: String, password: String) {
        self.username = username
        self.password = password
    }
}

/// Registry credentials saved by `hearth login`: one file under the state
/// root, mode 0600, owned by root, written whole and atomically. Passwords
/// are never logged nor returned through the API; only the registry names
/// and user names are.
public final class CredentialStore: Sendable {
    public let path: String
    private let lock = Mutex(())

    private struct File: Codable {
        var auths: [String: RegistryCredential] = [:]
    }

    public init(path: String) {
        self.path = path
    }

    public func credential(for registry: String) throws -> RegistryCredential? {
        try lock.withLock { _ in try load().auths[registry] }
    }

    public func save(_ credential: RegistryCredential, for registry: String) throws {
        try lock.withLock { _ in
            var file = try load()
            file.auths[registry] = credential
            try store(file)
        }
    }

    /// Removes `registry`'s credential; false when there was none.
    public func remove(_ registry: String) throws -> Bool {
        try lock.withLock { _ in
            var file = try load()
            guard file.auths.removeValue(forKey: registry) != nil else { return false }
            try store(file)
            return true
        }
    }

    /// Registries with a saved credential, and their user names.
    public func list() throws -> [String: String] {
        try lock.withLock { _ in try load().auths.mapValues(\.username) }
    }

    private func load() throws -> File {
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
        if fd < 0 {
            if errno == ENOENT { return File() }
            throw SystemError.current("open", path)
        }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                throw SystemError.current("read", path)
            }
            if n == 0 { break }
            bytes += chunk[0..<n]
            guard bytes.count <= 4 << 20 else { throw HearthError(.internal, "\(path) is larger than 4 MiB") }
        }
        do {
            return try JSONDecoder().decode(File.self, from: Data(bytes))
        } catch {
            // The decoder's message could quote the file: not a password in a log.
            throw HearthError(.internal, "\(path) is not a valid credentials file; remove it and log in again")
        }
    }

    private func store(_ file: File) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]
        let bytes = Array((try? encoder.encode(file)) ?? Data())
        try FS.writeAtomically(bytes, to: path)
    }
}
