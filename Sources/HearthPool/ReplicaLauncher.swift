import Foundation
import Glibc
import HearthCore
import HearthImage
import HearthOS
import HearthSandbox
import Logging
import NIOCore

/// Where every warm replica comes from, for environments and spares alike:
/// build one from an image (and wait for its worker's `ready`), or adopt a
/// pre-started spare into an environment. The pool's unit tests give a fake.
protocol ReplicaLaunching: Sendable {
    /// A new replica whose worker is ready. A spare gets nothing of an
    /// environment: no env, no packages to check (see SparePool).
    func build(_ config: PoolConfig, spare: Bool) async throws -> WarmReplica
    /// `spare` with `config`'s limits and env; nil when the spare turned
    /// out unusable (torn down: build instead); throws when the
    /// environment is at fault, as a build would.
    func adopt(_ spare: WarmReplica, into config: PoolConfig) async throws -> WarmReplica?
    /// The image `config` runs, as spares are keyed: (name, id).
    func imageIdentity(_ image: String) throws -> (name: String, id: String)
    /// A replica is likely to be built soon (an environment was just
    /// created or replaced, and its first task usually follows): start
    /// what can be started ahead (the v1 cgroup join's wait).
    func expectBuild()
}

/// The daemon's launcher: real sandboxes from the image store.
struct ReplicaLauncher: ReplicaLaunching {
    let runtime: SandboxRuntime
    let images: ImageStore
    let secrets: SecretStore
    /// Host directory holding the `hearth` package (mounted read-only at /.hearth/worker).
    let workerDir: String
    let maxFrame: Int
    /// Where replicas' result frames are read (the daemon's HTTP loop).
    let resultLoop: any EventLoop
    let logger: Logger
    /// Where `gpu: N` replicas take their GPUs.
    var gpus: GPUAllocator? = nil

    func imageIdentity(_ image: String) throws -> (name: String, id: String) {
        let resolved = try images.resolve(image)
        return (resolved.name, resolved.id)
    }

    /// Gives a spare this environment's limits and env. nil when the spare
    /// turned out unusable (it is torn down; the caller builds a replica
    /// instead); throws when the environment is at fault (a package the
    /// image lacks), as a from-scratch start would.
    func adopt(_ r: WarmReplica, into config: PoolConfig) async throws -> WarmReplica? {
        let t0 = ContinuousClock.now
        func discard(_ why: String) async {
            logger.warning("environment \(config.name): spare \(r.name) not adopted (\(why)); building a replica")
            _ = try? await Blocking.run { r.teardown() }
        }
        do {
            let cgroups = runtime.cgroups
            try await Blocking.run { try r.running.applyLimits(config.limits, ephemeralStorage: config.ephemeralStorage, cgroups: cgroups) }
        } catch {
            await discard("writing its limits: \(HearthError.wrap(error).message)")
            return nil
        }
        var env = config.env
        env["HEARTH_ENVIRONMENT"] = config.name
        env["HEARTH_IMAGE"] = config.image
        if !config.packages.isEmpty { env["HEARTH_REQUIRE_PACKAGES"] = config.packages.joined(separator: " ") }
        // The worker switches to running several tasks at once after `adopted`.
        if config.concurrency > 1 { env["HEARTH_CONCURRENCY"] = "\(config.concurrency)" }
        // An idle worker answers at once; one that does not is killed, and
        // the closed channel ends the wait below.
        let watchdog = Task {
            try? await Task.sleep(for: .seconds(10))
            if !Task.isCancelled { r.running.killAll() }
        }
        defer { watchdog.cancel() }
        let reply: WorkerMessage
        do {
            reply = try await r.adopt(env: env, packages: config.packages, image: config.image)
        } catch {
            await discard("\(error)")
            return nil
        }
        guard reply.ok == true else {
            _ = try? await Blocking.run { r.teardown() }
            throw HearthError(.spawnFailed, "replica \(r.name): \(reply.message ?? "the worker refused the environment")")
        }
        let took = (ContinuousClock.now - t0).microseconds
        r.recordAdoption(micros: took)
        r.setConcurrency(config.concurrency)
        return r
    }

    /// Builds a replica and waits for its worker to say `ready`. A spare
    /// gets nothing of an environment: no env, no packages to check (see
    /// SparePool).
    func expectBuild() { runtime.cgroups.prewarmJoin() }

    func build(_ config: PoolConfig, spare: Bool) async throws -> WarmReplica {
        runtime.cgroups.prewarmJoin()
        let name = runtime.newReplicaName(prefix: config.name)
        let codeView = runtime.replicasDir + "/" + name + ".code"
        let toWorker = try Pipe.make(), fromWorker = try Pipe.make()
        let replica: WarmReplica
        do {
            let running = try await Blocking.run { () throws -> RunningReplica in
              // What is made here for the replica goes again if it does not start.
              var made: [String] = []
              do {
                let image = try images.resolve(config.image)
                var spec = ReplicaSpec(name: name, image: image,
                                       argv: ["python3", "-X", "utf8", "/.hearth/worker/hearth/_start.py"],
                                       limits: config.limits)
                spec.env = config.env.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }
                if !spare { spec.env.append("HEARTH_ENVIRONMENT=\(config.name)") }
                spec.env.append("HEARTH_REPLICA=\(name)")
                spec.env.append("HEARTH_MAX_FRAME=\(maxFrame)")
                spec.env.append("HEARTH_IMAGE=\(config.image)")
                if config.concurrency > 1 { spec.env.append("HEARTH_CONCURRENCY=\(config.concurrency)") }
                // Validated module names: no spaces. Spares get it too (it is
                // part of their key).
                if !config.preload.isEmpty { spec.env.append("HEARTH_PRELOAD=\(config.preload.joined(separator: " "))") }
                if !config.packages.isEmpty {
                    // Validated requirement strings: no spaces, so a space list needs no quoting.
                    spec.env.append("HEARTH_REQUIRE_PACKAGES=\(config.packages.joined(separator: " "))")
                }
                // Bundles are read-only: do not even try to write bytecode caches there.
                spec.env.append("PYTHONDONTWRITEBYTECODE=1")
                spec.network = config.network
                spec.userNamespace = config.userNamespace
                spec.seccomp = config.seccomp
                spec.capabilities = config.capabilities
                // Its own view of the code store: only bundles its tasks name
                // are linked in (at dispatch), never another environment's.
                try FS.makeDirectory(codeView, mode: 0o755)
                made.append(codeView)
                spec.cleanupPaths.append(codeView)
                spec.ephemeralStorageLimit = config.ephemeralStorage
                spec.mounts = [
                    BindMount(source: workerDir, target: "/.hearth/worker", readOnly: true),
                    BindMount(source: codeView, target: "/.hearth/code", readOnly: true),
                ]
                if !config.secrets.isEmpty {
                    let dir = runtime.replicasDir + "/" + name + ".secrets"
                    made.append(dir)
                    // Owned by the image's user, so a non-root process can
                    // enter the 0700 directory and read its own secrets.
                    let (uid, gid) = try SandboxRuntime.parseUser(image.user)
                    try secrets.materialize(keys: config.secrets, into: dir, uid: uid, gid: gid)
                    spec.mounts.append(BindMount(source: dir, target: "/etc/secrets", readOnly: true))
                    spec.cleanupPaths.append(dir)
                    spec.idShiftedPaths.append(dir)
                }
                // Host directories: opened beneath their allowed prefix now,
                // and a detached copy of what was opened (not the path) is
                // what the spawn attaches.
                var mountFDs: [OwnedFD] = []
                for m in config.mounts {
                    let dir = try HostPath.openDirectory(m.hostPath, beneath: m.prefix)
                    let tree = try HostPath.detachedTree(of: dir, readOnly: m.readOnly, display: m.hostPath)
                    mountFDs.append(tree)
                    spec.mounts.append(BindMount(source: m.hostPath, target: m.path, readOnly: m.readOnly, tree: tree.raw))
                }
                // CDI devices, then the replica's own GPUs.
                spec.add(config.devices)
                if config.gpus > 0 && !spare {
                    guard let gpus else {
                        throw HearthError(.unavailable, "replica \(name): \(config.gpus) GPU(s) asked, and this hearthd has none to give")
                    }
                    spec.add(try gpus.take(config.gpus, for: name).edits)
                }
                spec.extraFDs = [(toWorker.read, 3), (fromWorker.write, 4)]
                return try withExtendedLifetime(mountFDs) { try runtime.start(spec) }
              } catch {
                for path in made { try? FS.removeTree(path: path) }
                gpus?.release(name)
                throw error
              }
            }
            close(toWorker.read)
            close(fromWorker.write)
            replica = WarmReplica(name: name, running: running, toWorker: toWorker.write,
                                  fromWorker: fromWorker.read, maxFrame: maxFrame, codeView: codeView,
                                  concurrency: config.concurrency)
        } catch {
            for fd in [toWorker.read, toWorker.write, fromWorker.read, fromWorker.write] { close(fd) }
            throw error
        }
        do {
            try await replica.attach(loop: resultLoop)
            _ = try await replica.waitReady()
            return replica
        } catch {
            // The worker died before `ready`: say why, with what it printed.
            let status = await replica.running.wait()
            let output = replica.idleOutput.suffix(2000)
            _ = try? await Blocking.run { replica.teardown() }
            var message = "replica \(name): the worker \(status) before it was ready"
            if replica.running.oomKilled() { message += " (out of memory)" }
            if !output.isEmpty { message += "; its output:\n" + output }
            throw HearthError(.spawnFailed, message)
        }
    }
}

extension ReplicaSpec {
    /// A device's edits: its nodes (each allowed in the device cgroup),
    /// env, bind mounts and symlinks.
    mutating func add(_ d: ResolvedDevices) {
        deviceNodes += d.nodes.map(\.node)
        devices += d.nodes.map(\.rule)
        env += d.env
        mounts += d.mounts
        symlinks += d.symlinks.map { ($0.target, $0.link) }
        for h in d.hooks where !hooks.contains(h) { hooks.append(h) }
    }
}
