import Glibc
import HearthCore
import HearthOS
import Logging

/// The `hearth` package every replica's worker runs, as the daemon mounts
/// it (read-only at /.hearth/worker): a private copy under the state root,
/// made at start-up, with bytecode compiled by the host's python3 where it
/// has one. A replica whose Python is the same minor version (the default
/// image's and the host's Debian python3) then imports the worker from that
/// bytecode instead of compiling 3,000 lines at every start; another
/// Python finds no bytecode of its version and compiles, as before. The
/// copy also means replicas see the package alone, not whatever lies beside
/// it in `--worker-dir`, and not edits made to it while the daemon runs.
public enum WorkerPackage {
    /// Copies `source`/hearth to `stateRoot`/worker/hearth, compiles it, and
    /// returns the directory to mount (`stateRoot`/worker).
    public static func prepare(source: String, stateRoot: String, logger: Logger,
                               python: String? = hostPython()) throws -> String {
        let dest = stateRoot + "/worker", staging = dest + ".new"
        if access(staging, F_OK) == 0 { try FS.removeTree(path: staging) }
        try FS.makeDirectory(staging, mode: 0o755)
        try copyTree(source + "/hearth", to: staging + "/hearth")
        if let python {
            let t0 = ContinuousClock.now
            if let why = compile(staging + "/hearth", with: python) {
                logger.warning("worker bytecode not compiled (\(why)); replicas compile the worker at every start")
            } else {
                logger.info("worker bytecode compiled with \(python) in \(Int((ContinuousClock.now - t0).milliseconds)) ms")
            }
        }
        if access(dest, F_OK) == 0 { try FS.removeTree(path: dest) }
        guard rename(staging, dest) == 0 else { throw SystemError.current("rename to \(dest)", staging) }
        return dest
    }

    /// The host's python3, if any.
    public static func hostPython() -> String? {
        ["/usr/bin/python3", "/usr/local/bin/python3"].first { access($0, X_OK) == 0 }
    }

    /// Regular files and directories of `source` (bytecode caches and
    /// anything else left out), world-readable.
    static func copyTree(_ source: String, to dest: String) throws {
        try FS.makeDirectory(dest, mode: 0o755)
        for entry in try FS.list(path: source) {
            let name = String(decoding: entry.name, as: UTF8.self)
            guard name != "__pycache__" else { continue }
            var st = stat()
            guard lstat(source + "/" + name, &st) == 0 else { throw SystemError.current("lstat", source + "/" + name) }
            switch st.st_mode & S_IFMT {
            case S_IFDIR:
                try copyTree(source + "/" + name, to: dest + "/" + name)
            case S_IFREG:
                guard let bytes = try FS.readFile(source + "/" + name, limit: 16 << 20) else {
                    throw HearthError(.unavailable, "\(source)/\(name): larger than 16 MiB; not a worker file")
                }
                try FS.writeFile(dest + "/" + name, bytes, mode: 0o644)
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
