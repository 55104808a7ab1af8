#if canImport(Glibc)
import Glibc
#endif

/// An error that names what failed: the operation, the object it acted on
/// and, for system calls, the errno. Rendered as
/// `mount overlay on /var/lib/hearth/replicas/r1/rootfs: EINVAL (Invalid argument)`.
public struct SystemError: Error, CustomStringConvertible, Sendable, Equatable {
    public var operation: String
    public var path: String
    public var errno: Int32

    public init(_ operation: String, _ path: String, errno: Int32) {
        self.operation = operation
        self.path = path
        self.errno = errno
    }

    /// Captures the calling thread's current `errno`.
    public static func current(_ operation: String, _ path: String) -> SystemError {
        SystemError(operation, path, errno: Glibc.errno)
    }

    public var description: String {
        let name = ErrnoName.name(errno)
        let text = String(cString: strerror(errno))
        if path.isEmpty { return "\(operation): \(name) (\(text))" }
        return "\(operation) \(path): \(name) (\(text))"
    }
}

/// Errors a caller can act on: each carries a stable machine-readable code
/// (used by the API), and a message that names the field, value or path and
/// the rule that was broken.
public struct HearthError: Error, CustomStringConvertible, Sendable, Equatable {
    public enum Code: String, Sendable, Codable {
        case invalidArgument = "invalid_argument"
        case notFound = "not_found"
        /// The environment a request names is not applied (a client re-applies its spec).
        case environmentNotFound = "environment_not_found"
        case imageNotFound = "image_not_found"
        case invalidImage = "invalid_image"
        case unsafeLayer = "unsafe_layer"
        case conflict = "conflict"
        /// A task was sent for an environment spec that has since been
        /// replaced by another (a client re-applies its own).
        case specChanged = "spec_changed"
        /// The daemon's policy refuses it (e.g. a privileged setting
        /// without `hearthd --allow-privileged`, a path import from a
        /// non-root peer).
        case forbidden = "forbidden"
        case queueFull = "queue_full"
        /// A finished task's result or logs were dropped over the result budget (HTTP 410).
        case resultExpired = "result_expired"
        /// An image build step failed (its exit status and the end of its output).
        case buildFailed = "build_failed"
        case unavailable = "unavailable"
        /// hearthd is handing over to a new binary (`hearthd --upgrade`):
        /// the request was not acted on; send it again in a moment (HTTP 503).
        case upgrading = "upgrading"
        case spawnFailed = "spawn_failed"
        case system = "system"
        case `internal` = "internal"
    }

    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public static func invalid(_ message: String) -> HearthError { HearthError(.invalidArgument, message) }

    public var description: String { message }

    /// Wraps any error as a HearthError, keeping its message.
    public static func wrap(_ error: any Error) -> HearthError {
        if let e = error as? HearthError { return e }
        if let e = error as? SystemError { return HearthError(.system, e.description) }
        return HearthError(.internal, String(describing: error))
    }
}

/// Symbolic errno names, so messages say EINVAL rather than 22.
public enum ErrnoName {
    public static func name(_ code: Int32) -> String {
        switch code {
        case EPERM: return "EPERM"
        case ENOENT: return "ENOENT"
        case ESRCH: return "ESRCH"
        case EINTR: return "EINTR"
        case EIO: return "EIO"
        case E2BIG: return "E2BIG"
        case ENOEXEC: return "ENOEXEC"
        case EBADF: return "EBADF"
        case ECHILD: return "ECHILD"
        case EAGAIN: return "EAGAIN"
        case ENOMEM: return "ENOMEM"
        case EACCES: return "EACCES"
        case EFAULT: return "EFAULT"
        case EBUSY: return "EBUSY"
        case EEXIST: return "EEXIST"
        case EXDEV: return "EXDEV"
        case ENODEV: return "ENODEV"
        case ENOTDIR: return "ENOTDIR"
        case EISDIR: return "EISDIR"
        case EINVAL: return "EINVAL"
        case ENFILE: return "ENFILE"
        case EMFILE: return "EMFILE"
        case ETXTBSY: return "ETXTBSY"
        case EFBIG: return "EFBIG"
        case ENOSPC: return "ENOSPC"
        case EROFS: return "EROFS"
        case EMLINK: return "EMLINK"
        case EPIPE: return "EPIPE"
        case ERANGE: return "ERANGE"
        case ENAMETOOLONG: return "ENAMETOOLONG"
        case ENOSYS: return "ENOSYS"
        case ENOTEMPTY: return "ENOTEMPTY"
        case ELOOP: return "ELOOP"
        case ENODATA: return "ENODATA"
        case EOPNOTSUPP: return "EOPNOTSUPP"
        case EADDRINUSE: return "EADDRINUSE"
        case ECONNREFUSED: return "ECONNREFUSED"
        case ECONNRESET: return "ECONNRESET"
        case ETIMEDOUT: return "ETIMEDOUT"
        case EWOULDBLOCK: return "EWOULDBLOCK"
        default: return "errno \(code)"
        }
    }
}
