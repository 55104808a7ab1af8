import Foundation
import Glibc
import HearthCore
import HearthOS

/// OCI `createContainer` hooks of CDI devices, which hearthd runs only
/// under `--allow-privileged`: host programs, run as the daemon (root),
/// while the replica waits with its root complete (hearth_spawn.h). Each
/// gets what an OCI runtime gives a hook: the container's state on stdin
/// (`ociVersion`, `id`, `status: creating`, `pid`, `bundle`) and a bundle
/// directory whose `config.json` names the root as `/proc/PID/root`, the
/// replica's root seen from the host, so that a hook that edits the root
/// (as the NVIDIA toolkit's do) edits the replica's. Each is bounded by its
/// `timeout` (default 30 s) and killed past it; a failure names the hook,
/// its status and the end of its output.
public enum ContainerHooks {
    public static let defaultTimeout: Double = 30

    /// Runs `hooks` in order for the replica `replica` whose first process
    /// is `pid`; `bundle` is a directory made for them (and removed after).
    public static func run(_ hooks: [CDISpec.Hook], replica: String, pid: Int32, bundle: String) throws {
        try FS.makeDirectory(bundle, mode: 0o700)
        defer { try? FS.removeTree(path: bundle) }
        let config: [String: Any] = ["ociVersion": "1.0.2", "hostname": replica,
                                     "root": ["path": "/proc/\(pid)/root", "readonly": false]]
        try FS.writeFile(bundle + "/config.json", Array(try JSONSerialization.data(withJSONObject: config, options: [.sortedKeys])))
        let state: [String: Any] = ["ociVersion": "1.0.2", "id": replica, "status": "creating", "pid": Int(pid),
                                    "bundle": bundle, "annotations": [String: String]()]
        let stdin = try JSONSerialization.data(withJSONObject: state, options: [.sortedKeys])
        for (i, hook) in hooks.enumerated() {
            try runOne(hook, stdin: stdin, output: bundle + "/hook-\(i).out", cwd: bundle)
        }
    }

    static func runOne(_ hook: CDISpec.Hook, stdin: Data, output: String, cwd: String) throws {
        let what = "createContainer hook \(([hook.path] + hook.args.dropFirst()).joined(separator: " "))"
        let p = Process()
        p.executableURL = URL(fileURLWithPath: hook.path)
        p.arguments = Array(hook.args.dropFirst())
        // The hook's environment is the spec's, as OCI runtimes give it.
        p.environment = Dictionary(hook.env.compactMap { e -> (String, String)? in
            guard let eq = e.firstIndex(of: "=") else { return nil }
            return (String(e[..<eq]), String(e[e.index(after: eq)...]))
        }, uniquingKeysWith: { _, last in last })
        p.currentDirectoryURL = URL(fileURLWithPath: cwd)
        guard FileManager.default.createFile(atPath: output, contents: nil),
              let out = FileHandle(forWritingAtPath: output) else {
            throw SystemError.current("create", output)
        }
        defer { try? out.close() }
        p.standardOutput = out
        p.standardError = out
        let input = Foundation.Pipe()
        p.standardInput = input
        let done = DispatchSemaphore(value: 0)
        p.terminationHandler = { _ in done.signal() }
        do {
            try p.run()
        } catch {
            throw HearthError(.spawnFailed, "\(what): cannot start it: \(error.localizedDescription)")
        }
        // A hook that does not read its stdin must not block us: the state
        // is small (one pipe buffer), and a closed read end is ignored.
        try? input.fileHandleForWriting.write(contentsOf: stdin)
        try? input.fileHandleForWriting.close()
        let timeout = hook.timeout.map(Double.init) ?? defaultTimeout
        if done.wait(timeout: .now() + timeout) == .timedOut {
            kill(p.processIdentifier, SIGKILL)
            done.wait()
            throw HearthError(.spawnFailed, "\(what): still running after its timeout of \(Int(timeout)) s; killed\(tail(output))")
        }
        guard p.terminationReason == .exit, p.terminationStatus == 0 else {
            let how = p.terminationReason == .exit ? "exited with status \(p.terminationStatus)" : "was killed by signal \(p.terminationStatus)"
            throw HearthError(.spawnFailed, "\(what) \(how)\(tail(output))")
        }
    }

    /// "; its output: …" with the last 2 KiB the hook wrote, or "".
    private static func tail(_ path: String) -> String {
        guard let bytes = try? FS.readFile(path, limit: 1 << 20), !bytes.isEmpty else { return "" }
        let text = String(decoding: bytes.suffix(2048), as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        return text.isEmpty ? "" : "; its output: " + text
    }
}
