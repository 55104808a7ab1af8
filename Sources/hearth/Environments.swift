import ArgumentParser
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import Glibc
import HearthClient
import HearthCore

struct Apply: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Create or update environments from a YAML or JSON file.")
    @OptionGroup var global: GlobalOptions
    @Option(name: .shortAndLong, help: "Spec file (YAML or JSON; several documents allowed; - for stdin).") var file: String
    @Flag(name: .shortAndLong, help: "No progress of the image pulls the apply makes.") var quiet = false

    func run() throws {
        do {
            let body = try BundleWriter.readFile(file)
            let name = file == "-" ? "stdin" : file
            // NDJSON: the progress of any pull (image_pull_policy), then the results.
            let view = PullProgress(enabled: !quiet)
            var lines = NDJSONLines()
            var raw: [UInt8] = []
            var results: [ApplyResult]?
            var failure: HearthError?
            var streaming = false
            let r = try global.client.stream(
                "POST", "/v1/environments?source=" + percentEncodePath(name), body: body,
                contentType: "application/yaml", headers: [("Accept", "application/x-ndjson")],
                onData: { bytes in
                    raw += bytes
                    guard streaming else { return }
                    for line in lines.feed(bytes) {
                        guard let e = try? JSONDecoder().decode(ApplyEvent.self, from: Data(line)) else { continue }
                        switch e.event {
                        case "pull": if let p = e.pull { view.show(p) }
                        case "applied": results = e.results
                        case "error":
                            if let d = e.error { failure = HearthError(HearthError.Code(rawValue: d.code) ?? .internal, d.message) }
                        default: break
                        }
                    }
                }, onHead: { streaming = $0 == 200 })
            view.finish()
            guard r.status == 200 else { throw apiError(.init(status: r.status, headers: r.headers, body: raw)) }
            if let failure { throw failure }
            // A daemon that answers JSON (no NDJSON support) sends the results whole.
            if !(r.header("content-type") ?? "").contains("ndjson") {
                results = try JSONDecoder().decode([ApplyResult].self, from: Data(raw))
            }
            guard let results else { throw HearthError(.internal, "hearthd ended the apply without a result") }
            for a in results {
                print("environment \(a.name) \(a.outcome) (\(a.identity.prefix(12)))")
            }
        } catch { throw failure(error) }
    }
}

struct EnvList: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "ls", abstract: "List environments.")
    @OptionGroup var global: GlobalOptions
    @Flag(help: "Print JSON.") var json = false

    func run() throws {
        do {
            guard let envs = try global.listing("/v1/environments", as: [EnvironmentStatus].self, json: json) else { return }
            var rows = [["NAME", "IMAGE", "REPLICAS", "BUSY", "QUEUED", "TTL", "LAST ERROR"]]
            for e in envs {
                let busy = e.replicas.filter { $0.state == "busy" }.count
                rows.append([e.name, e.image, "\(e.replicas.count)/\(e.replicaCount)", "\(busy)", "\(e.queued)",
                             "\(Int(e.ttlSeconds))s", e.lastError.map { String($0.prefix(60)) } ?? "-"])
            }
            printTable(rows)
        } catch { throw failure(error) }
    }
}

struct EnvStatus: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "status", abstract: "Show an environment's replicas.")
    @OptionGroup var global: GlobalOptions
    @Argument(help: "Environment name.") var name: String
    @Flag(help: "Print JSON.") var json = false

    func run() throws {
        do {
            let path = "/v1/environments/" + percentEncodePath(name)
            guard let e = try global.listing(path, as: EnvironmentStatus.self, json: json) else { return }
            print("environment \(e.name)  image \(e.image)  replicas \(e.replicas.count)/\(e.replicaCount)  ttl \(Int(e.ttlSeconds))s  queued \(e.queued)")
            if let sc = e.scaling {
                print("scaling: min \(sc.min)  max \(sc.max)  current \(sc.current)  starting \(sc.starting)  queued \(e.queued)"
                      + "  concurrency \(sc.concurrency)  scaledown_ttl \(Int(sc.scaledownTTLSeconds))s" + (sc.prewarm ? "  prewarm" : ""))
                if let d = sc.lastDecision {
                    let ago = max(0, Date().timeIntervalSince1970 - d.at)
                    print("last scale: \(d.direction.rawValue) \(d.from) → \(d.to), \(oneDecimal(ago))s ago: \(d.reason)")
                }
            }
            if let err = e.lastError { print("last error: \(err)") }
            let withGPUs = e.replicas.contains { $0.gpus != nil }
            var rows = [["REPLICA", "STATE", "PID", "TASKS", "IDLE", "TTL LEFT"] + (withGPUs ? ["GPUS"] : [])]
            for rep in e.replicas {
                rows.append([rep.name, rep.state, rep.pid.map { "\($0)" } ?? "-", "\(rep.tasksRun)",
                             oneDecimal(rep.idleSeconds) + "s", rep.ttlLeftSeconds.map { oneDecimal($0) + "s" } ?? "-"]
                            + (withGPUs ? [rep.gpus?.joined(separator: ",") ?? "-"] : []))
            }
            printTable(rows)
        } catch { throw failure(error) }
    }
}

struct Spares: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show the pre-started spare replicas new environments adopt (hearthd --spares).")
    @OptionGroup var global: GlobalOptions
    @Flag(help: "Print JSON.") var json = false

    func run() throws {
        do {
            guard let s = try global.listing("/v1/spares", as: SparesStatus.self, json: json) else { return }
            guard s.enabled else { print("spares are off (hearthd --spares 0)"); return }
            print("\(s.perKey) per image, kept \(s.ttlSeconds)s unused; \(s.adopted) adopted since hearthd started")
            var rows = [["IMAGE", "NETWORK", "READY", "STARTING", "REPLICAS", "LAST ERROR"]]
            for k in s.keys {
                rows.append([k.image + (k.pinned ? " (--spare-image)" : ""), k.network, "\(k.ready)", "\(k.starting)",
                             k.replicas.isEmpty ? "-" : k.replicas.joined(separator: ","),
                             k.lastError.map { String($0.prefix(60)) } ?? "-"])
            }
            printTable(rows)
        } catch { throw failure(error) }
    }
}

struct EnvRemove: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "rm", abstract: "Drain and remove an environment.")
    @OptionGroup var global: GlobalOptions
    @Argument(help: "Environment name.") var name: String

    func run() throws {
        do {
            let r = try global.client.request("DELETE", "/v1/environments/" + percentEncodePath(name))
            guard r.status == 204 || r.status == 200 else { throw apiError(r) }
            print("removed \(name)")
        } catch { throw failure(error) }
    }
}

struct RunTask: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run", abstract: "Run MODULE:FUNC in an environment and print its result (JSON).")
    @OptionGroup var global: GlobalOptions
    @Argument(help: "Environment name.") var environment: String
    @Argument(help: "MODULE:FUNCTION") var target: String
    @Option(name: .customLong("arg"), help: "k=v keyword argument (v parsed as JSON, else a string); repeatable.")
    var args: [String] = []
    @Option(help: "Directory of user code to ship as the task's bundle.") var code: String?
    @Option(help: "Seconds before the task is killed.") var timeout: Double?
    @Flag(help: "Print the whole task record as JSON.") var json = false

    func run() throws {
        let parts = target.split(separator: ":", maxSplits: 1).map(String.init)
        guard parts.count == 2, !parts[0].isEmpty, !parts[1].isEmpty else {
            throw fail("run: \"\(target)\" is not MODULE:FUNCTION")
        }
        var kwargs: [String: JSONValue] = [:]
        for a in args {
            guard let eq = a.firstIndex(of: "="), eq != a.startIndex else { throw fail("--arg \"\(a)\" is not k=v") }
            let key = String(a[..<eq]), text = String(a[a.index(after: eq)...])
            kwargs[key] = (try? JSONDecoder().decode(JSONValue.self, from: Data(text.utf8))) ?? .string(text)
        }
        do {
            var bundle: String?
            if let code {
                let tar = try BundleWriter.tar(directory: code)
                let sha = ContentHash.sha256Hex(tar)
                let r = try global.client.request("PUT", "/v1/code/" + sha, body: tar, contentType: "application/x-tar")
                guard r.status == 200 || r.status == 201 else { throw apiError(r) }
                bundle = sha
            }
            let req = TaskRequest(module: parts[0], function: parts[1], kwargs: .object(kwargs), bundle: bundle,
                                  timeout: timeout, wait: true)
            let r = try global.client.request("POST", "/v1/environments/" + percentEncodePath(environment) + "/tasks",
                                              body: Array(try JSONEncoder().encode(req)))
            guard r.status == 200 else { throw apiError(r) }
            try printOutcome(r.body, json: json)
        } catch { throw failure(error) }
    }
}

/// A finished task's result as JSON on stdout; its error on stderr and a
/// failure. `json`: the whole task record.
func printOutcome(_ body: [UInt8], json: Bool) throws {
    if json { writeAll(1, body + [10]); return }
    let t = try JSONDecoder().decode(TaskSnapshot.self, from: Data(body))
    if t.state == .succeeded {
        let out = try JSONEncoder().encode(t.result ?? .null)
        writeAll(1, Array(out) + [10])
        return
    }
    var message = "task \(t.id) \(t.state.rawValue)"
    if let e = t.error {
        message += ": \(e.type): \(e.message)"
        if let tb = e.traceback { writeAll(2, Array(tb.utf8)) }
    }
    throw fail(message)
}

struct TaskResult: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "result",
        abstract: "Print a task's result (JSON), or its error; fails while it runs and once the result budget dropped it.")
    @OptionGroup var global: GlobalOptions
    @Argument(help: "Task id.") var task: String
    @Flag(help: "Print the whole task record as JSON.") var json = false

    func run() throws {
        do {
            let r = try global.client.request("GET", "/v1/tasks/" + percentEncodePath(task))
            guard r.status == 200 else { throw apiError(r) }
            let t = try JSONDecoder().decode(TaskSnapshot.self, from: Data(r.body))
            if !t.state.isFinal && !json { throw fail("task \(t.id) is \(t.state.rawValue); it has no result yet") }
            try printOutcome(r.body, json: json)
        } catch { throw failure(error) }
    }
}

struct Logs: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print a task's stdout and stderr.")
    @OptionGroup var global: GlobalOptions
    @Argument(help: "Task id.") var task: String

    func run() throws {
        do {
            let r = try global.client.request("GET", "/v1/tasks/" + percentEncodePath(task) + "/logs")
            guard r.status == 200 else { throw apiError(r) }
            let logs = try JSONDecoder().decode(TaskLogs.self, from: Data(r.body))
            if logs.truncated { writeAll(2, Array("hearth: older output was dropped (logs keep the newest 1 MiB)\n".utf8)) }
            for e in logs.entries { writeAll(e.stream == "stderr" ? 2 : 1, Array(e.text.utf8)) }
        } catch { throw failure(error) }
    }
}

struct SecretCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "secret", abstract: "Manage secrets (mounted at /etc/secrets/KEY in replicas that request them).",
        subcommands: [Set.self, List.self, Remove.self])

    struct Set: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Set KEY to the value read from stdin.")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "Secret key.") var key: String
        func run() throws {
            do {
                let value = try BundleWriter.readFile("-")
                let r = try global.client.request("PUT", "/v1/secrets/" + percentEncodePath(key), body: value,
                                                  contentType: "application/octet-stream")
                guard r.status == 204 || r.status == 200 else { throw apiError(r) }
                print("secret \(key) set")
            } catch { throw failure(error) }
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "ls", abstract: "List secret names.")
        @OptionGroup var global: GlobalOptions
        func run() throws {
            do {
                let r = try global.client.request("GET", "/v1/secrets")
                guard r.status == 200 else { throw apiError(r) }
                for k in try JSONDecoder().decode([String].self, from: Data(r.body)) { print(k) }
            } catch { throw failure(error) }
        }
    }

    struct Remove: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "rm", abstract: "Remove a secret.")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "Secret key.") var key: String
        func run() throws {
            do {
                let r = try global.client.request("DELETE", "/v1/secrets/" + percentEncodePath(key))
                guard r.status == 204 || r.status == 200 else { throw apiError(r) }
                print("removed secret \(key)")
            } catch { throw failure(error) }
        }
    }
}

struct Devices: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List the CDI devices this host offers to environments (their `devices`), and the CDI specs that could not be read.")
    @OptionGroup var global: GlobalOptions
    @Flag(help: "Print JSON.") var json = false

    func run() throws {
        do {
            guard let d = try global.listing("/v1/devices", as: DevicesStatus.self, json: json) else { return }
            if d.devices.isEmpty {
                print("no CDI devices in \(d.dirs.joined(separator: ", "))")
            } else {
                var rows = [["DEVICE", "NODES", "ENV", "MOUNTS", "SPEC"]]
                for dev in d.devices {
                    rows.append([dev.name, dev.nodes.isEmpty ? "-" : dev.nodes.joined(separator: ","),
                                 "\(dev.env.count)", "\(dev.mounts.count)", dev.file])
                }
                printTable(rows)
            }
            for e in d.errors { print("unreadable CDI spec: \(e)") }
        } catch { throw failure(error) }
    }
}
