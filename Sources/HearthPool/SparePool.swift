import Foundation
import HearthCore
import HearthImage
import HearthSandbox
import Synchronization

/// Pre-started replicas ("spares"): complete replicas (overlay rootfs,
/// cgroup, namespaces, seccomp, hearth-init, the worker up and `ready`) that
/// belong to no environment. A new environment whose first replica would
/// otherwise be built from scratch adopts one instead: its limits are
/// written into the spare's cgroup and its env and packages go to the worker
/// in an `adopt` frame, so the first task pays for its module and nothing
/// else. A replacement is built in the background.
///
/// What is fixed when a replica is built is the key: the image (by name and
/// config digest), the network mode, the seccomp profile and the
/// capabilities. What an environment could need at build time rules it out
/// (`ineligibility`): secrets (bind-mounted at build), variables the
/// interpreter reads at start-up, limits below what an idle worker uses.
///
/// Keys are learned from use: once an eligible environment has started a
/// replica, `perKey` spares of its key are kept, for at most `maxKeys` keys
/// (least recently used dropped) and until unused for `ttl`. A spare serves
/// one environment at most; it never comes back here.
public final class SparePool: Sendable {
    public struct Key: Hashable, Sendable {
        var image: String
        /// The config digest: a re-import under the same name is another key.
        var imageID: String
        var network: NetworkMode
        var seccomp: SeccompProfile?
        var capabilities: CapabilitySet
        var userNamespace: Bool
        /// Modules its spares import before `ready` (the environment's `preload`).
        var preload: [String]
    }

    struct Entry {
        /// The neutral config spares of this key are built from.
        var config: PoolConfig
        var ready: [WarmReplica] = []
        var starting = 0
        var lastUsed = ContinuousClock.now
        var failures = 0
        var nextBuild = ContinuousClock.now
        var lastError: String?
        /// Named by `hearthd --spare-image`: kept without TTL or eviction.
        var pinned = false
    }

    struct State {
        var entries: [Key: Entry] = [:]
        var adopted = 0
        /// Builds and teardowns in flight: shutdown and discard wait for them.
        var busy = 0
        var stopped = false
    }

    public static let maxKeys = 4
    /// An idle worker uses about 12 MiB; a lower limit could not be written
    /// into a running spare's cgroup, so such an environment builds its own.
    public static let minMemoryLimit: Int64 = 64 << 20
    public static let minPids: Int64 = 64
    /// Read by the interpreter (or the dynamic loader) before any task
    /// runs: setting them later would not do what the user meant.
    static let startupVariables: Set<String> = ["PATH", "HOME", "TZ", "LANG", "LANGUAGE"]
    static let startupPrefixes = ["PYTHON", "LD_", "LC_", "HEARTH_"]

    public let perKey: Int
    public let ttl: Duration
    private let ctx: PoolContext
    private let state = Mutex(State())
    /// Notified when a build or teardown in flight ends (`busy` drops): what shutdown waits for.
    private let settled = ChangeSignal()
    private let loop = Mutex<Task<Void, Never>?>(nil)

    public init(context: PoolContext, perKey: Int, ttl: Duration) {
        ctx = context
        self.perKey = max(0, perKey)
        self.ttl = ttl
    }

    /// Why `config` cannot take a spare, or nil when it can.
    public static func ineligibility(_ config: PoolConfig) -> String? {
        if !config.secrets.isEmpty { return "it requests secrets, which are mounted when a replica is built" }
        if !config.mounts.isEmpty { return "it mounts host directories, which are mounted when a replica is built" }
        if !config.devices.isEmpty { return "it asks for devices, which are made when a replica is built" }
        if config.gpus > 0 { return "it asks for GPUs, which a replica takes when it is built" }
        for key in config.env.keys.sorted()
        where startupVariables.contains(key) || startupPrefixes.contains(where: { key.hasPrefix($0) }) {
            return "its env sets \(key), which is read when the interpreter starts"
        }
        if let m = config.limits.memoryLimit, m < minMemoryLimit {
            return "its memory limit is below \(Quantity.formatMemory(minMemoryLimit))"
        }
        if config.limits.pidsMax > 0 && config.limits.pidsMax < minPids {
            return "its pids limit is below \(minPids)"
        }
        return nil
    }

    /// `config`'s key, or nil when spares are off, it is not eligible or
    /// its image is gone. Resolves the image (file I/O, off the pool): a
    /// replica start computes it once, for `take` and `learn`.
    public func key(for config: PoolConfig) async -> Key? {
        guard perKey > 0, Self.ineligibility(config) == nil else { return nil }
        return try? await Blocking.run {
            let image = try self.ctx.launcher.imageIdentity(config.image)
            return Key(image: image.name, imageID: image.id, network: config.network, seccomp: config.seccomp,
                       capabilities: config.capabilities, userNamespace: config.userNamespace, preload: config.preload)
        }
    }

    /// Starts the TTL sweep.
    public func start() {
        guard perKey > 0 else { return }
        let every = Duration.milliseconds(max(100, min(5_000, Int(ttl.milliseconds / 4))))
        loop.withLock { l in
            l = Task { [weak self] in
                while !Task.isCancelled {
                    try? await Task.sleep(for: every)
                    self?.sweep()
                }
            }
        }
    }

    // MARK: adoption

    /// A ready spare of `key`, now out of the pool, or nil. A replacement
    /// is built in the background.
    func take(_ key: Key) -> WarmReplica? {
        let (spare, dead): (WarmReplica?, [WarmReplica]) = state.withLock { s in
            guard !s.stopped, var e = s.entries[key] else { return (nil, []) }
            e.lastUsed = .now
            var found: WarmReplica?
            var dead: [WarmReplica] = []
            // Oldest first.
            while !e.ready.isEmpty {
                let c = e.ready.removeFirst()
                if c.usable { found = c; break }
                dead.append(c)
            }
            s.entries[key] = e
            if found != nil { s.adopted += 1 }
            return (found, dead)
        }
        // Adopted: its environment's share of the ledger holds it now.
        if spare != nil { ctx.memory?.releaseSpare() }
        for r in dead { retire(r) }
        if spare != nil || !dead.isEmpty { refill(key, after: .milliseconds(250)) }
        return spare
    }

    /// An eligible environment (`config`, of `key`) started a replica, or
    /// was restored at start-up: keep spares of its key. `pinned`
    /// (`--spare-image`): keep them regardless of use; such keys do not
    /// count towards `maxKeys`.
    public func learn(_ key: Key, config: PoolConfig, pinned: Bool = false) {
        let evicted: [WarmReplica] = state.withLock { s in
            guard !s.stopped else { return [] }
            if s.entries[key] != nil {
                s.entries[key]?.lastUsed = .now
                if pinned { s.entries[key]?.pinned = true }
                return []
            }
            var entry = Entry(config: neutral(config))
            entry.pinned = pinned
            s.entries[key] = entry
            var out: [WarmReplica] = []
            while s.entries.values.filter({ !$0.pinned }).count > Self.maxKeys,
                  let oldest = s.entries.filter({ $0.key != key && !$0.value.pinned })
                      .min(by: { $0.value.lastUsed < $1.value.lastUsed }) {
                out += oldest.value.ready
                s.entries.removeValue(forKey: oldest.key)
            }
            return out
        }
        for r in evicted { retire(r) }
        // Off the path of the task that just got its replica.
        refill(key, after: .milliseconds(250))
    }

    /// The config spares of a key are built from: the environment's image
    /// and isolation, nothing of its own (no env, no limits but pids.max and
    /// the daemon's default memory limit, so a spare is never unbounded
    /// while it waits; adoption writes the environment's own).
    private func neutral(_ c: PoolConfig) -> PoolConfig {
        var spare = PoolConfig(name: "spare", identity: "", image: c.image, env: [:],
                               limits: CgroupLimits(memoryLimit: ctx.defaultMemory), replicaCount: 1,
                   ttl: ttl, secrets: [], network: c.network, seccomp: c.seccomp, capabilities: c.capabilities,
                   timeout: nil, maxTasksPerReplica: nil, maxQueue: 1, packages: [])
        spare.userNamespace = c.userNamespace
        spare.preload = c.preload
        return spare
    }

    // MARK: building and retiring

    private func refill(_ key: Key, after delay: Duration = .zero) {
        if delay > .zero {
            Task { [weak self] in
                try? await Task.sleep(for: delay)
                self?.refill(key)
            }
            return
        }
        let (config, n, wait): (PoolConfig?, Int, Duration?) = state.withLock { s in
            guard !s.stopped, var e = s.entries[key] else { return (nil, 0, nil) }
            let now = ContinuousClock.now
            if now < e.nextBuild { return (nil, 0, e.nextBuild - now) }
            var n = 0
            // Each spare holds its memory limit in the ledger admission
            // reads; one that does not fit is not built (the sweep tries
            // again once room is freed).
            while n < perKey - e.ready.count - e.starting, ctx.memory?.reserveSpare() ?? true { n += 1 }
            if n < perKey - e.ready.count - e.starting, let memory = ctx.memory {
                e.lastError = memory.noRoomMessage()
            }
            e.starting += n
            s.busy += n
            s.entries[key] = e
            return (e.config, n, nil)
        }
        if let wait {
            refill(key, after: wait)
            return
        }
        guard let config else { return }
        for _ in 0..<n { Task { await self.buildOne(key, config) } }
    }

    private func buildOne(_ key: Key, _ config: PoolConfig) async {
        do {
            let r = try await ctx.launcher.build(config, spare: true)
            let keep: Bool = state.withLock { s in
                guard var e = s.entries[key] else { return false }
                e.starting = max(0, e.starting - 1)
                e.failures = 0
                e.lastError = nil
                guard !s.stopped else { s.entries[key] = e; return false }
                e.ready.append(r)
                s.entries[key] = e
                return true
            }
            if keep {
                watchExit(r, key)
            } else {
                _ = try? await Blocking.run { r.teardown() }
                ctx.memory?.releaseSpare()
            }
        } catch {
            ctx.memory?.releaseSpare()
            let message = HearthError.wrap(error).message
            let delay: Duration = state.withLock { s in
                guard var e = s.entries[key] else { return .zero }
                e.starting = max(0, e.starting - 1)
                e.failures += 1
                e.lastError = message
                // A broken image never spins.
                let d = Backoff.delay(afterFailures: e.failures)
                e.nextBuild = .now + d
                s.entries[key] = e
                return d
            }
            ctx.logger.warning("spare replica for \(key.image) failed to start (next try in \(delay.seconds) s): \(message)")
            if delay > .zero { refill(key) }
        }
        state.withLock { $0.busy -= 1 }
        settled.notify()
    }

    /// A spare that dies while waiting is removed and replaced (after a
    /// backoff, so a worker that keeps dying does not spin).
    private func watchExit(_ r: WarmReplica, _ key: Key) {
        Task {
            _ = await r.running.wait()
            let wasSpare: Bool = state.withLock { s in
                guard var e = s.entries[key], let i = e.ready.firstIndex(where: { $0 === r }) else { return false }
                e.ready.remove(at: i)
                e.failures += 1
                let d = Backoff.delay(afterFailures: e.failures)
                e.nextBuild = .now + d
                e.lastError = "spare \(r.name) exited while waiting"
                s.entries[key] = e
                return true
            }
            guard wasSpare else { return }
            _ = r.markExited()
            ctx.logger.warning("spare replica \(r.name) exited while waiting; replacing it")
            retire(r)
            refill(key)
        }
    }

    /// Tears down a spare that left `ready` without being adopted.
    private func retire(_ r: WarmReplica) {
        state.withLock { $0.busy += 1 }
        Task {
            _ = try? await Blocking.run { r.teardown() }
            self.ctx.memory?.releaseSpare()
            self.state.withLock { $0.busy -= 1 }
            self.settled.notify()
        }
    }

    /// Keys unused for the TTL go, with their spares; keys short of
    /// spares (there was no room in the memory ledger) try again.
    private func sweep() {
        let now = ContinuousClock.now
        let (gone, short): ([WarmReplica], [Key]) = state.withLock { s in
            var out: [WarmReplica] = []
            for (k, e) in s.entries where !e.pinned && now - e.lastUsed >= ttl {
                out += e.ready
                s.entries.removeValue(forKey: k)
            }
            let short = s.entries.filter { $0.value.ready.count + $0.value.starting < perKey && now >= $0.value.nextBuild }
                .map(\.key)
            return (out, short)
        }
        for r in gone {
            ctx.logger.info("spare replica \(r.name) unused for \(Int(ttl.seconds)) s; removing it")
            retire(r)
        }
        for key in short { refill(key) }
    }

    /// Removes the spares of an image (before the image is deleted, or
    /// after a re-import gave the name other content: `keeping` is the new
    /// config digest, whose spares stay) and waits until they are gone.
    public func discard(image name: String, keeping id: String? = nil) async {
        let gone: [WarmReplica] = state.withLock { s in
            var out: [WarmReplica] = []
            for (k, e) in s.entries where k.image == name && k.imageID != id {
                out += e.ready
                s.entries.removeValue(forKey: k)
            }
            return out
        }
        for r in gone { retire(r) }
        await settle(deadline: .seconds(30))
    }

    /// Stops building and removes every spare.
    public func shutdown() async {
        loop.withLock { $0?.cancel() }
        let gone: [WarmReplica] = state.withLock { s in
            s.stopped = true
            let out = s.entries.values.flatMap(\.ready)
            for k in Array(s.entries.keys) { s.entries[k]?.ready = [] }
            return out
        }
        for r in gone { retire(r) }
        await settle(deadline: .seconds(30))
    }

    /// Waits for builds and teardowns in flight (a build finishing for a
    /// dropped key tears its replica down itself).
    private func settle(deadline: Duration) async {
        await settled.wait(until: ContinuousClock.now + deadline) { state.withLock { $0.busy == 0 } }
    }

    public func status() -> SparesStatus {
        state.withLock { s in
            let keys = s.entries.sorted {
                ($0.key.image, $0.key.network.rawValue, $0.key.preload.joined(separator: " "))
                    < ($1.key.image, $1.key.network.rawValue, $1.key.preload.joined(separator: " "))
            }
                .map { k, e in
                    SparesStatus.KeyStatus(image: k.image, network: k.network.rawValue, ready: e.ready.count,
                                           starting: e.starting, replicas: e.ready.map(\.name), lastError: e.lastError,
                                           pinned: e.pinned, preload: k.preload.isEmpty ? nil : k.preload)
                }
            return SparesStatus(enabled: perKey > 0, perKey: perKey, ttlSeconds: Int(ttl.seconds), keys: keys,
                                adopted: s.adopted)
        }
    }
}
