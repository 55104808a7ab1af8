import CHearth
import Foundation
import Glibc
import HearthBuild
import HearthCore
import HearthImage
import HearthOS
import HearthSandbox
import Hummingbird
import Logging
import NIOCore
import Synchronization

/// The routes of the version, images and sandboxes (errors: ErrorMiddleware).
struct ImageAndSandboxRoutes: Sendable {
    let runtime: SandboxRuntime
    let images: ImageStore
    let registry: ReplicaRegistry
    let policy: PrivilegePolicy
    /// hearthd --userns: replicas run in a user namespace unless asked not to.
    var defaultUserNamespace = false
    let logger: Logger
    /// A sandbox without `memory` gets this limit (`--default-memory`); nil: none.
    var defaultMemory: Int64?
    /// Runs before an image is deleted: its spare replicas go first.
    var beforeImageRemove: @Sendable (String) async -> Void = { _ in }
    /// The environments (with their replicas) whose spec names an image
    /// (as resolved: NAME:TAG), so that deleting it is refused.
    var environmentsOnImage: @Sendable (String) async -> [String] = { _ in [] }
    /// Runs after an import: spares of what the name meant before go (their
    /// layers may just have been collected).
    /// When this hearthd (this image of the process: an upgrade keeps the
    /// pid) started, in seconds since the epoch.
    var started: Double = 0
    var afterImageImport: @Sendable (ImageSummary) async -> Void = { _ in }

    func register(on router: Router<HearthRequestContext>) {
        router.get("/v1/version") { _, context in
            try json(VersionInfo(version: Daemon.version, api: HearthDefaults.apiVersion,
                                 cgroup: "\(runtime.cgroups.version)", pid: getpid(), started: started,
                                 caller: await context.caller()))
        }
        router.get("/v1/images") { _, _ in
            let list = try await Blocking.run { try images.list() }
            return try json(list)
        }
        router.post("/v1/images/import") { request, context in
            // The archive's bytes, from a client that may not be root:
            // hearthd reads only what it was sent.
            if UploadSpool.isArchive(contentType: request.headers[.contentType]) {
                let name = request.uri.queryParameters.get("name")
                let spool = try await UploadSpool.receive(request.body, into: images.scratchDirectory)
                return importResponse(path: spool, name: name, spooled: true)
            }
            let body = try await request.body.collect(upTo: RequestLimits.body)
            let req = try decodeBody(ImageImportRequest.self, body, what: "image import request")
            // A path is opened by root, symlinks and all: only for a
            // peer that could open it itself.
            let peer = await context.peer()
            guard let peer, peer.uid == 0 else {
                let who = await context.caller()
                throw HearthError(.forbidden, "image import by path \(req.path.debugDescription): only root may have hearthd open a host path (it reads it as root); you are \(who). Send the archive's bytes instead: `hearth image import PATH` does so for a non-root user (POST /v1/images/import with Content-Type: application/x-tar)")
            }
            return importResponse(path: req.path, name: req.name, spooled: false)
        }
        router.delete("/v1/images/**") { _, context in
            let raw = context.parameters.getCatchAll().joined(separator: "/")
            let name = raw.removingPercentEncoding ?? raw
            let full = (try? ImageName.normalize(name, allowDigest: true)) ?? (name.contains(":") ? name : name + ":latest")
            let envs = await environmentsOnImage(full)
            if !envs.isEmpty {
                throw HearthError(.conflict, "image \"\(full)\" is in use by \(envs.joined(separator: "; ")); remove \(envs.count == 1 ? "that environment" : "those environments") first (hearth rm NAME)")
            }
            let users = registry.users(ofImage: full)
            if !users.isEmpty {
                throw HearthError(.conflict, "image \"\(full)\" is in use by \(users.count) running replica(s) (\(users.joined(separator: ", "))); remove it when they have finished")
            }
            await beforeImageRemove(full)
            try await Blocking.run { try images.remove(name: name) }
            return Response(status: .noContent)
        }
        router.post("/v1/sandboxes") { request, _ in
            let body = try await request.body.collect(upTo: RequestLimits.body)
            let req = try decodeBody(SandboxRequest.self, body, what: "sandbox request")
            return try await sandbox(req)
        }
    }

    // MARK: images

    /// `spooled`: `path` is an upload in the store's scratch directory,
    /// removed afterwards and named "the uploaded archive" in messages.
    private func importResponse(path: String, name: String?, spooled: Bool) -> Response {
        let (events, cont) = AsyncStream<ImageImportEvent>.makeStream()
        let images = self.images, imported = afterImageImport
        Blocking.queue.async {
            defer { if spooled { unlink(path) } }
            do {
                let summary: ImageSummary
                if !spooled && FS.isPlainRootfs(path) {
                    // A plain root filesystem: one layer written from it.
                    cont.yield(ImageImportEvent(event: "progress", layer: 1, layers: 1, bytes: 0, totalBytes: 0))
                    summary = try RootfsImport.importDirectory(path, name: name, store: images)
                } else {
                    summary = try images.importImage(path: path, name: name, progress: { p in
                        cont.yield(ImageImportEvent(event: "progress", layer: p.layer, layers: p.layers,
                                                    bytes: p.bytes, totalBytes: p.totalBytes))
                    }, plainRootfs: { unpacked in
                        // An archive of a root filesystem (docker export,
                        // a streamed directory): imported as its tree.
                        try RootfsImport.importDirectory(unpacked, name: name, store: images)
                    })
                }
                Task { await imported(summary) }
                cont.yield(ImageImportEvent(event: "done", image: summary))
            } catch {
                var e = HearthError.wrap(error)
                if spooled { e.message = e.message.replacingOccurrences(of: path, with: "the uploaded archive") }
                cont.yield(ImageImportEvent(event: "error", error: APIErrorBody.Detail(code: e.code.rawValue, message: e.message)))
            }
            cont.finish()
            // An import allocates and frees tens of MiB (layers, digests):
            // hand the freed pages back rather than keep them resident.
            MallocTuning.trim()
        }
        return Response(status: .ok, headers: [.contentType: "application/x-ndjson"], body: ResponseBody { writer in
            let encoder = JSONEncoder()
            for await e in events {
                var line = (try? encoder.encode(e)) ?? Data()
                line.append(10)
                try await writer.write(ByteBuffer(bytes: line))
            }
            try await writer.finish(nil)
        })
    }

    // MARK: sandboxes

    private func sandbox(_ req: SandboxRequest) async throws -> Response {
        let started = ContinuousClock.now
        guard !req.argv.isEmpty else { throw HearthError.invalid("argv: empty; give the command to run after --") }
        try policy.check(PrivilegePolicy.violations(of: req), subject: "sandbox")
        if let pids = req.pids, pids < 1 {
            throw HearthError.invalid("pids: \(pids) is not allowed; the process limit must be at least 1")
        }
        let memory = try req.memory.map { try Quantity.parseMemory($0, field: "memory") } ?? defaultMemory
        let cpu = try req.cpus.map { try Quantity.parseCPU($0, field: "cpus") }
        let storage = try req.ephemeralStorage.map { try Quantity.parseMemory($0, field: "ephemeralStorage") }
        let limits = CgroupLimits(cpuLimitMilli: cpu, cpuRequestMilli: cpu, memoryLimit: memory,
                                  pidsMax: req.pids ?? HearthDefaults.pidsMax)
        let network: NetworkMode
        switch req.network ?? "none" {
        case "none": network = .none
        case "host": network = .host
        case "egress": network = .egress
        case let other: throw HearthError.invalid("network: \"\(other)\" is not a network mode; use none, egress or host")
        }
        let profile: SeccompProfile?
        switch req.seccomp ?? "default" {
        case "default": profile = SeccompProfile.default
        case "unconfined": profile = nil
        case "profile":
            guard let text = req.seccompProfile else {
                throw HearthError.invalid("seccompProfile: missing; seccomp \"profile\" needs the profile's JSON")
            }
            profile = try SeccompProfile.parse(json: Data(text.utf8))
        case let other:
            throw HearthError.invalid("seccomp: \"\(other)\" is not allowed; use default, unconfined or a profile file")
        }
        for kv in req.env ?? [] where !kv.contains("=") || kv.hasPrefix("=") {
            throw HearthError.invalid("env: \"\(kv)\" is not KEY=VALUE")
        }
        try registry.admit()
        let imageRef = req.image ?? HearthDefaults.image
        let runtime = self.runtime, images = self.images
        let name = runtime.newReplicaName(prefix: "sbx")
        let (replica, imageName) = try await Blocking.run { () throws -> (RunningReplica, String) in
            let image = try images.resolve(imageRef)
            var spec = ReplicaSpec(name: name, image: image, argv: req.argv, limits: limits)
            spec.env = req.env ?? []
            spec.workdir = req.workdir
            spec.network = network
            spec.seccomp = profile
            spec.userNamespace = req.userNamespace ?? defaultUserNamespace
            spec.ephemeralStorageLimit = storage
            return (try runtime.start(spec), image.name)
        }
        registry.add(replica, image: imageName)
        let startMicros = (ContinuousClock.now - started).microseconds
        let registry = self.registry, logger = self.logger
        logger.debug("sandbox \(name) started in \(startMicros) µs: \(replica.startPhases.map(\.description).joined(separator: ", "))")

        // A client that hangs up early can leave the body below never run,
        // or stuck in its first write: nothing would then reap the replica.
        // A watcher does, once the command has exited and the body has not
        // handled the exit within 5 s (it does within microseconds when its
        // client is there).
        let bodyDone = Atomic<Bool>(false)
        Task.detached {
            _ = await replica.wait()
            for _ in 0..<50 {
                if bodyDone.load(ordering: .acquiring) { return }
                try? await Task.sleep(for: .milliseconds(100))
            }
            guard !bodyDone.load(ordering: .acquiring) else { return }
            logger.warning("sandbox \(name): exited, and its client is gone; removing it")
            _ = try? await Blocking.run { replica.teardown() }
            registry.remove(name)
        }

        return Response(status: .ok, headers: [.contentType: "application/vnd.hearth.stream"], body: ResponseBody { writer in
            defer {
                bodyDone.store(true, ordering: .releasing)
                registry.remove(name)
            }
            do {
                try await writer.write(frame(.event, SandboxEvent(event: "started", replica: name, startMicros: startMicros)))
                for await chunk in replica.output() {
                    switch chunk {
                    case .stdout(let b): try await writer.write(frame(.stdout, b))
                    case .stderr(let b): try await writer.write(frame(.stderr, b))
                    }
                }
                let status = await replica.wait()
                let oom = replica.cgroup.oomKilled()
                bodyDone.store(true, ordering: .releasing)
                var event = SandboxEvent(event: "exit", replica: name)
                switch status {
                case .exited(let c): event.exitCode = c
                case .signaled(let s): event.signal = s; event.exitCode = 128 + s
                case .unknown: event.exitCode = 255
                }
                if let eviction = replica.eviction {
                    event.ephemeralStorageExceeded = true
                    event.exitCode = 137
                    event.message = "killed: \(eviction.message)"
                } else if oom {
                    event.oomKilled = true
                    event.exitCode = 137
                    let limit = replica.memoryLimit.map(Quantity.formatMemory) ?? "none"
                    event.memoryLimit = limit
                    event.message = "killed: out of memory, limit \(limit)"
                }
                let exited = ContinuousClock.now
                _ = try? await Blocking.run { replica.teardown() }
                logger.debug("sandbox \(name): \(status), teardown \((ContinuousClock.now - exited).microseconds) µs")
                try await writer.write(frame(.event, event))
                try await writer.finish(nil)
            } catch {
                // The client went away: the replica goes too.
                replica.signal(SIGKILL)
                _ = await replica.wait()
                _ = try? await Blocking.run { replica.teardown() }
                throw error
            }
        })
    }

    // MARK: helpers

    private func frame(_ kind: StreamFrameKind, _ payload: [UInt8]) -> ByteBuffer {
        var buf = ByteBuffer()
        buf.reserveCapacity(5 + payload.count)
        buf.writeInteger(kind.rawValue)
        buf.writeInteger(UInt32(payload.count), endianness: .big)
        buf.writeBytes(payload)
        return buf
    }

    private func frame(_ kind: StreamFrameKind, _ event: SandboxEvent) -> ByteBuffer {
        frame(kind, Array((try? JSONEncoder().encode(event)) ?? Data()))
    }
}
