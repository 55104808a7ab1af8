import ArgumentParser
import Foundation
import HearthClient
import HearthCore
import HearthServer
import HearthTLS
import Logging

@main
struct HearthdCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "hearthd",
        abstract: "The Hearth daemon: builds isolated replicas and serves the API on a Unix socket.",
        version: Daemon.version
    )

    @Option(name: .long, help: "State root (images, layers, replicas).")
    var root: String = HearthDefaults.stateRoot

    @Option(name: .long, help: "Unix socket to listen on.")
    var socket: String = HearthDefaults.socketPath

    @Option(name: .long, help: "Static hearth-init binary (default: next to hearthd).")
    var `init`: String?

    @Option(name: .long, help: "Directory with the hearth Python package (the worker).")
    var workerDir: String?

    @Option(name: .long, help: "Name of the cgroup subtree (default: derived from --root).")
    var cgroupName: String?

    @Option(name: .long, help: "Seconds running replicas get to finish on SIGTERM.")
    var shutdownTimeout: Int = 10

    @Option(name: .long, help: "Pre-started replicas kept per image (and network, seccomp, capabilities) that environments have used; 0 turns them off.")
    var spares: Int = 1

    @Option(name: .long, help: "Seconds an image's spare replicas are kept without an environment taking one.")
    var spareTtl: Int = 600

    @Option(name: .long, help: ArgumentHelp("An image to keep spare replicas of from start-up (or its import) on, whether or not an environment has used it yet; repeatable.", valueName: "NAME"))
    var spareImage: [String] = []

    @Flag(name: .long, help: "Let clients ask for seccomp unconfined or a custom profile, added capabilities and network host, and run CDI devices' createContainer hooks (each takes down a wall of the sandbox; see docs/security.md).")
    var allowPrivileged = false

    @Option(name: .long, help: ArgumentHelp("A host directory environments may mount (their `mounts`), with what lies below it; repeatable. None by default.", valueName: "DIR"))
    var allowMount: [String] = []

    @Option(name: .long, help: ArgumentHelp("A directory of CDI specs (JSON or YAML) for the devices environments may ask for; repeatable, later ones win (default /etc/cdi, /var/run/cdi).", valueName: "DIR"))
    var cdiSpecDir: [String] = []

    @Option(name: .long, help: ArgumentHelp("Where NVIDIA device nodes (nvidia0, nvidiactl, …) are looked for when no CDI spec offers nvidia.com/gpu devices; Hearth then generates them as nvidia-ctk would.", valueName: "DIR"))
    var nvidiaDevDir: String = "/dev"

    @Flag(name: .long, help: "Run replicas in user namespaces by default (root inside is an unprivileged host uid; a spec's user_namespace: false opts out).")
    var userns = false

    @Option(name: .long, help: ArgumentHelp("Bytes of finished tasks' results and logs kept in memory; past it the oldest are read back from disk (e.g. 256Mi).", valueName: "SIZE"))
    var resultBudget: String = "256Mi"

    @Option(name: .long, help: ArgumentHelp("Bytes of finished tasks' results and logs kept on disk, in the task store; past it the oldest are dropped and fetching them gives result_expired (0: none on disk).", valueName: "SIZE"))
    var resultDiskBudget: String = "1Gi"

    @Option(name: .long, help: ArgumentHelp("How long finished tasks' records (state, timings, error, result, last 1 MiB of logs) are kept in <root>/tasks/tasks.db, across restarts, and at most how many (0: none kept on disk).", valueName: "AGE[,COUNT]"))
    var taskRetention: String = "24h,100000"
    @Option(name: .long, help: ArgumentHelp("Memory limit of every replica whose spec sets none (environments, sandboxes, spares); 0 or none: no limit.", valueName: "SIZE"))
    var defaultMemory: String = "1Gi"

    @Option(name: .long, help: ArgumentHelp("Directory on a filesystem of its own for replicas' writable layers (overlay upper and work directories), so a replica that fills it never fills the state root; created 0700, emptied at start.", valueName: "DIR"))
    var scratch: String?

    @Option(name: .long, help: ArgumentHelp("Memory limit of an image build's step replicas (hearth image build).", valueName: "SIZE"))
    var buildMemory: String = "4Gi"

    @Option(name: .long, help: ArgumentHelp("How long one step of an image build may run before it is killed (e.g. 30m, 1h).", valueName: "DURATION"))
    var buildTimeout: String = "30m"
    @Option(name: .long, help: ArgumentHelp("Let replicas with network egress reach this address block beyond public addresses on ports 80 and 443: on PORT only, or without one on ports 80 and 443 (e.g. a private package index: 10.1.2.3:3141; IPv6 with a port in brackets); repeatable.", valueName: "CIDR[:PORT]"))
    var egressAllow: [String] = []

    @Option(name: .long, help: ArgumentHelp("A PEM file of CA certificates trusted for registries' HTTPS, beside the system's; repeatable.", valueName: "FILE"))
    var registryCa: [String] = []

    @Option(name: .long, help: ArgumentHelp("A registry spoken to in plain HTTP (no TLS); every other registry gets HTTPS; repeatable.", valueName: "HOST[:PORT]"))
    var insecureRegistry: [String] = []

    @Option(name: .long, help: ArgumentHelp("Contact HOST[:PORT] for images of REGISTRY (same repository paths), e.g. docker.io=mirror.internal:5000; repeatable.", valueName: "REGISTRY=HOST[:PORT]"))
    var registryMirror: [String] = []

    @Option(name: .long, help: ArgumentHelp("Serve the API on this TCP address too, for remote clients (HEARTH_HOST), only with mutual TLS: needs --tls-cert, --tls-key and --tls-ca.", valueName: "tcp://ADDR:PORT"))
    var listen: String?

    @Option(name: .long, help: ArgumentHelp("This node's TLS certificate (PEM; `hearth certs server`).", valueName: "FILE"))
    var tlsCert: String?

    @Option(name: .long, help: ArgumentHelp("The key of --tls-cert (PEM).", valueName: "FILE"))
    var tlsKey: String?

    @Option(name: .long, help: ArgumentHelp("The cluster CA (PEM): --listen takes only clients whose certificate it signed; the certificate's subject is the caller's identity.", valueName: "FILE"))
    var tlsCa: String?

    @Flag(name: .long, help: "Do not start a daemon: have the one on --socket hand its replicas to the binary now at the path it was started from (exec in place; tasks in flight finish), and wait for it to answer again. SIGUSR2 does the same.")
    var upgrade = false

    @Option(name: .long, help: ArgumentHelp("How long an upgrade waits for queued tasks and imports, pulls, builds or applies in progress before it is refused (work then goes on with the old binary).", valueName: "DURATION"))
    var upgradeTimeout: String = "60s"

    @Option(name: .long, help: "trace, debug, info, notice, warning, error or critical.")
    var logLevel: String = "info"

    func run() async throws {
        let upgradeWait: Duration
        do { upgradeWait = try DurationText.parse(upgradeTimeout, field: "--upgrade-timeout") } catch let e as HearthError {
            throw ValidationError(e.message)
        }
        if upgrade {
            do {
                let o = try DaemonUpgrade.run(socketPath: socket, timeout: upgradeWait + .seconds(60))
                print("hearthd (pid \(o.after.pid)) now runs \(o.binary), hearthd \(o.after.version) (was \(o.before.version)); it answered again \(String(format: "%.0f", o.gap.milliseconds)) ms after accepting the upgrade")
                return
            } catch {
                FileHandle.standardError.write(Data("hearthd --upgrade: \(HearthError.wrap(error).message)\n".utf8))
                throw ExitCode(1)
            }
        }
        MallocTuning.limitArenas(2)
        guard let level = Logger.Level(rawValue: logLevel) else {
            throw ValidationError("--log-level: \"\(logLevel)\" is not a level; use trace, debug, info, notice, warning, error or critical")
        }
        guard (0...16).contains(spares) else {
            throw ValidationError("--spares: \(spares) is out of range; use 0 (off) to 16")
        }
        guard spareTtl > 0 else { throw ValidationError("--spare-ttl: \(spareTtl) must be a positive number of seconds") }
        let memoryBudget: Int64, diskBudget: Int64, retention: TaskRetention
        do {
            retention = try TaskRetention.parse(taskRetention)
            memoryBudget = try Quantity.parseMemory(resultBudget, field: "--result-budget")
            diskBudget = resultDiskBudget.trimmingCharacters(in: .whitespaces) == "0"
                ? 0 : try Quantity.parseMemory(resultDiskBudget, field: "--result-disk-budget")
        } catch let e as HearthError {
            throw ValidationError(e.message)
        }
        let memory: Int64?
        switch defaultMemory.trimmingCharacters(in: .whitespaces).lowercased() {
        case "0", "none": memory = nil
        default:
            do { memory = try Quantity.parseMemory(defaultMemory, field: "--default-memory") } catch let e as HearthError {
                throw ValidationError(e.message + "; or 0 / none for no default limit")
            }
        }
        let buildMemoryBytes: Int64, buildTimeoutDuration: Duration
        do {
            buildMemoryBytes = try Quantity.parseMemory(buildMemory, field: "--build-memory")
            buildTimeoutDuration = try DurationText.parse(buildTimeout, field: "--build-timeout")
        } catch let e as HearthError {
            throw ValidationError(e.message)
        }
        let remote = try remoteListen()
        LoggingSystem.bootstrap { StreamLogHandler.standardError(label: $0) }
        var options = DaemonOptions(initBinary: self.`init` ?? Self.defaultInit())
        options.stateRoot = (root as NSString).standardizingPath
        options.socketPath = socket
        options.cgroupSubtree = cgroupName
        options.workerDir = workerDir ?? Self.defaultWorkerDir()
        options.shutdownDeadline = .seconds(shutdownTimeout)
        options.logLevel = level
        options.spares = spares
        options.spareTTL = .seconds(spareTtl)
        options.spareImages = spareImage
        options.allowPrivileged = allowPrivileged
        options.allowMounts = allowMount
        if !cdiSpecDir.isEmpty { options.cdiDirs = cdiSpecDir }
        options.nvidiaDevDir = nvidiaDevDir
        options.userNamespaces = userns
        options.resultBudget = Int(clamping: memoryBudget)
        options.resultDiskBudget = Int(clamping: diskBudget)
        options.taskRetention = retention
        options.defaultMemory = memory
        options.egressAllow = egressAllow
        options.scratchDir = scratch.map { ($0 as NSString).standardizingPath }
        options.buildMemory = buildMemoryBytes
        options.buildTimeout = buildTimeoutDuration
        options.upgradeTimeout = upgradeWait
        options.listen = remote
        // Resolved now: once the file is replaced, /proc/self/exe names the deleted one.
        options.executable = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")
        options.arguments = CommandLine.arguments
        options.registries.caFiles = registryCa
        options.registries.insecureRegistries = Set(insecureRegistry)
        for mirror in registryMirror {
            let parts = mirror.split(separator: "=", maxSplits: 1).map(String.init)
            guard parts.count == 2, !parts[0].isEmpty, !parts[1].isEmpty else {
                throw ValidationError("--registry-mirror: \"\(mirror)\" is not REGISTRY=HOST[:PORT]")
            }
            options.registries.mirrors[parts[0]] = parts[1]
        }
        do {
            try await Daemon.run(options)
        } catch let e as HearthError {
            FileHandle.standardError.write(Data("hearthd: \(e.message)\n".utf8))
            throw ExitCode(1)
        } catch let e as SystemError {
            FileHandle.standardError.write(Data("hearthd: \(e.description)\n".utf8))
            throw ExitCode(1)
        }
    }

    /// `--listen` and its TLS files: all of them or none (TCP is served
    /// only with mutual TLS).
    func remoteListen() throws -> RemoteListen? {
        let files = [("--tls-cert", tlsCert), ("--tls-key", tlsKey), ("--tls-ca", tlsCa)]
        guard let listen else {
            if let given = files.first(where: { $0.1 != nil }) {
                throw ValidationError("\(given.0) is for --listen tcp://ADDR:PORT, which is not given")
            }
            return nil
        }
        let endpoint: DaemonEndpoint
        do { endpoint = try DaemonEndpoint.parse(listen, what: "--listen") } catch let e as HearthError {
            throw ValidationError(e.message)
        }
        guard case .tcp(let host, let port) = endpoint else {
            throw ValidationError("--listen \(listen): only tcp://ADDR:PORT (the Unix socket is --socket)")
        }
        let missing = files.filter { $0.1 == nil }.map(\.0)
        guard missing.isEmpty, let cert = tlsCert, let key = tlsKey, let ca = tlsCa else {
            throw ValidationError("--listen \(listen) needs \(missing.joined(separator: ", ")): hearthd serves TCP only with mutual TLS (`hearth certs` makes a CA and certificates)")
        }
        return RemoteListen(host: host, port: port, files: TLSFiles(certificate: cert, key: key, ca: ca))
    }

    /// The repository's python/ when run from a build tree, else the installed copy.
    static func defaultWorkerDir() -> String {
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? ""
        var dir = (exe as NSString).deletingLastPathComponent
        for _ in 0..<4 {
            if FileManager.default.fileExists(atPath: dir + "/python/hearth/_worker.py") { return dir + "/python" }
            dir = (dir as NSString).deletingLastPathComponent
        }
        return "/usr/local/lib/hearth/python"
    }

    static func defaultInit() -> String {
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? ""
        let beside = (exe as NSString).deletingLastPathComponent + "/hearth-init"
        if FileManager.default.fileExists(atPath: beside) { return beside }
        return "/usr/local/libexec/hearth/hearth-init"
    }
}
