import Crypto
import Foundation
import Glibc
import HearthCore
import HearthOS
import Logging

/// The `hearth` package every replica's worker runs (and the flytekit
/// plugin's replica side, `flytekitplugins/hearth`), as the daemon mounts
/// it (read-only at /.hearth/worker): a private copy under the state root,
/// made at start-up, with bytecode compiled by the host's python3 where it
/// has one. A replica whose Python is the same minor version (the default
/// image's and the host's Debian python3) then imports the worker from that
/// bytecode instead of compiling 3,000 lines at every start; another
/// Python finds no bytecode of its version and compiles, as before. The
/// copy also means replicas see the package alone, not whatever lies beside
/// it in `--worker-dir`, and not edits made to it while the daemon runs.
///
/// Each version lives in a directory of its own, named after its content
/// (`worker/<16 hex of sha256>`): a replica that outlived a restart keeps
/// the version it mounted, while a new daemon's replicas get the new one.
public enum WorkerPackage {
    /// Copies `source`/hearth to `stateRoot`/worker/<digest>/hearth,
    /// compiles it (unless that version is there already), removes versions
    /// other than it and those in `keeping` (directories adopted replicas
    /// mount), and returns the directory to mount.
    public static func prepare(source: String, stateRoot: String, logger: Logger,
                               python: String? = hostPython(), keeping: Set<String> = []) throws -> String {
        let base = stateRoot + "/worker", staging = base + "/.new"
        // The layout before versions: worker/hearth.
        if access(base + "/hearth", F_OK) == 0 && !keeping.contains(base) { try FS.removeTree(path: base) }
        try FS.makeDirectory(base, mode: 0o755)
        if access(staging, F_OK) == 0 { try FS.removeTree(path: staging) }
        try FS.makeDirectory(staging, mode: 0o755)
        var hasher = SHA256()
        try copyTree(source + "/hearth", to: staging + "/hearth", relative: "hearth", hasher: &hasher)
        // The flytekit plugin's replica side (flytekitplugins.hearth), where
        // the worker directory has it: the repository's python/ keeps it in
        // its own project, an installed worker directory beside hearth.
        // `flytekitplugins` stays a namespace package, so an image's other
        // flytekit plugins import as before.
        for plugin in [source + "/flytekitplugins-hearth/flytekitplugins/hearth", source + "/flytekitplugins/hearth"]
        where access(plugin + "/__init__.py", F_OK) == 0 {
            try FS.makeDirectory(staging + "/flytekitplugins", mode: 0o755)
            try copyTree(plugin, to: staging + "/flytekitplugins/hearth", relative: "flytekitplugins/hearth", hasher: &hasher)
            break
        }
        let dest = base + "/" + hasher.finalize().map { String(format: "%02x", $0) }.joined().prefix(16)
        if access(dest, F_OK) == 0 {
            try FS.removeTree(path: staging)
        } else {
            if let python {
                let t0 = ContinuousClock.now
                if let why = compile(staging, with: python) {
                    logger.warning("worker bytecode not compiled (\(why)); replicas compile the worker at every start")
                } else {
                    logger.info("worker bytecode compiled with \(python) in \(Int((ContinuousClock.now - t0).milliseconds)) ms")
                }
            }
            guard rename(staging, dest) == 0 else { throw SystemError.current("rename to \(dest)", staging) }
        }
        for entry in try FS.list(path: base) {
            let path = base + "/" + String(decoding: entry.name, as: UTF8.self)
            if path != dest && !keeping.contains(path) { try FS.removeTree(path: path) }
        }
        return dest
    }

    /// The host's python3, if any.
    public static func hostPython() -> String? {
        ["/usr/bin/python3", "/usr/local/bin/python3"].first { access($0, X_OK) == 0 }
    }

    /// Regular files and directories of `source` (bytecode caches and
    /// anything else left out), world-readable.
    static func copyTree(_ source: String, to dest: String, relative: String, hasher: inout SHA256) throws {
        try FS.makeDirectory(dest, mode: 0o755)
        for entry in try FS.list(path: source).sorted(by: { $0.name.lexicographicallyPrecedes($1.name) }) {
            let name = String(decoding: entry.name, as: UTF8.self)
            guard name != "__pycache__" else { continue }
            var st = stat()
            guard lstat(source + "/" + name, &st) == 0 else { throw SystemError.current("lstat", source + "/" + name) }
            switch st.st_mode & S_IFMT {
            case S_IFDIR:
                try copyTree(source + "/" + name, to: dest + "/" + name, relative: relative + "/" + name, hasher: &hasher)
            case S_IFREG:
                guard let bytes = try FS.readFile(source + "/" + name, limit: 16 << 20) else {
                    throw HearthError(.unavailable, "\(source)/\(name): larger than 16 MiB; not a worker file")
                }
                try FS.writeFile(dest + "/" + name, bytes, mode: 0o644)
                // Path, length and bytes: no two trees hash alike.
                hasher.update(data: Array("\(relative)/\(name)\u{0}\(bytes.count)\u{0}".utf8))
                hasher.update(data: bytes)
            default:
                continue
            }
        }
    }

    /// `python -m compileall` over `dir`, bounded in time; nil, or why not.
    static func compile(_ dir: String, with python: String) -> String? {
        // -I: no user site or PYTHON* variables of the daemon's; -q: errors only.
        let timeout = Duration.seconds(60)
        do {
            let outcome = try HostCommand.run(python, argv: [python, "-I", "-m", "compileall", "-q", dir],
                                              environment: ["PATH=/usr/bin:/bin"], timeout: timeout)
            if outcome.succeeded { return nil }
            let text = outcome.tail(1000)
            return "\(python) -m compileall \(outcome.describe(timeout: timeout))\(text.isEmpty ? "" : ": " + text)"
        } catch {
            return "\(error)"
        }
    }
}
