import Foundation
import Glibc
import HearthCore
import HearthSandbox
import HearthOS

/// The API socket is never reachable with looser permissions than its
/// final ones, not even between bind(2) and chmod(2): the server binds it
/// inside a fresh 0700 directory beside the final path, the daemon sets
/// owner, group and mode there, and only then renames it into place.
/// (Changing the process umask around bind would also change the modes of
/// files other threads create meanwhile: replica directories, layers.)
struct SocketBinding: Sendable {
    let finalPath: String
    let privateDir: String
    var bindPath: String { privateDir + "/s" }

    init(finalPath: String) throws {
        self.finalPath = finalPath
        let dir = (finalPath as NSString).deletingLastPathComponent
        let parent = dir.isEmpty ? "." : dir
        if !FileManager.default.fileExists(atPath: parent) {
            try FileManager.default.createDirectory(atPath: parent, withIntermediateDirectories: true,
                                                    attributes: [.posixPermissions: 0o755])
        }
        privateDir = parent + "/.hearthd-bind-\(getpid())"
        // A predecessor with our pid (a container restart) may have left one.
        try? FS.removeTree(path: privateDir)
        guard mkdir(privateDir, 0o700) == 0 else { throw SystemError.current("mkdir", privateDir) }
        guard chmod(privateDir, 0o700) == 0 else { throw SystemError.current("chmod", privateDir) }
        // sun_path holds 107 bytes and a NUL.
        guard bindPath.utf8.count < 108 else {
            try? FS.removeTree(path: privateDir)
            throw HearthError.invalid("--socket \(finalPath): the path is too long for a Unix socket (at most about 80 bytes)")
        }
    }

    /// Root-owned, group `hearth` when that group exists, mode 0660; then
    /// atomically in place (replacing a stale socket of a dead daemon).
    func publish() throws {
        var gid: gid_t = 0
        if let gr = getgrnam("hearth") { gid = gr.pointee.gr_gid }
        guard chown(bindPath, 0, gid) == 0 else { throw SystemError.current("chown", bindPath) }
        guard chmod(bindPath, 0o660) == 0 else { throw SystemError.current("chmod", bindPath) }
        guard rename(bindPath, finalPath) == 0 else { throw SystemError.current("rename to \(finalPath)", bindPath) }
        _ = rmdir(privateDir)
    }

    func remove() {
        unlink(finalPath)
        try? FS.removeTree(path: privateDir)
    }
}
