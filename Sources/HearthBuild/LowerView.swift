#if canImport(Glibc)
import Glibc
#endif
import CHearth
import HearthCore
import HearthImage
import HearthOS

/// The merged view of an image's unpacked layers (overlayfs form), for
/// looking up one path as a replica on that image would see it: the topmost
/// layer that has it wins, a whiteout (0:0 character device) hides it, an
/// opaque directory hides what lies below it. Never follows a symlink.
struct LowerView: Sendable {
    /// Layer directories, top first.
    let layers: [String]

    init(layersBottomFirst: [String]) {
        layers = layersBottomFirst.reversed()
    }

    /// `lstat` of the path (components below the root) in the merged view;
    /// nil when it does not exist there.
    func lstat(_ components: [[UInt8]]) -> stat? {
        guard !components.isEmpty else { return nil }
        for layer in layers {
            switch Self.lookup(layer, components) {
            case .found(let st): return st
            case .hidden: return nil
            case .absent(let opaqueAbove): if opaqueAbove { return nil }
            }
        }
        return nil
    }

    enum Lookup {
        case found(stat)
        /// A whiteout or a non-directory parent in this layer hides it.
        case hidden
        /// Not in this layer; `opaqueAbove`: a parent here is opaque, so
        /// lower layers do not count either.
        case absent(opaqueAbove: Bool)
    }

    static func lookup(_ layer: String, _ components: [[UInt8]]) -> Lookup {
        let rootFD = open(layer, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
        guard rootFD >= 0 else { return .absent(opaqueAbove: false) }
        var dir = OwnedFD(owning: rootFD)
        var opaque = false
        for (i, component) in components.enumerated() {
            var st = stat()
            let rc = withCString(component) { fstatat(dir.raw, $0, &st, AT_SYMLINK_NOFOLLOW) }
            if rc != 0 { return .absent(opaqueAbove: opaque) }
            if isWhiteout(st) { return .hidden }
            if i == components.count - 1 { return .found(st) }
            guard (st.st_mode & S_IFMT) == S_IFDIR else { return .hidden }
            let fd = withCString(component) { openat(dir.raw, $0, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC) }
            guard fd >= 0 else { return .absent(opaqueAbove: opaque) }
            dir = OwnedFD(owning: fd)
            if isOpaque(dir.raw) { opaque = true }
        }
        return .absent(opaqueAbove: opaque)
    }

    static func isWhiteout(_ st: stat) -> Bool {
        (st.st_mode & S_IFMT) == S_IFCHR && st.st_rdev == 0
    }

    /// `trusted.overlay.opaque` (or `user.overlay.opaque`, overlayfs with
    /// `userxattr`) set to `y`.
    static func isOpaque(_ fd: Int32) -> Bool {
        for name in ["trusted.overlay.opaque", "user.overlay.opaque"] {
            var value: UInt8 = 0
            let n = hearth_fgetxattr(fd, name, &value, 1)
            if n == 1 && value == UInt8(ascii: "y") { return true }
        }
        return false
    }
}

/// Calls `body` with `bytes` as a NUL-terminated C string (names from
/// readdir and paths split on `/` hold no NUL).
func withCString<R>(_ bytes: [UInt8], _ body: (UnsafePointer<CChar>) throws -> R) rethrows -> R {
    var z = bytes
    z.append(0)
    return try z.withUnsafeBufferPointer { buf in
        // A non-empty buffer (it holds at least the NUL) has a base address.
        try buf.withMemoryRebound(to: CChar.self) { try body($0.baseAddress.unsafelyUnwrapped) }
    }
}
