#if canImport(Glibc)
import Glibc
#endif
import HearthCore
import SystemPackage

/// An owned file descriptor (swift-system's `FileDescriptor`), closed when
/// the last reference goes away, so that no error path leaks one.
public final class OwnedFD {
    public let descriptor: FileDescriptor
    public var raw: Int32 { descriptor.rawValue }

    public init(owning raw: Int32) {
        descriptor = FileDescriptor(rawValue: raw)
    }

    deinit {
        try? descriptor.close()
    }

    /// open(2) with raw flags and mode; O_CLOEXEC is always added.
    public static func open(_ path: String, _ flags: Int32, mode: mode_t = 0) throws -> OwnedFD {
        do {
            let fd = try FileDescriptor.open(
                FilePath(path), FileDescriptor.AccessMode(rawValue: flags & O_ACCMODE),
                options: FileDescriptor.OpenOptions(rawValue: (flags & ~O_ACCMODE) | O_CLOEXEC),
                permissions: FilePermissions(rawValue: CModeT(mode)), retryOnInterrupt: true)
            return OwnedFD(owning: fd.rawValue)
        } catch let e as Errno {
            throw SystemError("open", path, errno: e.rawValue)
        }
    }

    /// openat(2) relative to this directory; `display` is the path used in errors.
    public func openAt(_ name: UnsafePointer<CChar>, _ flags: Int32, mode: mode_t = 0, display: String) throws -> OwnedFD {
        while true {
            let fd = Glibc.openat(raw, name, flags | O_CLOEXEC, mode)
            if fd >= 0 { return OwnedFD(owning: fd) }
            if errno == EINTR { continue }
            throw SystemError.current("open", display)
        }
    }

    public func stat(_ display: String) throws -> stat {
        var st = Glibc.stat()
        guard fstat(raw, &st) == 0 else { throw SystemError.current("stat", display) }
        return st
    }

    /// Writes all of `bytes`, retrying short writes and EINTR.
    public func writeAll(_ bytes: UnsafeRawBufferPointer, display: String) throws {
        do {
            _ = try descriptor.writeAll(bytes)
        } catch let e as Errno {
            throw SystemError("write", display, errno: e.rawValue)
        }
    }

    /// Reads until end of file; more than `limit` bytes is EFBIG.
    public func readAll(limit: Int, display: String) throws -> [UInt8] {
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            let n: Int
            do {
                n = try chunk.withUnsafeMutableBytes { try descriptor.read(into: $0, retryOnInterrupt: true) }
            } catch let e as Errno {
                throw SystemError("read", display, errno: e.rawValue)
            }
            if n == 0 { return out }
            guard out.count + n <= limit else { throw SystemError("read", display, errno: EFBIG) }
            out.append(contentsOf: chunk[0..<n])
        }
    }

    public func sync(_ display: String) throws {
        guard fsync(raw) == 0 else { throw SystemError.current("fsync", display) }
    }
}

/// Calls `body` with `bytes` as a NUL-terminated C string. Callers make sure
/// the bytes contain no NUL themselves (tar names are checked when parsed).
@inline(__always)
public func withCName<R>(_ bytes: [UInt8], _ body: (UnsafePointer<CChar>) throws -> R) rethrows -> R {
    var z = bytes
    z.append(0)
    return try z.withUnsafeBufferPointer { buf in
        try buf.withMemoryRebound(to: CChar.self) { chars in
            // A non-empty buffer (it holds at least the NUL) has a base address.
            try body(chars.baseAddress.unsafelyUnwrapped)
        }
    }
}
