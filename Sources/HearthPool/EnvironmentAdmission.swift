import Foundation
import Glibc
import HearthCore
import HearthImage
import HearthOS
import HearthSandbox
import Logging

/// Turns spec documents into running environments: parse and validate,
/// check the image, the secrets and the capabilities exist, admit against
/// the machine's capacity, then apply to the pool.
public actor EnvironmentAdmission {
    let pool: Pool
    let images: ImageStore
    let secrets: SecretStore
    let policy: PrivilegePolicy
    /// Which host directories may be mounted (`hearthd --allow-mount`).
    let mountPolicy: MountPolicy
    /// Where CDI specs are read (`hearthd --cdi-spec-dir`).
    let cdiDirs: [String]
    /// The GPUs admission counts (`replicas × gpu` may not exceed them).
    let gpus: GPUAllocator?
    /// hearthd --userns: environments that do not say get user namespaces.
    let defaultUserNamespace: Bool
    let logger: Logger
    let capacity: MachineCapacity
    /// Memory held by admitted environments and by spares, shared with the
    /// spare pool.
    let ledger: MemoryLedger
    /// The limit of a replica whose spec sets no memory (`--default-memory`).
    let defaultMemory: Int64?
    public typealias Pull = @Sendable (String, @escaping @Sendable (ImagePullEvent) -> Void) async throws -> ImageSummary
    /// Pulls an image from its registry (`Puller.pull` and what follows a
    /// pull); nil: applies never pull.
    private var pull: Pull?
    private var admitted: [String: EffectiveEnvironment] = [:]

    public init(pool: Pool, images: ImageStore, secrets: SecretStore, policy: PrivilegePolicy,
         mountPolicy: MountPolicy = MountPolicy(allowed: []), cdiDirs: [String] = CDIRegistry.defaultDirs,
         gpus: GPUAllocator? = nil,
         defaultUserNamespace: Bool = false,
         logger: Logger, capacity: MachineCapacity, ledger: MemoryLedger, defaultMemory: Int64?) {
        self.mountPolicy = mountPolicy
        self.cdiDirs = cdiDirs
        self.gpus = gpus
        self.defaultUserNamespace = defaultUserNamespace
        self.pool = pool
        self.images = images
        self.secrets = secrets
        self.policy = policy
        self.logger = logger
        self.capacity = capacity
        self.ledger = ledger
        self.defaultMemory = defaultMemory
    }

    /// Every CPU, and the memory the machine has or the daemon's cgroup
    /// (and its ancestors) allows, whichever is less, less a reserve for
    /// the daemon and the host.
    public static func measureCapacity() -> MachineCapacity {
        let cpus = Int64(sysconf(Int32(_SC_NPROCESSORS_ONLN)))
        var memory = Int64(sysconf(Int32(_SC_PHYS_PAGES))) * Int64(sysconf(Int32(_SC_PAGESIZE)))
        if let limit = OwnCgroup.memoryLimit() { memory = min(memory, limit) }
        let reserve = min(Int64(1) << 30, memory / 10)
        return MachineCapacity(cpuMilli: cpus * 1000, memoryBytes: memory - reserve)
    }

    public func setPull(_ pull: @escaping Pull) { self.pull = pull }

    /// Capacity and what admitted environments and spares hold of it, as
    /// admission counts them (`GET /v1/info`).
    public func usage() -> (capacity: NodeInfo.Amounts, admitted: NodeInfo.Amounts, environments: Int, replicas: Int) {
        let gpuCount = gpus.map { Int64($0.gpus().names.count) } ?? capacity.gpus
        let envs = Array(admitted.values)
        let memory = envs.reduce(Int64(0)) { Admission.plus($0, Admission.memoryReservation($1, defaultMemory: defaultMemory)) }
        let cpu = envs.reduce(Int64(0)) { Admission.plus($0, Admission.cpuReservation($1)) }
        let gpuHeld = envs.reduce(Int64(0)) { Admission.plus($0, Admission.times(Int64($1.replicaCount), $1.gpus ?? 0)) }
        return (NodeInfo.Amounts(cpuMilli: capacity.cpuMilli, memoryBytes: capacity.memoryBytes, gpus: gpuCount),
                NodeInfo.Amounts(cpuMilli: cpu, memoryBytes: Admission.plus(memory, ledger.spares.bytes), gpus: gpuHeld),
                envs.count, envs.reduce(0) { $0 + $1.replicaCount })
    }

    /// The CDI devices now: the allocator's view (GPUs generated where no
    /// spec has them) when there is one.
    private nonisolated func cdiRegistry() -> CDIRegistry {
        gpus?.registry() ?? CDIRegistry.load(dirs: cdiDirs)
    }

    /// What `GET /v1/devices` shows: the CDI specs read now.
    public nonisolated func devices() -> DevicesStatus {
        let registry = cdiRegistry()
        let devices = registry.devices.values.sorted { $0.name < $1.name }.map { e in
            DevicesStatus.Device(name: e.name, file: e.file,
                                 nodes: e.edits.deviceNodes.map(\.path), env: e.edits.env,
                                 mounts: e.edits.mounts.map { "\($0.hostPath) -> \($0.containerPath)" },
                                 hooks: e.edits.hooks.map { "\($0.hookName): \($0.path)" })
        }
        return DevicesStatus(dirs: cdiDirs, devices: devices, errors: registry.errors)
    }

    /// Environments saved by an earlier daemon come back as they were.
    public func restore() async {
        for (name, data) in pool.savedSpecs() {
            do {
                _ = try await apply(text: String(decoding: data, as: UTF8.self), source: "saved spec \(name)", persist: false)
            } catch {
                logger.error("environment \(name) could not be restored: \(HearthError.wrap(error).message)")
            }
        }
    }

    /// `progress`: events of the pulls the specs' `image_pull_policy`
    /// asks for (environments restored at start-up, `persist: false`,
    /// never pull).
    public func apply(text: String, source: String, persist: Bool = true,
               progress: @escaping @Sendable (ImagePullEvent) -> Void = { _ in }) async throws -> [ApplyResult] {
        let specs = try EnvironmentSpec.parseDocuments(text, source: source)
        guard !specs.isEmpty else { throw HearthError.invalid("\(source): no environment in the document") }
        let effective = try specs.map { try $0.effective }
        // Nothing is fetched for a spec the policy refuses.
        for e in effective {
            try policy.check(PrivilegePolicy.violations(of: e), subject: "environment \"\(e.name)\"")
        }
        if persist { try await pullImages(effective, progress: progress) }
        // Check every document before applying any.
        var prepared: [(EnvironmentSpec, EffectiveEnvironment, PoolConfig)] = []
        for (spec, eff) in zip(specs, effective) {
            prepared.append((spec, eff, try await poolConfig(eff)))
        }
        // Checked and recorded under the ledger's lock, against the spares
        // that exist now: none can be built into this room meanwhile.
        var capacity = self.capacity
        // The GPUs the CDI specs offer now.
        if let gpus { capacity.gpus = Int64(gpus.gpus().names.count) }
        let defaultMemory = self.defaultMemory, current = admitted
        try ledger.admit { spares in
            var planned = current
            for (_, eff, _) in prepared {
                try Admission.admit(eff, replacing: eff.name, admitted: Array(planned.values), capacity: capacity,
                                    defaultMemory: defaultMemory, spares: spares)
                planned[eff.name] = eff
            }
            return Self.memory(planned.values, defaultMemory: defaultMemory)
        }
        // Whatever happens below, the ledger ends up with what was applied.
        defer { ledger.setEnvironments(Self.memory(admitted.values, defaultMemory: defaultMemory)) }
        var results: [ApplyResult] = []
        for (spec, eff, config) in prepared {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            let saved = try encoder.encode(spec)
            let outcome = try await pool.apply(config, spec: saved, persist: persist)
            admitted[eff.name] = eff
            results.append(ApplyResult(name: eff.name, outcome: outcome.rawValue, identity: config.identity))
        }
        return results
    }

    /// Pulls each environment's image as its policy says: `IfNotPresent`
    /// (the default) when the store has no image of that name, `Always` at
    /// every apply, `Never` not at all (a missing image is refused naming
    /// the policy). One pull per image per apply; a failed pull refuses the
    /// environment with the registry's error.
    private func pullImages(_ environments: [EffectiveEnvironment],
                            progress: @escaping @Sendable (ImagePullEvent) -> Void) async throws {
        var pulled = Set<String>()
        let images = self.images
        for e in environments {
            let policy = e.imagePullPolicy ?? .ifNotPresent
            let image = e.image
            // A config digest names a stored image only: nothing to pull.
            if image.hasPrefix("sha256:") { continue }
            let present = await (try? Blocking.run { try images.resolve(image) }) != nil
            switch policy {
            case .never:
                guard present else {
                    throw HearthError(.imageNotFound, "environment \"\(e.name)\": image \"\(image)\" not found and its image_pull_policy is Never; pull it with `hearth image pull \(image)` or import it with `hearth image import PATH --name \(image)`")
                }
                continue
            case .ifNotPresent:
                if present { continue }
            case .always:
                break
            }
            guard let pull else { continue }  // no puller: the check below refuses a missing image
            let key = (try? ImageName.normalize(image, allowDigest: true)) ?? image
            guard pulled.insert(key).inserted else { continue }
            do {
                let summary = try await pull(image, progress)
                logger.info("environment \(e.name): pulled \(image) (\(summary.id), image_pull_policy \(policy.rawValue))")
            } catch {
                let err = HearthError.wrap(error)
                throw HearthError(err.code, "environment \"\(e.name)\": image \"\(image)\" (image_pull_policy \(policy.rawValue)) could not be pulled: \(err.message)")
            }
        }
    }

    public func remove(_ name: String) async throws {
        try await pool.remove(name)
        admitted.removeValue(forKey: name)
        ledger.setEnvironments(Self.memory(admitted.values, defaultMemory: defaultMemory))
    }

    /// What `environments` hold with all replicas running (saturating).
    static func memory(_ environments: some Sequence<EffectiveEnvironment>, defaultMemory: Int64?) -> Int64 {
        environments.reduce(Int64(0)) { sum, e in
            let (r, overflow) = sum.addingReportingOverflow(Admission.memoryReservation(e, defaultMemory: defaultMemory))
            return overflow ? .max : r
        }
    }

    /// What an environment naming only `image` would get (network none,
    /// the default seccomp profile and capabilities): the key `hearthd
    /// --spare-image` keeps spares for. Throws while the image is missing.
    public func defaultConfig(image: String) async throws -> PoolConfig {
        let doc = try JSONEncoder().encode(["name": "spare-image", "container_image": image])
        let specs = try EnvironmentSpec.parseDocuments(String(decoding: doc, as: UTF8.self), source: "--spare-image")
        guard let spec = specs.first else { throw HearthError.invalid("--spare-image \(image): no spec") }
        return try await poolConfig(try spec.effective)
    }

    private func poolConfig(_ e: EffectiveEnvironment) async throws -> PoolConfig {
        // First: a profile path must not even be opened for a client the
        // policy refuses.
        try policy.check(PrivilegePolicy.violations(of: e), subject: "environment \"\(e.name)\"")
        let images = self.images
        let imageName = e.image
        _ = try await Blocking.run { try images.resolve(imageName) }
        for key in e.secrets where !secrets.exists(key: key) {
            throw HearthError(.notFound, "environment \"\(e.name)\": secret \"\(key)\" in secret_requests is not set; set it with `hearth secret set \(key)`")
        }
        let mounts = try hostMounts(e)
        let seccomp: SeccompProfile?
        switch e.seccomp {
        case .default: seccomp = SeccompProfile.default
        case .unconfined: seccomp = nil
        case .profile(let path): seccomp = try SeccompProfile.load(path: path)
        }
        var config = try PoolConfig(e, seccomp: seccomp, defaultMemory: defaultMemory, defaultUserNamespace: defaultUserNamespace)
        config.mounts = mounts
        if let names = e.devices, !names.isEmpty {
            config.devices = try cdiRegistry().resolve(names, environment: e.name, runHooks: policy.allowPrivileged)
        }
        return config
    }

    /// Each mount under an allowed prefix (else `.forbidden`), and there: an
    /// existing directory reached without leaving the prefix.
    private func hostMounts(_ e: EffectiveEnvironment) throws -> [PoolConfig.HostMount] {
        let mounts = e.mounts ?? []
        let prefixes = try mountPolicy.prefixes(for: e)
        return try zip(mounts, prefixes).map { m, prefix in
            do {
                _ = try HostPath.openDirectory(m.hostPath, beneath: prefix)
            } catch let err as SystemError {
                let why = switch err.errno {
                case EXDEV: "leads out of \(prefix) (a symlink or .. on the way points outside it)"
                case ENOENT: "does not exist"
                case ENOTDIR: "is not a directory (or a component of it is not)"
                case ELOOP: "goes through too many symlinks"
                case EACCES: "cannot be opened by hearthd (permission denied)"
                default: "cannot be opened: \(err)"
                }
                throw HearthError(.invalidArgument, "environment \"\(e.name)\": mounts: host_path \(m.hostPath.debugDescription) (at \(m.path)) \(why)")
            }
            return PoolConfig.HostMount(prefix: prefix, hostPath: m.hostPath, path: m.path, readOnly: m.readOnly)
        }
    }
}
