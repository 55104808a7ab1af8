import Foundation
import Glibc
import HearthBuild
import HearthCore
import HearthEgress
import HearthImage
import HearthPool
import HearthTaskStore
import HearthRegistry
import Metrics
import Prometheus
import HearthSandbox
import Hummingbird
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle
import UnixSignals
import HearthOS

public struct DaemonOptions: Sendable {
    public var stateRoot: String = HearthDefaults.stateRoot
    public var socketPath: String = HearthDefaults.socketPath
    public var initBinary: String
    /// Name of the cgroup subtree; distinct per state root so that daemons
    /// on different roots (tests) never clean up each other's replicas.
    public var cgroupSubtree: String?
    public var shutdownDeadline: Duration = .seconds(10)
    /// Pre-started replicas kept per (image, network, seccomp, capabilities)
    /// that environments have used; 0: none (see SparePool).
    public var spares = 1
    /// A key's spares go after this long without an environment taking one.
    public var spareTTL: Duration = .seconds(600)
    /// Images whose default key (network none, default seccomp and
    /// capabilities) always has spares, from start-up or their import on.
    public var spareImages: [String] = []
    public var logLevel: Logger.Level = .info
    /// Lets clients ask for settings that take down a wall of the sandbox
    /// (PrivilegePolicy); off by default.
    public var allowPrivileged = false
    /// Host directories environments may mount (`--allow-mount`), as given.
    public var allowMounts: [String] = []
    /// Where CDI specs are read (`--cdi-spec-dir`).
    public var cdiDirs = CDIRegistry.defaultDirs
    /// Where `/dev/nvidiaN` nodes are looked for when no CDI spec offers GPUs.
    public var nvidiaDevDir = "/dev"
    /// Replicas run in user namespaces unless a spec or request says
    /// otherwise (`user_namespace: false`).
    public var userNamespaces = false
    /// Bytes of finished tasks' results and logs kept in memory
    /// (`--result-budget`); past it the oldest are spilled to disk.
    public var resultBudget = ResultBudget.defaultMemory
    /// Bytes of finished tasks' results and logs kept on disk, in the task
    /// store (or, with records off, as spill files under `<root>/results`)
    /// (`--result-disk-budget`); past it the oldest are dropped.
    public var resultDiskBudget = ResultBudget.defaultDisk
    /// How long and how many finished tasks' records are kept on disk, in
    /// `<root>/tasks/tasks.db` (`--task-retention`).
    public var taskRetention = TaskRetention.default
    /// Directory holding the `hearth` Python package (the worker).
    public var workerDir: String = "/usr/local/lib/hearth/python"
    /// The memory limit of every replica whose spec sets none (environment
    /// replicas, sandboxes, spares); nil: none.
    public var defaultMemory: Int64? = 1 << 30
    /// Replicas' upper and work directories go here instead of under the
    /// state root (`--scratch`); nil: under the state root.
    public var scratchDir: String?
    /// Image builds (`POST /v1/images/build`): memory limit of a build
    /// replica (`--build-memory`) and the time one step may take
    /// (`--build-timeout`).
    public var buildMemory: Int64 = BuildOptions().memoryLimit
    public var buildTimeout: Duration = BuildOptions().stepTimeout
    /// What replicas with network egress may reach beyond public addresses
    /// on ports 80 and 443 (`--egress-allow CIDR[:PORT]`).
    public var egressAllow: [String] = []
    /// How registries are reached (`--registry-ca`, `--insecure-registry`,
    /// `--registry-mirror`).
    public var registries = RegistryConfiguration()
    /// The executable and arguments hearthd was started with: what an
    /// upgrade execs (nil: upgrades are refused).
    public var executable: String?
    public var arguments: [String] = []
    /// How long an upgrade waits for queued tasks and changing requests
    /// before it is refused (`--upgrade-timeout`).
    public var upgradeTimeout: Duration = .seconds(60)
    /// The API on TCP with mutual TLS as well (`--listen tcp://…`, `--tls-*`).
    public var listen: RemoteListen?

    public init(initBinary: String) { self.initBinary = initBinary }
}

/// hearthd: owns the state root (lock), the image store, the sandbox
/// runtime and the HTTP API on the Unix socket.
public enum Daemon {
    public static let version = "0.1.0"

    public static func run(_ options: DaemonOptions) async throws {
        let started = Date().timeIntervalSince1970
        let sinceExec = Upgrader.sinceExec()
        // Checked before anything is created: a bad name leaves nothing behind.
        let spareImages = try Set(options.spareImages.map { name in
            do { return try ImageName.normalize(name) } catch {
                throw HearthError.invalid("--spare-image: \(HearthError.wrap(error).message)")
            }
        })
        let egressPolicy = EgressPolicy(allow: try options.egressAllow.map(EgressPolicy.parseRule))
        let remoteTLS = try options.listen.map { try RemoteListen.Prepared($0) }
        var logger = Logger(label: "hearthd")
        logger.logLevel = options.logLevel

        // Timers become histograms with buckets from 50 µs (warm dispatch) to 10 s (cold starts).
        let metricsRegistry = PrometheusCollectorRegistry()
        var factory = PrometheusMetricsFactory(registry: metricsRegistry)
        factory.defaultDurationHistogramBuckets = [
            .microseconds(50), .microseconds(100), .microseconds(250), .microseconds(500), .milliseconds(1),
            .milliseconds(2), .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50),
            .milliseconds(100), .milliseconds(250), .milliseconds(500), .seconds(1), .seconds(2), .seconds(5), .seconds(10),
        ]
        MetricsSystem.bootstrap(factory)
        // A worker that dies while we write its channel must not kill us.
        signal(SIGPIPE, SIG_IGN)
        guard geteuid() == 0 else {
            throw HearthError(.unavailable, "hearthd must run as root (it creates namespaces, mounts and cgroups)")
        }
        try FS.makeDirectory(options.stateRoot, mode: 0o711)
        let lock = try StateLock(root: options.stateRoot)
        defer { lock.release() }
        try refuseLiveSocket(options.socketPath)

        let subtree = options.cgroupSubtree ?? defaultSubtree(for: options.stateRoot)
        // The egress proxy holds two fds per connection (up to 1024
        // connections): a soft limit of 1024, systemd's default for a
        // service, would run out. Replicas get the hard limit anyway.
        var files = rlimit()
        if getrlimit(Int32(RLIMIT_NOFILE.rawValue), &files) == 0 && files.rlim_cur < files.rlim_max {
            files.rlim_cur = files.rlim_max
            _ = setrlimit(Int32(RLIMIT_NOFILE.rawValue), &files)
        }
        let egress = EgressProxy(policy: egressPolicy, logger: logger)
        let runtime = try SandboxRuntime(stateRoot: options.stateRoot, initBinary: options.initBinary,
                                         cgroupSubtree: subtree, scratchDir: options.scratchDir, egress: egress)
        try runtime.prepare()
        // Replicas a previous hearthd left with the keeper (it crashed or
        // was killed): adopted below instead of cleaned up.
        let (keeper, kept) = try ReplicaKeeper.open(stateRoot: options.stateRoot,
                                                    binary: runtime.runtimeDir + "/hearth-init")
        let images = try ImageStore(root: options.stateRoot)
        let registry = ReplicaRegistry()
        logger.info("state root \(options.stateRoot), cgroup \(runtime.cgroups.version) subtree \(subtree), default memory limit \(options.defaultMemory.map(Quantity.formatMemory) ?? "none"), writable layers under \(options.scratchDir ?? runtime.replicasDir)")
        if !egressPolicy.allow.isEmpty {
            logger.info("network egress also reaches \(egressPolicy.allow.map(\.description).joined(separator: ", ")) (--egress-allow)")
        }

        guard FileManager.default.fileExists(atPath: options.workerDir + "/hearth/_worker.py") else {
            throw HearthError(.unavailable, "the Hearth worker is missing: \(options.workerDir)/hearth/_worker.py; pass --worker-dir DIR (the repository's python/ directory) or run scripts/setup")
        }
        let code = try CodeStore(stateRoot: options.stateRoot)
        let secrets = try SecretStore(stateRoot: options.stateRoot)
        let budget = ResultBudget(memory: options.resultBudget, disk: options.resultDiskBudget,
                                  dir: options.stateRoot + "/results")
        let taskStore = try Self.openTaskStore(options, budget: budget, logger: logger)
        let tasks = TaskRegistry(journalDir: options.stateRoot + "/tasks", results: budget, store: taskStore,
                                 logger: logger)
        try tasks.prepareResults()
        let adoption = ReplicaAdoption(keeper: keeper, tasks: tasks, logger: logger)
        let adopted = adoption.take(kept, runtime: runtime)
        try runtime.cleanupStale(keeping: adopted)
        // Replicas mount the daemon's own copy, its bytecode compiled once;
        // adopted replicas keep the version they mount.
        let workerDir = try WorkerPackage.prepare(source: options.workerDir, stateRoot: options.stateRoot, logger: logger,
                                                  keeping: adoption.workerDirs)
        adoption.setWorkerDir(workerDir)
        if !kept.isEmpty { logger.info("the keeper held \(kept.count) replica(s) of the previous hearthd; \(adopted.count) pass the checks and are adopted") }
        // One event loop serves HTTP and reads every replica's result frames,
        // so a result reaches the response waiting for it on the same thread.
        let io = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let gpus = GPUAllocator(cdiDirs: options.cdiDirs, nvidiaDevDir: options.nvidiaDevDir, runHooks: options.allowPrivileged)
        var context = PoolContext(runtime: runtime, images: images, code: code, secrets: secrets, tasks: tasks,
                                  logger: logger, workerDir: workerDir, resultLoop: io.next(), gpus: gpus)
        let capacity = EnvironmentAdmission.measureCapacity()
        let ledger = MemoryLedger(capacity: capacity.memoryBytes, spareLimit: options.defaultMemory)
        context.defaultMemory = options.defaultMemory
        context.memory = ledger
        context.adoption = adoption
        let spares = SparePool(context: context, perKey: options.spares, ttl: options.spareTTL)
        context.spares = spares
        spares.start()
        let pool = try Pool(context: context, stateRoot: options.stateRoot)
        let (waiting, lost) = pool.recoverTasks()
        if !lost.isEmpty { logger.warning("\(lost.count) task(s) were in flight when the last hearthd stopped; reported as lost") }
        if waiting > 0 { logger.info("\(waiting) task(s) were in flight when the last hearthd stopped; waiting for the adopted replicas to report them") }
        // A keeper that dies while we run is replaced, and every replica put
        // with the new one (else they would die with this daemon).
        let keeperLog = logger
        keeper.onLost {
            Task {
                do {
                    try keeper.restart()
                    await pool.depositAll()
                    keeperLog.warning("the replica keeper was lost; a new one holds the replicas again")
                } catch {
                    keeperLog.error("the replica keeper was lost and could not be restarted (\(HearthError.wrap(error).message)); replicas will not outlive this hearthd")
                }
            }
        }
        let policy = PrivilegePolicy(allowPrivileged: options.allowPrivileged)
        let puller = try Puller(store: images, configuration: options.registries,
                                credentialsPath: options.stateRoot + "/registry-auth.json")
        // Canonical (symlinks resolved once, here): a mount's host path is
        // then opened beneath the prefix it names, never through a link.
        var allowed: [String] = []
        for dir in options.allowMounts {
            guard dir.hasPrefix("/"), let real = realpath(dir, nil) else {
                throw HearthError.invalid("hearthd --allow-mount \(dir): \(dir.hasPrefix("/") ? String(cString: strerror(errno)) : "not an absolute path")")
            }
            allowed.append(String(cString: real))
            free(real)
        }
        if !allowed.isEmpty { logger.info("environments may mount host directories under \(allowed.joined(separator: ", "))") }
        let admission = EnvironmentAdmission(pool: pool, images: images, secrets: secrets, policy: policy,
                                             mountPolicy: MountPolicy(allowed: allowed), cdiDirs: options.cdiDirs,
                                             gpus: gpus,
                                         defaultUserNamespace: options.userNamespaces, logger: logger,
                                         capacity: capacity, ledger: ledger, defaultMemory: options.defaultMemory)
        await admission.restore()
        // Kept replicas no restored environment took are removed.
        await adoption.finishRestore()
        // Restored environments' keys are known: their first task after a
        // restart adopts a spare instead of building a replica.
        for config in pool.configs() {
            if let key = await spares.key(for: config) { spares.learn(key, config: config) }
        }
        let armLog = logger
        let arm: @Sendable (String) async -> Void = { image in
            do {
                let config = try await admission.defaultConfig(image: image)
                if let key = await spares.key(for: config) { spares.learn(key, config: config, pinned: true) }
            } catch {
                armLog.info("--spare-image \(image): \(HearthError.wrap(error).message); its spares start when it is imported")
            }
        }
        if options.spares > 0 { for image in spareImages.sorted() { await arm(image) } }
        // A pulled image, like an imported one, replaces what its name meant.
        let pull: @Sendable (String, String?, @escaping @Sendable (ImagePullEvent) -> Void) async throws -> ImageSummary = { reference, name, progress in
            let image = try await puller.pull(reference: reference, name: name, progress: progress)
            await spares.discard(image: image.name, keeping: image.id)
            if options.spares > 0 && spareImages.contains(image.name) { await arm(image.name) }
            return image
        }
        await admission.setPull { reference, progress in try await pull(reference, nil, progress) }

        var api = ImageAndSandboxRoutes(runtime: runtime, images: images, registry: registry, policy: policy, logger: logger,
                      defaultMemory: options.defaultMemory)
        api.defaultUserNamespace = options.userNamespaces
        api.started = started
        api.beforeImageRemove = { name in await spares.discard(image: name) }
        api.environmentsOnImage = { full in
            var users: [String] = []
            for config in pool.configs().sorted(by: { $0.name < $1.name }) {
                let image = (try? ImageName.normalize(config.image, allowDigest: true)) ?? config.image
                guard image == full else { continue }
                let replicas = ((try? await pool.status(config.name))?.replicas ?? []).map(\.name)
                users.append(replicas.isEmpty ? "environment \(config.name)"
                             : "environment \(config.name) (replica\(replicas.count == 1 ? "" : "s") \(replicas.joined(separator: ", ")))")
            }
            return users
        }
        api.afterImageImport = { image in
            await spares.discard(image: image.name, keeping: image.id)
            if options.spares > 0 && spareImages.contains(image.name) { await arm(image.name) }
        }
        let router = Router(context: HearthRequestContext.self)
        router.add(middleware: ErrorMiddleware())  // before the routes: it applies to those added after it
        let gate = UpgradeGate()
        router.add(middleware: UpgradeGateMiddleware(gate: gate))
        let upgrader = options.executable.map { exe in
            Upgrader(plan: .init(binary: exe, argv: options.arguments.isEmpty ? [exe] : options.arguments,
                                 timeout: options.upgradeTimeout),
                     pool: pool, gate: gate, sandboxes: registry, loop: io.next(), taskStore: taskStore, logger: logger)
        }
        UpgradeRoute(upgrader: upgrader).register(on: router)
        api.register(on: router)
        var routes = PoolRoutes(pool: pool, admission: admission, code: code, secrets: secrets, logger: logger)
        routes.cgroupVersion = "\(runtime.cgroups.version)"
        let poolRoutes = routes
        poolRoutes.register(on: router)
        MetricsRoute(registry: metricsRegistry, pool: pool).register(on: router)
        var buildOptions = BuildOptions()
        buildOptions.memoryLimit = options.buildMemory
        buildOptions.stepTimeout = options.buildTimeout
        var buildHooks = ImageBuilder.Hooks()
        buildHooks.admit = { try registry.admit() }
        buildHooks.replicaStarted = { replica, image in registry.add(replica, image: image) }
        buildHooks.replicaEnded = { name in registry.remove(name) }
        // The base image comes from the store, or is pulled when the store
        // lacks it (as an environment's IfNotPresent).
        let ensureBase: ImageBuilder.EnsureBaseImage = { ref, say in
            do {
                return try await Blocking.run { try images.resolve(ref) }
            } catch let e as HearthError where e.code == .imageNotFound {
                say("pulling base image \(ref)")
                let started = ContinuousClock.now
                let image = try await pull(ref, nil) { _ in }
                let seconds = (ContinuousClock.now - started).seconds
                say("pulled \(image.name) in \(String(format: "%.1f", seconds)) s")
                return try await Blocking.run { try images.resolve(image.name) }
            }
        }
        let builder = ImageBuilder(runtime: runtime, store: images, options: buildOptions, logger: logger,
                                   ensureBaseImage: ensureBase,
                                   codeBundlePath: { try code.path(of: $0) }, hooks: buildHooks)
        ImageBuildRoutes(builder: builder, logger: logger, afterBuild: api.afterImageImport).register(on: router)
        RegistryRoutes(pull: pull, puller: puller, logger: logger).register(on: router)

        let socketPath = options.socketPath
        let bind = try SocketBinding(finalPath: socketPath)
        let log = logger
        let app = Application(
            router: router,
            server: .http1OnEventLoop(fastPath: { [TaskFastPath(routes: poolRoutes)] }),
            configuration: .init(address: .unixDomainSocket(path: bind.bindPath), serverName: "hearthd"),
            onServerRunning: { _ in
                do {
                    try bind.publish()
                    log.info("hearthd \(version) listening on \(socketPath)")
                    if let sinceExec {
                        log.notice("upgrade: serving again \(String(format: "%.1f", sinceExec.milliseconds)) ms after the exec")
                    }
                } catch {
                    // Nobody can connect: stop rather than run unreachable.
                    log.critical("\(HearthError.wrap(error).message); stopping")
                    kill(getpid(), SIGTERM)
                }
            },
            eventLoopGroupProvider: .shared(io),
            logger: logger
        )
        var services: [ServiceGroupConfiguration.ServiceConfiguration] = [.init(service: app)]
        if let remoteTLS {
            services.append(.init(service: remoteApplication(remoteTLS, router: router, poolRoutes: poolRoutes,
                                                             io: io, logger: logger)))
        }
        let group = ServiceGroup(
            configuration: .init(
                services: services + [
                    .init(service: DrainService(registry: registry, pool: pool, deadline: options.shutdownDeadline,
                                                logger: logger)),
                ],
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger
            )
        )
        let upgradeSignal = Task {
            guard let upgrader else { return }
            for await _ in await UnixSignalsSequence(trapping: .sigusr2) {
                do {
                    try await upgrader.prepare()
                    await upgrader.commit()
                } catch {
                    log.error("SIGUSR2: \(HearthError.wrap(error).message)")
                }
            }
        }
        try await group.run()
        upgradeSignal.cancel()
        await puller.shutdown()
        try? await io.shutdownGracefully()
        await egress.shutdown()
        do { try tasks.removeSpilledResults() } catch { logger.warning("removing spilled results: \(error)") }
        taskStore?.close()
        // Every replica was drained: the keeper has nothing left to keep.
        keeper.quit()
        try? runtime.cleanupStale()
        try? runtime.cgroups.removeSubtree()
        bind.remove()
        ReplicaEvents.shutdown()
        logger.info("hearthd stopped")
    }

    /// The API again on `--listen`'s TCP address, behind mutual TLS; the
    /// same router and fast path as the Unix socket.
    static func remoteApplication(_ remote: RemoteListen.Prepared, router: Router<HearthRequestContext>,
                                  poolRoutes: PoolRoutes, io: any EventLoopGroup,
                                  logger: Logger) -> some Service {
        let log = logger
        let listen = remote.listen
        return Application(
            router: router,
            server: .mutualTLSOnEventLoop(context: remote.context, fastPath: { [TaskFastPath(routes: poolRoutes)] }),
            configuration: .init(address: .hostname(listen.host, port: listen.port), serverName: "hearthd"),
            onServerRunning: { channel in
                let at = channel.localAddress.map { "\($0)" } ?? "\(listen.host):\(listen.port)"
                log.info("hearthd listening on \(at) (mutual TLS; certificate \(remote.subject), clients of \(listen.files.ca))")
            },
            eventLoopGroupProvider: .shared(io),
            logger: logger
        )
    }

    /// `<root>/tasks/tasks.db`, or nil with `--task-retention 0` (then an
    /// earlier daemon's records are removed: none are to be kept).
    static func openTaskStore(_ options: DaemonOptions, budget: ResultBudget, logger: Logger) throws -> TaskStore? {
        let dir = options.stateRoot + "/tasks"
        try FS.makeDirectory(dir, mode: 0o700)
        let path = dir + "/tasks.db"
        guard !options.taskRetention.isOff else {
            for suffix in ["", "-wal", "-shm"] where unlink(path + suffix) != 0 && errno != ENOENT {
                throw SystemError.current("unlink", path + suffix)
            }
            return nil
        }
        let retention = TaskStore.Retention(maxAge: options.taskRetention.maxAge, maxCount: options.taskRetention.maxCount,
                                            payloadBudget: budget.disk, payloadRule: budget.rule)
        let store = try TaskStore(path: path, retention: retention, logger: logger)
        let usage = store.usage
        logger.info("task store \(path): \(usage.rows) finished task(s), \(Quantity.formatMemory(Int64(usage.payloadBytes))) of results and logs")
        return store
    }

    static func defaultSubtree(for root: String) -> String {
        if root == HearthDefaults.stateRoot { return "hearth" }
        // FNV-1a of the path: stable across runs, short enough for a cgroup name.
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in root.utf8 { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
        return "hearth-" + String(h & 0xffff_ffff, radix: 16)
    }


    /// Hummingbird removes an existing socket file before binding; make sure
    /// it does not belong to a daemon that is still alive.
    static func refuseLiveSocket(_ path: String) throws {
        var st = stat()
        guard lstat(path, &st) == 0 else { return }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return }
        defer { close(fd) }
        if UnixSocket.connect(fd, to: path) == 0 {
            throw HearthError(.conflict, "socket \(path) is in use by another running hearthd; stop it or pass --socket PATH")
        }
    }
}

/// An exclusive flock on <root>/hearthd.lock for the daemon's lifetime.
final class StateLock {
    let fd: Int32
    let path: String

    init(root: String) throws {
        path = root + "/hearthd.lock"
        fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw SystemError.current("open", path) }
        if flock(fd, LOCK_EX | LOCK_NB) != 0 {
            let err = errno
            var buf = [UInt8](repeating: 0, count: 32)
            let n = pread(fd, &buf, 31, 0)
            let holder = n > 0 ? String(decoding: buf[0..<n], as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines) : "?"
            close(fd)
            if err == EWOULDBLOCK {
                throw HearthError(.conflict, "another hearthd (pid \(holder)) is running on state root \(root) (lock \(path) is held)")
            }
            throw SystemError("flock", path, errno: err)
        }
        let pid = Array("\(getpid())\n".utf8)
        _ = ftruncate(fd, 0)
        _ = pid.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 0) }
    }

    func release() {
        _ = ftruncate(fd, 0)
        close(fd)
    }
}
