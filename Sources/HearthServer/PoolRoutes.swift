import Foundation
import Glibc
import HearthCore
import HearthPool
import HearthSandbox
import Hummingbird
import Logging
import NIOCore

/// Environments, tasks, code bundles and secrets.
struct PoolRoutes: Sendable {
    let pool: Pool
    let admission: EnvironmentAdmission
    let code: CodeStore
    let secrets: SecretStore
    let logger: Logger
    /// "v1" or "v2", for `GET /v1/info`.
    var cgroupVersion = ""

    static let maxSpecBytes = 1 << 20
    static let maxTaskBytes = 64 << 20

    func register(on router: Router<HearthRequestContext>) {
        router.post("/v1/environments") { request, _ in
            let body = try await request.body.collect(upTo: Self.maxSpecBytes)
            let source = request.uri.queryParameters["source"].map(String.init) ?? "request body"
            let text = String(buffer: body)
            if request.headers[.accept]?.contains("application/x-ndjson") == true {
                // Documents that do not parse are a 400, before the stream.
                _ = try EnvironmentSpec.parseDocuments(text, source: source)
                return applyStream(text: text, source: source)
            }
            let results = try await admission.apply(text: text, source: source)
            return try json(results)
        }
        router.get("/v1/environments") { _, _ in
            try json(await pool.list())
        }
        router.get("/v1/environments/:name") { _, context in
            return try json(try await pool.status(context.parameters.get("name") ?? ""))
        }
        router.delete("/v1/environments/:name") { _, context in
            try await admission.remove(context.parameters.get("name") ?? "")
            return Response(status: .noContent)
        }
        // The warm path: JSON in and out by hand (FastJSON), no extra hop.
        // (Usually answered before it gets here: see TaskFastPath.)
        router.post("/v1/environments/:name/tasks") { request, context in
            let env = context.parameters.get("name") ?? ""
            let body = try await request.body.collect(upTo: Self.maxTaskBytes)
            let (status, bytes) = await withCheckedContinuation { c in
                postTask(environment: env, body: body) { c.resume(returning: ($0, $1)) }
            }
            return jsonBytes(bytes, status: status)
        }
        router.post("/v1/environments/:name/batch") { request, context in
            let env = context.parameters.get("name") ?? ""
            let body = try await request.body.collect(upTo: Self.maxTaskBytes)
            let req = try parseBatchRequest(body)
            // A client id names the batch: its tasks are ID-0, ID-1, … so a
            // client that lost the connection asks for them instead of
            // sending the batch again (all or none are accepted).
            if let id = req.id {
                try Self.checkClientID(id)
                let last = "\(id)-\(max(0, req.inputs.count - 1))"
                guard last.utf8.count <= 128 else {
                    throw HearthError.invalid("id: \"\(id.prefix(200))\" names a batch of \(req.inputs.count) tasks, \(id)-0 … \(last), and \(last) is over 128 characters; give a shorter id")
                }
            }
            var subs: [Pool.Submission] = []
            subs.reserveCapacity(req.inputs.count)
            for (i, input) in req.inputs.enumerated() {
                guard FastJSON.isObject(input) else {
                    throw HearthError.invalid("inputs[\(i)]: each input is an object of keyword arguments")
                }
                var sub = try submission(req.module, req.function, input, req.bundle, req.timeout, req.identity)
                sub.pinned = true
                if let id = req.id { sub.id = "\(id)-\(i)" }
                subs.append(sub)
            }
            // All at once: one journal write, one scheduler pass, one wake-up when all are done.
            let tasks = try pool.submitMany(env, subs)
            await TaskRecord.waitAll(tasks)
            var w = JSONWriter(capacity: 256 * tasks.count + 2)
            w.bytes.append(0x5b)
            for (i, t) in tasks.enumerated() {
                if i > 0 { w.bytes.append(0x2c) }
                w.bytes += t.jsonBytes
                // Delivered: now the result budget may spill or drop it.
                pool.tasks.release(t)
            }
            w.bytes.append(0x5d)
            return jsonBytes(w.bytes)
        }
        router.get("/v1/tasks/:id") { request, context in
            switch try await task(context) {
            case .live(let t):
                // ?wait=S: answer when the task ends, or after S seconds as it is then.
                if let text = request.uri.queryParameters.get("wait") {
                    guard let s = Double(text), s >= 0, s <= 60 else {
                        throw HearthError.invalid("wait: \"\(text.prefix(40))\" is not a number of seconds from 0 to 60")
                    }
                    await t.waitUntilFinal(timeout: .milliseconds(Int64(s * 1000)))
                }
                return jsonBytes(try await t.fullJSON())
            case .archived(let a): return jsonBytes(try a.fullJSON())
            }
        }
        router.get("/v1/tasks/:id/logs") { _, context in
            let id = context.parameters.get("id") ?? ""
            let (logs, truncated): ([LogBuffer.Entry], Bool)
            switch try await task(context) {
            case .live(let t): (logs, truncated) = try await t.fullLogs()
            case .archived(let a): (logs, truncated) = try a.fullLogs()
            }
            let entries = logs.map { TaskLogs.Entry(stream: $0.stream.rawValue, text: String(decoding: $0.bytes, as: UTF8.self)) }
            return try json(TaskLogs(id: id, entries: entries, truncated: truncated))
        }
        router.delete("/v1/tasks/:id") { _, context in
            switch try await task(context) {
            case .live(let t):
                let t = try await pool.cancel(t.id)
                return jsonBytes(t.jsonBytes, status: .accepted)
            case .archived(let a):
                // Finished before: nothing to cancel, as for a finished task in memory.
                return jsonBytes(a.snapshot.jsonBytes, status: .accepted)
            }
        }
        // Lets a client skip the upload of a bundle the daemon already has.
        router.get("/v1/code/:sha") { _, context in
            let sha = context.parameters.get("sha") ?? ""
            return try json(try await Blocking.run { try code.bundle(sha) })
        }
        router.put("/v1/code/:sha") { request, context in
            let sha = context.parameters.get("sha") ?? ""
            let body = try await request.body.collect(upTo: CodeStore.maxUploadBytes)
            let bytes = Array(buffer: body)
            let bundle = try await Blocking.run { try code.store(sha256: sha, tarball: bytes) }
            return try json(bundle, status: .created)
        }
        router.get("/v1/info") { _, context in
            let u = await admission.usage()
            var host = [CChar](repeating: 0, count: 256)
            let hostname = gethostname(&host, host.count) == 0
                ? String(decoding: host.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self) : ""
            return try json(NodeInfo(hostname: hostname, version: Daemon.version, pid: getpid(), cgroup: cgroupVersion,
                                     capacity: u.capacity, admitted: u.admitted, environments: u.environments,
                                     replicas: u.replicas, caller: await context.caller()))
        }
        router.get("/v1/devices") { _, _ in
            let status = try await Blocking.run { admission.devices() }
            return try json(status)
        }
        router.get("/v1/spares") { _, _ in
            let status = pool.spares?.status()
                ?? SparesStatus(enabled: false, perKey: 0, ttlSeconds: 0, keys: [], adopted: 0)
            return try json(status)
        }
        router.get("/v1/secrets") { _, _ in
            try json(try secrets.list())
        }
        router.put("/v1/secrets/:key") { request, context in
            let key = context.parameters.get("key") ?? ""
            let body = try await request.body.collect(upTo: SecretStore.maxValueBytes + 1)
            try secrets.set(key: key, value: Array(buffer: body))
            logger.info("secret \(key) set")  // the name only, never the value
            return Response(status: .noContent)
        }
        router.delete("/v1/secrets/:key") { _, context in
            try secrets.remove(key: context.parameters.get("key") ?? "")
            return Response(status: .noContent)
        }
    }

    /// `POST /v1/environments` for a client that accepts NDJSON: the
    /// progress of the pulls the apply makes, then `applied` with the
    /// results, or `error`.
    private func applyStream(text: String, source: String) -> Response {
        let (events, cont) = AsyncStream<ApplyEvent>.makeStream()
        let admission = self.admission
        Task {
            do {
                let results = try await admission.apply(text: text, source: source) { event in
                    cont.yield(ApplyEvent(event: "pull", pull: event))
                }
                cont.yield(ApplyEvent(event: "applied", results: results))
            } catch {
                let e = HearthError.wrap(error)
                cont.yield(ApplyEvent(event: "error", error: APIErrorBody.Detail(code: e.code.rawValue, message: e.message)))
            }
            cont.finish()
        }
        return ndjsonResponse(events)
    }

    /// `POST /v1/environments/{env}/tasks`: submits the task and calls
    /// `reply` once with the status and JSON body: at once, or, with
    /// `wait: true`, on the thread that finishes the task.
    func postTask(environment env: String, body: ByteBuffer,
                  reply: @escaping @Sendable (HTTPResponse.Status, [UInt8]) -> Void) {
        let task: TaskRecord, wait: Bool
        do {
            let req = try parseTaskRequest(body)
            var sub = try submission(req.module, req.function, req.kwargs ?? Array("{}".utf8), req.bundle, req.timeout,
                                     req.identity)
            if let id = req.id {
                try Self.checkClientID(id)
                sub.id = id
            }
            wait = req.wait == true
            sub.pinned = wait
            task = try pool.submitMany(env, [sub])[0]
        } catch {
            let (status, bytes) = errorBody(error)
            reply(status, bytes)
            return
        }
        if wait {
            // Pinned until delivered: the result budget cannot spill or drop it first.
            let tasks = pool.tasks
            task.whenFinished {
                reply(.ok, task.jsonBytes)
                tasks.release(task)
            }
        } else {
            reply(.accepted, task.jsonBytes)
        }
    }

    /// A client's task id: a safe file name, never one of the daemon's own
    /// (`t-…`), so the two cannot collide.
    static func checkClientID(_ id: String) throws {
        let rule = "give 1 to 128 letters, digits, '.', '_', ':' or '-', starting with a letter or digit and not with \"t-\" (the daemon's own ids)"
        let u = Array(id.utf8)
        func ok(_ c: UInt8) -> Bool {
            (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a) || c == 0x2e || c == 0x5f || c == 0x3a || c == 0x2d
        }
        guard (1...128).contains(u.count), let f = u.first, ok(f), f != 0x2e, f != 0x5f, f != 0x3a, f != 0x2d,
              u.allSatisfy(ok), !id.hasPrefix("t-") else {
            throw HearthError.invalid("id: \"\(id.prefix(200))\" is not a task id; \(rule)")
        }
    }

    enum FoundTask {
        case live(TaskRecord)
        case archived(ArchivedTask)
    }

    /// The task in memory, or else from the task store.
    private func task(_ context: HearthRequestContext) async throws -> FoundTask {
        let id = context.parameters.get("id") ?? ""
        if let t = pool.tasks.get(id) { return .live(t) }
        if let a = try await pool.tasks.archived(id) { return .archived(a) }
        throw HearthError(.notFound, "task \(id) not found (\(pool.tasks.notFoundRule))")
    }

    private func submission(_ module: String, _ function: String, _ kwargs: [UInt8], _ bundle: String?,
                            _ timeout: Double?, _ identity: String?) throws -> Pool.Submission {
        guard isDottedName(module) else {
            throw HearthError.invalid("module: \"\(module)\" is not a Python module name (dotted identifiers)")
        }
        guard isDottedName(function) else {
            throw HearthError.invalid("function: \"\(function)\" is not a Python name")
        }
        guard FastJSON.isObject(kwargs) else { throw HearthError.invalid("kwargs: must be an object of keyword arguments") }
        if let t = timeout, !(t > 0 && t <= 86400 * 7) {
            throw HearthError.invalid("timeout: \(t) is out of range; give seconds between 0 and 604800")
        }
        return Pool.Submission(module: module, function: function, kwargs: kwargs, bundle: bundle,
                               timeout: timeout.map { .milliseconds(Int64($0 * 1000)) }, identity: identity)
    }

    private func isDottedName(_ s: String) -> Bool {
        !s.isEmpty && s.split(separator: ".", omittingEmptySubsequences: false).allSatisfy { part in
            guard let f = part.first, f == "_" || (f.isASCII && f.isLetter) else { return false }
            return part.allSatisfy { $0 == "_" || ($0.isASCII && ($0.isLetter || $0.isNumber)) }
        }
    }
}

/// 410 `result_expired`: the error, and what is still known of the task
/// (state, timing, the error's summary) under `task`.
func expiredResponse(_ e: ResultExpired) -> Response {
    var w = JSONWriter(capacity: 512)
    w.bytes += Array("{\"error\":{\"code\":".utf8)
    w.string(HearthError.Code.resultExpired.rawValue)
    w.bytes += Array(",\"message\":".utf8)
    w.string(e.message)
    w.bytes += Array("},\"task\":".utf8)
    e.task.writeJSON(&w)
    w.bytes.append(0x7d)
    return jsonBytes(w.bytes, status: .gone)
}

func jsonBytes(_ bytes: [UInt8], status: HTTPResponse.Status = .ok) -> Response {
    Response(status: status, headers: [.contentType: "application/json"],
             body: ResponseBody(byteBuffer: ByteBuffer(bytes: bytes)))
}

/// The fields of a request object, with JSONDecoder's rules: a missing or
/// null optional field is nil, a wrong type is refused with its name.
private struct Fields {
    let o: [String: JSONValue]
    let what: String

    func wrongType(_ key: String, _ want: String) -> HearthError {
        HearthError.invalid("\(what): field \"\(key)\" has the wrong type: expected \(want)")
    }

    func string(_ key: String) throws -> String {
        guard let v = o[key], v != .null else { throw HearthError.invalid("\(what): field \"\(key)\" is required") }
        guard case .string(let s) = v else { throw wrongType(key, "a string") }
        return s
    }

    func optString(_ key: String) throws -> String? {
        guard let v = o[key], v != .null else { return nil }
        guard case .string(let s) = v else { throw wrongType(key, "a string") }
        return s
    }

    func optDouble(_ key: String) throws -> Double? {
        switch o[key] {
        case nil, .null?: return nil
        case .int(let i)?: return Double(i)
        case .double(let d)?: return d
        default: throw wrongType(key, "a number")
        }
    }

    func optBool(_ key: String) throws -> Bool? {
        switch o[key] {
        case nil, .null?: return nil
        case .bool(let b)?: return b
        default: throw wrongType(key, "a boolean")
        }
    }
}

/// A task request with its kwargs kept as the client wrote them.
struct RawTaskRequest {
    var module: String
    var function: String
    /// A validated JSON value (checked to be an object by `submission`); nil when absent or null.
    var kwargs: [UInt8]?
    var bundle: String?
    var timeout: Double?
    var wait: Bool?
    var identity: String?
    /// The client's own id for the task (idempotent resubmission).
    var id: String?
}

/// A batch request with each input kept as the client wrote it.
struct RawBatchRequest {
    var module: String
    var function: String
    var inputs: [[UInt8]]
    var bundle: String?
    var timeout: Double?
    var identity: String?
    /// The client's id for the batch; its tasks are `id-0`, `id-1`, ….
    var id: String?
}

/// The body as one JSON object whose `rawKey` member stays bytes.
private func parseRequest(_ body: ByteBuffer, rawKey: String, what: String) throws -> (Fields, [UInt8]?) {
    do {
        let (o, raw) = try body.withUnsafeReadableBytes { buf in try FastJSON.parseRequest(buf, rawKey: rawKey) }
        return (Fields(o: o, what: what), raw.flatMap { FastJSON.isNull($0) ? nil : $0 })
    } catch {
        throw HearthError.invalid("\(what): body is not valid JSON: \(error)")
    }
}

func parseTaskRequest(_ body: ByteBuffer) throws -> RawTaskRequest {
    let (f, kwargs) = try parseRequest(body, rawKey: "kwargs", what: "task request")
    return RawTaskRequest(module: try f.string("module"), function: try f.string("function"), kwargs: kwargs,
                          bundle: try f.optString("bundle"), timeout: try f.optDouble("timeout"),
                          wait: try f.optBool("wait"), identity: try f.optString("identity"), id: try f.optString("id"))
}

func parseBatchRequest(_ body: ByteBuffer) throws -> RawBatchRequest {
    let (f, raw) = try parseRequest(body, rawKey: "inputs", what: "batch request")
    guard let raw else { throw HearthError.invalid("batch request: field \"inputs\" is required") }
    guard raw.first == UInt8(ascii: "[") else { throw f.wrongType("inputs", "an array") }
    let inputs: [[UInt8]]
    do { inputs = try FastJSON.rawElements(raw) } catch {
        throw HearthError.invalid("batch request: body is not valid JSON: \(error)")
    }
    return RawBatchRequest(module: try f.string("module"), function: try f.string("function"), inputs: inputs,
                           bundle: try f.optString("bundle"), timeout: try f.optDouble("timeout"),
                           identity: try f.optString("identity"), id: try f.optString("id"))
}

func decodeBody<T: Decodable>(_ type: T.Type, _ body: ByteBuffer, what: String) throws -> T {
    do {
        return try JSONDecoder().decode(T.self, from: Data(buffer: body))
    } catch let DecodingError.keyNotFound(key, _) {
        throw HearthError.invalid("\(what): field \"\(key.stringValue)\" is required")
    } catch let DecodingError.typeMismatch(_, ctx) {
        let path = ctx.codingPath.map(\.stringValue).joined(separator: ".")
        throw HearthError.invalid("\(what): field \"\(path)\" has the wrong type: \(ctx.debugDescription)")
    } catch {
        throw HearthError.invalid("\(what): body is not valid JSON: \(error)")
    }
}
