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
        for hook in hooks {
            try runOne(hook, stdin: Array(stdin), cwd: bundle)
        }
    }

    static func runOne(_ hook: CDISpec.Hook, stdin: [UInt8], cwd: String) throws {
        let what = "createContainer hook \(([hook.path] + hook.args.dropFirst()).joined(separator: " "))"
        let seconds = hook.timeout.map(Double.init) ?? defaultTimeout
        let outcome: HostCommand.Outcome
        do {
            // argv is the spec's args (args[0] is argv[0], as OCI says), the
            // environment is the spec's, as OCI runtimes give them.
            outcome = try HostCommand.run(hook.path, argv: hook.args, environment: environment(hook.env),
                                          directory: cwd, stdin: stdin, timeout: .seconds(seconds))
        } catch {
            throw HearthError(.spawnFailed, "\(what): cannot start it: \(error)")
        }
        if outcome.succeeded { return }
        let text = outcome.tail()
        let output = text.isEmpty ? "" : "; its output: " + text
        if outcome.ending == .timedOut {
            throw HearthError(.spawnFailed, "\(what): still running after its timeout of \(Int(seconds)) s; killed\(output)")
        }
        throw HearthError(.spawnFailed, "\(what) \(outcome.describe(timeout: .seconds(seconds)))\(output)")
    }

    /// "NAME=value" entries, the last of a name winning; entries without
    /// `=` are not variables and are left out.
    static func environment(_ entries: [String]) -> [String] {
        var order: [String] = []
        var values: [String: String] = [:]
        for e in entries {
            guard let eq = e.firstIndex(of: "=") else { continue }
            let name = String(e[..<eq])
            if values[name] == nil { order.append(name) }
            values[name] = e
        }
        return order.compactMap { values[$0] }
    }
}
