#if canImport(Glibc)
import Glibc
#endif
import Foundation
import HearthCore
import HearthImage
import HearthSandbox
import Logging
import Synchronization

/// Settings of every build (hearthd flags).
public struct BuildOptions: Sendable {
    /// Memory limit of a build replica (`--build-memory`).
    public var memoryLimit: Int64 = 4 << 30
    /// How long one step may run (`--build-timeout`).
    public var stepTimeout: Duration = .seconds(30 * 60)
    public var pidsMax: Int64 = CgroupLimits.defaultPidsMax
    /// The base image when a spec names none.
    public var defaultBaseImage = HearthDefaults.image
    /// Lines of a step's output kept for the error message.
    public var tailLines = 40

    public init() {}
}

/// What a build reports as it goes (the API streams these as NDJSON).
public enum BuildEvent: Sendable {
    case start(image: String, steps: Int)
    case step(index: Int, total: Int, description: String, cached: Bool)
    case output(index: Int, line: String)
    case stepDone(index: Int, seconds: Double, cached: Bool)
    /// The base image is being fetched: a line for the user (`pull` events).
    case pull(line: String)
}

/// Builds images from ImageSpecs: the base image (from the store, or
/// whatever `ensureBaseImage` fetches), then each step of the `BuildPlan`
/// in a build replica, isolated like any replica (default seccomp, Docker's
/// capabilities, the build memory and pids limits, no user namespace: the
/// layer's owners must be the image's own ids) with the network
/// `BuildNetwork` gives it. When a step's command exits 0, everything left in
/// its cgroup is killed and the replica's upper directory becomes a layer
/// (`LayerWriter`), installed through the image store's verified unpacker.
/// A step whose cache key has a layer in the store is not run. The image is
/// recorded, then the new cache entries; a failed build removes the layers
/// it installed and records nothing.
public final class ImageBuilder: Sendable {
    /// Makes the base image available (from the store, or pulled) and
    /// returns it; reports what it does with the lines it passes to its
    /// second argument.
    public typealias EnsureBaseImage = @Sendable (String, @escaping @Sendable (String) -> Void) async throws -> ResolvedImage

    let runtime: SandboxRuntime
    let store: ImageStore
    let cache: BuildCache
    let options: BuildOptions
    let logger: Logger
    let ensureBaseImage: EnsureBaseImage
    let codeBundlePath: @Sendable (String) throws -> String
    let hooks: Hooks
    private let locks = NameLocks()
    private let counter = Atomic<Int>(0)

    /// The daemon's replica bookkeeping: whether new replicas may start (not
    /// while it drains), and each build replica's start (with the base image
    /// it runs on, which is then in use) and end.
    public struct Hooks: Sendable {
        public var admit: @Sendable () throws -> Void = {}
        public var replicaStarted: @Sendable (RunningReplica, String) -> Void = { _, _ in }
        public var replicaEnded: @Sendable (String) -> Void = { _ in }
        public init() {}
    }

    /// - Parameters:
    ///   - ensureBaseImage: makes the base image available in `store` (a
    ///     registry pull, where the daemon has one) or throws the store's
    ///     not-found error.
    ///   - codeBundlePath: the unpacked tree of an uploaded code bundle.
    public init(runtime: SandboxRuntime, store: ImageStore, options: BuildOptions, logger: Logger,
                ensureBaseImage: @escaping EnsureBaseImage,
                codeBundlePath: @escaping @Sendable (String) throws -> String, hooks: Hooks = Hooks()) {
        self.hooks = hooks
        self.runtime = runtime
        self.store = store
        self.cache = BuildCache(stateRoot: runtime.stateRoot)
        self.options = options
        self.logger = logger
        self.ensureBaseImage = ensureBaseImage
        self.codeBundlePath = codeBundlePath
    }

    /// The name `spec` builds: `[registry/]name:tag`, checked.
    public func imageName(_ spec: ImageBuildSpec) throws -> String {
        let name = spec.imageName(defaultBaseImage: options.defaultBaseImage)
        do {
            return try ImageName.normalize(name)
        } catch {
            throw HearthError.invalid("spec: name, registry and tag make \"\(name)\", which is not an image name: \(HearthError.wrap(error).message)")
        }
    }

    /// Builds `spec`. Returns the image and whether it was all cached (no
    /// step ran). The same name built twice at once: the second waits for
    /// the first, then finds every step cached.
    public func build(_ spec: ImageBuildSpec, verbose: Bool,
                      emit: @escaping @Sendable (BuildEvent) -> Void) async throws -> (ImageSummary, cached: Bool) {
        let name = try imageName(spec)
        await locks.lock(name)
        do {
            let result = try await buildLocked(spec, name: name, verbose: verbose, emit: emit)
            await locks.unlock(name)
            return result
        } catch {
            await locks.unlock(name)
            throw error
        }
    }

    private func buildLocked(_ spec: ImageBuildSpec, name: String, verbose: Bool,
                             emit: @escaping @Sendable (BuildEvent) -> Void) async throws -> (ImageSummary, cached: Bool) {
        let baseRef = spec.baseImage ?? options.defaultBaseImage
        let resolved = try await ensureBaseImage(baseRef) { line in emit(.pull(line: line)) }
        let store = self.store
        // Pinned from the moment it is looked up: removing the base image
        // meanwhile cannot take its layers.
        let found = try await Blocking.run { () throws -> ImageDetails in
            var details = try store.details(resolved.id)
            store.pinLayers(details.diffIDs)
            // Images with the same config share a record's content; the name is the one asked for.
            details.name = resolved.name
            return details
        }
        let base = found
        var pinned = base.diffIDs
        var layers: [String] = []
        var entries: [String: BuildCache.Entry] = [:]
        var sizes: [String: Int64] = [:]
        var ran = 0
        var checkedPython = spec.pythonVersion == nil
        do {
            let plan = BuildPlan(spec: spec, baseID: base.id)
            let baseLayers = try await Blocking.run { try store.layerPaths(base.diffIDs) }
            let tools = Toolchain.detect(layers: baseLayers)
            let total = plan.steps.count
            emit(.start(image: name, steps: total))
            for (i, step) in plan.steps.enumerated() {
                let index = i + 1
                let description = Self.describe(step.kind, tools: tools)
                // Only a run of cached steps from the first one is taken from the cache.
                if ran == 0, let diffID = try await cachedLayer(step.key) {
                    pinned.append(diffID)
                    emit(.step(index: index, total: total, description: description, cached: true))
                    layers.append(diffID)
                    emit(.stepDone(index: index, seconds: 0, cached: true))
                    continue
                }
                if !checkedPython, let wanted = spec.pythonVersion {
                    try await checkPython(wanted, base: base, baseRef: baseRef, layers: baseLayers, tools: tools)
                    checkedPython = true
                }
                emit(.step(index: index, total: total, description: description, cached: false))
                let started = ContinuousClock.now
                let context = StepContext(index: index, total: total, description: description, base: base,
                                          baseRef: baseRef, layers: layers, plan: plan, tools: tools, verbose: verbose)
                let made = try await run(step, context, emit: emit, pin: { pinned.append($0) })
                ran += 1
                layers.append(made.diffID)
                sizes[made.diffID] = made.size
                entries[step.key] = BuildCache.Entry(diffID: made.diffID, step: description,
                                                     created: Date().formatted(.iso8601))
                let seconds = (ContinuousClock.now - started).seconds
                emit(.stepDone(index: index, seconds: (seconds * 10).rounded() / 10, cached: false))
            }
            if !checkedPython, let wanted = spec.pythonVersion, total == 0 {
                try await checkPython(wanted, base: base, baseRef: baseRef, layers: baseLayers, tools: tools)
            }
            let env = Self.merge(base.env, plan.env)
            let newEntries = entries, finalLayers = layers, finalSizes = sizes
            let image = try await Blocking.run {
                try store.recordBuiltImage(name: name, base: base, layers: finalLayers, env: env, sizes: finalSizes)
            }
            if !newEntries.isEmpty {
                // The image stands either way: a cache entry not written costs a rebuild, nothing more.
                do {
                    try await Blocking.run { [cache] in try cache.record(newEntries, layerExists: { try store.hasLayer($0) }) }
                } catch {
                    logger.warning("build \(name): the step cache was not updated: \(HearthError.wrap(error).message)")
                }
            }
            store.unpinLayers(pinned)
            return (image, ran == 0)
        } catch {
            store.unpinLayers(pinned)
            // The layers this build installed go with it (images still use the cached ones).
            _ = try? await Blocking.run { try store.removeUnusedLayers() }
            throw error
        }
    }

    /// The cached step's layer, pinned, when the store still has it.
    private func cachedLayer(_ key: String) async throws -> String? {
        let store = self.store, cache = self.cache
        return try await Blocking.run { () -> String? in
            guard let entry = try cache.lookup(key, layerExists: { try store.hasLayer($0) }) else { return nil }
            store.pinLayers([entry.diffID])
            // Pinned, it cannot go now; it might have gone just before.
            guard try store.hasLayer(entry.diffID) else {
                store.unpinLayers([entry.diffID])
                return nil
            }
            return entry.diffID
        }
    }

    // MARK: steps

    struct StepContext: Sendable {
        var index: Int
        var total: Int
        var description: String
        var base: ImageDetails
        var baseRef: String
        /// Layers made so far (above the base).
        var layers: [String]
        var plan: BuildPlan
        var tools: Toolchain
        var verbose: Bool

        var label: String { "step \(index)/\(total) (\(description))" }
    }

    /// Runs one step and installs its layer (pinned through `pin` before it
    /// is installed). Returns its diff ID and size.
    private func run(_ step: BuildPlan.Step, _ c: StepContext, emit: @escaping @Sendable (BuildEvent) -> Void,
                     pin: (String) -> Void) async throws -> (diffID: String, size: Int64) {
        let store = self.store
        let layerPaths = try await Blocking.run { try store.layerPaths(c.base.diffIDs + c.layers) }
        let tar = store.scratchDirectory + "/\(getpid())-build-\(counter.wrappingAdd(1, ordering: .relaxed).newValue).tar"
        defer { unlink(tar) }
        let written: LayerWriter.Result
        switch step.kind {
        case .copy(let copy):
            let source = try codeBundlePath(copy.bundle)
            written = try await Blocking.run {
                var layer = LayerSource(root: source, prefix: LayerSource.components(copy.dest))
                layer.setLower(layersBottomFirst: layerPaths)
                do { return try LayerWriter.write(layer, to: tar) } catch {
                    throw HearthError(HearthError.wrap(error).code, "\(c.label): \(HearthError.wrap(error).message)")
                }
            }
        case .apt, .python, .command:
            written = try await runReplica(step, c, layerPaths: layerPaths, tar: tar, emit: emit)
        }
        pin(written.diffID)
        store.pinLayers([written.diffID])
        let size = try await Blocking.run { try store.installLayer(tarAt: tar, diffID: written.diffID) }
        logger.info("build \(c.label): layer \(written.diffID.prefix(19)) (\(written.entries) entries, \(written.bytes) bytes)")
        return (written.diffID, size)
    }

    /// What the build leaves out of a step's layer: what Hearth itself writes
    /// into a replica's upper directory (its /etc files, the mount points it
    /// makes) and scratch space.
    static let excluded: Set<[[UInt8]]> = Set([
        "etc/hostname", "etc/hosts", "etc/resolv.conf",
        "proc", "sys", "dev", ".hearth", String(BuildNetwork.mountPoint.dropFirst()),
        "tmp", "var/tmp", "root/.cache",
    ].map(LayerSource.components))

    private func runReplica(_ step: BuildPlan.Step, _ c: StepContext, layerPaths: [String], tar: String,
                            emit: @escaping @Sendable (BuildEvent) -> Void) async throws -> LayerWriter.Result {
        let (argv, stepEnv) = try Self.command(for: step.kind, c)
        var imageEnv = c.base.env
        if step.afterEnv { imageEnv = Self.merge(imageEnv, c.plan.env) }
        var workdir = "/"
        if case .command = step.kind, !c.base.workingDir.isEmpty { workdir = c.base.workingDir }
        let image = ResolvedImage(name: c.baseRef, id: c.base.id, layerPaths: layerPaths, env: imageEnv,
                                  entrypoint: [], cmd: [], workingDir: workdir, user: "")
        var spec = ReplicaSpec(name: runtime.newReplicaName(prefix: "build"), image: image, argv: argv,
                               limits: CgroupLimits(memoryLimit: options.memoryLimit, pidsMax: options.pidsMax))
        spec.env = stepEnv
        spec.workdir = workdir
        spec.seccomp = SeccompProfile.default
        spec.capabilities = .dockerDefault
        spec.userNamespace = false
        let stateRoot = runtime.stateRoot
        let trust = try await Blocking.run { try BuildNetwork.prepareTrust(stateRoot: stateRoot) }
        BuildNetwork.configure(&spec, trust: trust)

        try hooks.admit()
        let runtime = self.runtime, replicaSpec = spec
        let replica = try await Blocking.run { try runtime.start(replicaSpec) }
        hooks.replicaStarted(replica, c.base.name)
        defer { hooks.replicaEnded(replica.name) }
        do {
            let output = OutputTail(keep: options.tailLines, index: c.index, verbose: c.verbose, emit: emit)
            let outputDone = AsyncStream<Void>.makeStream()
            replica.startOutput { chunk in
                switch chunk {
                case .stdout(let bytes)?, .stderr(let bytes)?: output.take(bytes)
                case nil: outputDone.continuation.finish()
                }
            }
            let status = await waitForExit(replica, timeout: options.stepTimeout)
            // Whatever the command left running goes before its layer is read.
            try await Blocking.run { replica.cgroup.killAll() }
            // Its last lines, now that nothing holds the pipes open.
            for await _ in outputDone.stream {}
            output.finish()
            if let failure = Self.failure(status, replica: replica, options: options) {
                throw HearthError(.buildFailed, "\(c.label): \(failure)\(output.tailMessage())")
            }
            let upper = replica.writableDirs.first ?? (replica.dir + "/upper")
            let written = try await Blocking.run {
                var layer = LayerSource(root: upper, excluded: Self.excluded)
                layer.setLower(layersBottomFirst: layerPaths)
                do { return try LayerWriter.write(layer, to: tar) } catch {
                    let e = HearthError.wrap(error)
                    throw HearthError(e.code == .invalidArgument ? .buildFailed : e.code, "\(c.label): \(e.message)")
                }
            }
            try? await Blocking.run { replica.teardown() }
            return written
        } catch {
            replica.signal(SIGKILL)
            try? await Blocking.run { replica.teardown() }
            throw error
        }
    }

    enum Exit: Sendable {
        case status(ExitStatus)
        case timedOut
    }

    /// The replica's exit, or `timedOut` (the replica killed) after `timeout`.
    private func waitForExit(_ replica: RunningReplica, timeout: Duration) async -> Exit {
        await withTaskGroup(of: Exit?.self) { group in
            group.addTask { .status(await replica.wait()) }
            group.addTask {
                do { try await Task.sleep(for: timeout) } catch { return nil }
                return .timedOut
            }
            var result: Exit = .timedOut
            if let first = await group.next() { result = first ?? .timedOut }
            if case .timedOut = result {
                _ = try? await Blocking.run { replica.cgroup.killAll() }
                _ = await replica.wait()
            }
            group.cancelAll()
            return result
        }
    }

    /// Why a finished step failed; nil when it succeeded.
    static func failure(_ exit: Exit, replica: RunningReplica, options: BuildOptions) -> String? {
        switch exit {
        case .timedOut:
            return "timed out after \(formatDuration(options.stepTimeout)) (hearthd --build-timeout) and was killed"
        case .status(let status):
            if replica.cgroup.oomKilled() {
                let limit = Quantity.formatMemory(options.memoryLimit)
                return "killed: out of memory, limit \(limit) (hearthd --build-memory)"
            }
            switch status {
            case .exited(0): return nil
            case .exited(let code): return "exit status \(code)"
            case .signaled(let signal): return "killed by signal \(signal)"
            case .unknown: return "exit status unknown"
            }
        }
    }

    static func formatDuration(_ d: Duration) -> String {
        let s = Int(d.components.seconds)
        if s % 3600 == 0 { return "\(s / 3600)h" }
        if s % 60 == 0 { return "\(s / 60)m" }
        return "\(s)s"
    }

    // MARK: commands

    /// What a step shows the user.
    static func describe(_ kind: BuildPlan.Kind, tools: Toolchain) -> String {
        switch kind {
        case .apt(let packages):
            return "apt-get install " + packages.joined(separator: " ")
        case .python(let install):
            var words = [tools.uv != nil ? "uv pip install" : "pip install"] + install.packages
            if install.requirements != nil { words.append("-r requirements.txt") }
            return words.joined(separator: " ")
        case .copy(let copy):
            return "copy bundle \(copy.bundle.prefix(12)) to \(copy.dest)"
        case .command(let command):
            let line = command.split(separator: "\n").first.map(String.init) ?? command
            return line.count > 100 ? String(line.prefix(99)) + "…" : line
        }
    }

    /// The argv and extra environment of a step that runs in a replica.
    static func command(for kind: BuildPlan.Kind, _ c: StepContext) throws -> (argv: [String], env: [String]) {
        let lacks = "hearth: base image \(c.baseRef)"
        switch kind {
        case .apt(let packages):
            let script = """
                set -e
                command -v apt-get >/dev/null 2>&1 || { echo "\(lacks) has no apt-get; apt_packages need a Debian or Ubuntu base image" >&2; exit 127; }
                apt-get update
                apt-get install -y --no-install-recommends "$@"
                rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/* /var/cache/apt/*.bin
                """
            return (["/bin/sh", "-c", script, "sh"] + packages, ["DEBIAN_FRONTEND=noninteractive"])
        case .python(let install):
            var args: [String] = []
            if let index = install.index { args += ["--index-url", index] }
            for url in install.extraIndexURLs { args += ["--extra-index-url", url] }
            args += install.extraArgs
            args += install.packages
            var env: [String] = []
            var prepare = ""
            if let requirements = install.requirements {
                // Through the environment: nothing of it lands in the layer (/tmp is left out).
                env.append("HEARTH_BUILD_REQUIREMENTS=\(requirements)")
                prepare = "printf '%s\\n' \"$HEARTH_BUILD_REQUIREMENTS\" > /tmp/hearth-requirements.txt\n"
                args += ["-r", "/tmp/hearth-requirements.txt"]
            }
            if let uv = c.tools.uv {
                guard let python = c.tools.python else {
                    throw HearthError(.buildFailed, "\(c.label): base image \(c.baseRef) has uv but no python3 (looked for /usr/local/bin/python3 and /usr/bin/python3)")
                }
                env += ["UV_LINK_MODE=copy", "UV_PYTHON_DOWNLOADS=never", "UV_NO_PROGRESS=1"]
                let script = "set -e\n" + prepare + "exec \"$@\""
                return (["/bin/sh", "-c", script, "sh", uv, "pip", "install", "--system", "--break-system-packages",
                         "--python", python, "--no-cache"] + args, env)
            }
            env += ["PIP_BREAK_SYSTEM_PACKAGES=1", "PIP_ROOT_USER_ACTION=ignore", "PIP_DISABLE_PIP_VERSION_CHECK=1",
                    "PIP_PROGRESS_BAR=off"]
            let script = """
                set -e
                command -v python3 >/dev/null 2>&1 || { echo "\(lacks) has no python3; Python packages need one" >&2; exit 127; }
                python3 -m pip --version >/dev/null 2>&1 || { echo "\(lacks) has neither uv (/usr/local/bin/uv, /usr/bin/uv) nor pip for its python3; use a base image with one of them (the default image has uv)" >&2; exit 127; }
                \(prepare)exec python3 -m pip install --no-cache-dir "$@"
                """
            return (["/bin/sh", "-c", script, "sh"] + args, env)
        case .command(let command):
            return (["/bin/sh", "-c", command], [])
        case .copy:
            throw HearthError(.internal, "\(c.label): a copy step runs no command")
        }
    }

    /// `base` with `overrides` applied (same name: replaced in place; new: appended).
    static func merge(_ base: [String], _ overrides: [String]) -> [String] {
        var out = base
        for kv in overrides {
            let name = kv.split(separator: "=", maxSplits: 1).first.map(String.init) ?? kv
            if let i = out.firstIndex(where: { ($0.split(separator: "=", maxSplits: 1).first.map(String.init) ?? $0) == name }) {
                out[i] = kv
            } else {
                out.append(kv)
            }
        }
        return out
    }

    // MARK: python_version

    /// `python_version` must be the base image's python3 (Hearth installs
    /// no other): asks python3 in a replica of the base image.
    private func checkPython(_ wanted: String, base: ImageDetails, baseRef: String, layers: [String],
                             tools: Toolchain) async throws {
        guard let python = tools.python else {
            throw HearthError.invalid("spec.python_version: \(wanted) was asked for, but base image \(baseRef) has no python3 (looked for /usr/local/bin/python3 and /usr/bin/python3); Hearth does not download Python")
        }
        let image = ResolvedImage(name: baseRef, id: base.id, layerPaths: layers, env: base.env, entrypoint: [], cmd: [],
                                  workingDir: "/", user: "")
        let spec = ReplicaSpec(name: runtime.newReplicaName(prefix: "build"), image: image,
                               argv: [python, "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"],
                               limits: CgroupLimits(memoryLimit: options.memoryLimit, pidsMax: options.pidsMax))
        try hooks.admit()
        let runtime = self.runtime
        let replica = try await Blocking.run { try runtime.start(spec) }
        hooks.replicaStarted(replica, base.name)
        defer { hooks.replicaEnded(replica.name) }
        let collected = Mutex<[UInt8]>([])
        let done = AsyncStream<Void>.makeStream()
        replica.startOutput { chunk in
            switch chunk {
            case .stdout(let b)?: collected.withLock { if $0.count < 4096 { $0 += b } }
            case .stderr?: break
            case nil: done.continuation.finish()
            }
        }
        let status = await waitForExit(replica, timeout: .seconds(60))
        try? await Blocking.run { replica.cgroup.killAll() }
        for await _ in done.stream {}
        try? await Blocking.run { replica.teardown() }
        let version = String(decoding: collected.withLock { $0 }, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        guard case .status(.exited(0)) = status, !version.isEmpty else {
            throw HearthError.invalid("spec.python_version: could not run \(python) in base image \(baseRef) to read its version")
        }
        guard version == wanted || version.hasPrefix(wanted + ".") else {
            throw HearthError.invalid("spec.python_version: \(wanted) does not match base image \(baseRef), whose python3 is \(version); Hearth does not download Python: use a base image with Python \(wanted), or leave python_version out")
        }
    }
}

/// Where the base image keeps the tools a build runs (looked up in its
/// layers on the host, without starting anything).
struct Toolchain: Sendable, Equatable {
    /// `/usr/local/bin/uv` or `/usr/bin/uv`.
    var uv: String?
    /// python3 as the default PATH finds it first.
    var python: String?

    static func detect(layers: [String]) -> Toolchain {
        let view = LowerView(layersBottomFirst: layers)
        func find(_ paths: [String]) -> String? {
            paths.first { path in
                guard let st = view.lstat(LayerSource.components(path)) else { return false }
                let type = st.st_mode & S_IFMT
                return type == S_IFREG || type == S_IFLNK
            }
        }
        return Toolchain(uv: find(["/usr/local/bin/uv", "/usr/bin/uv"]),
                         python: find(["/usr/local/bin/python3", "/usr/bin/python3"]))
    }
}

/// A step's output: the last lines for the error message, and each line
/// as an `output` event when the build is verbose.
final class OutputTail: Sendable {
    private struct State {
        var partial: [UInt8] = []
        var lines: [String] = []
    }
    private let state = Mutex(State())
    private let keep: Int
    private let index: Int
    private let verbose: Bool
    private let emit: @Sendable (BuildEvent) -> Void
    /// A line longer than this is cut (a progress bar without newlines).
    static let maxLine = 4096

    init(keep: Int, index: Int, verbose: Bool, emit: @escaping @Sendable (BuildEvent) -> Void) {
        self.keep = keep
        self.index = index
        self.verbose = verbose
        self.emit = emit
    }

    func take(_ bytes: [UInt8]) {
        let complete: [String] = state.withLock { s in
            var out: [String] = []
            for byte in bytes {
                if byte == 10 || byte == 13 {
                    if !s.partial.isEmpty { out.append(String(decoding: s.partial, as: UTF8.self)) }
                    s.partial.removeAll(keepingCapacity: true)
                } else if s.partial.count < Self.maxLine {
                    s.partial.append(byte)
                }
            }
            s.lines += out
            if s.lines.count > keep { s.lines.removeFirst(s.lines.count - keep) }
            return out
        }
        if verbose { for line in complete { emit(.output(index: index, line: line)) } }
    }

    /// The last line, even without its newline.
    func finish() { take([10]) }

    /// `: <last lines>` for an error message, or nothing.
    func tailMessage() -> String {
        let lines = state.withLock { $0.lines }
        return lines.isEmpty ? " (no output)" : ":\n" + lines.joined(separator: "\n")
    }
}

/// One build per image name at a time; the others wait their turn.
actor NameLocks {
    private var held: Set<String> = []
    private var waiting: [String: [CheckedContinuation<Void, Never>]] = [:]

    func lock(_ name: String) async {
        if held.insert(name).inserted { return }
        await withCheckedContinuation { waiting[name, default: []].append($0) }
    }

    func unlock(_ name: String) {
        if var queue = waiting[name], !queue.isEmpty {
            let next = queue.removeFirst()
            waiting[name] = queue.isEmpty ? nil : queue
            next.resume()  // the lock passes to it
        } else {
            held.remove(name)
        }
    }
}
