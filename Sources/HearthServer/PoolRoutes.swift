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
    let admission: AdmissionControl
    let code: CodeStore
    let secrets: SecretStore
    let logger: Logger

    static let maxSpecBytes = 1 << 20
    static let maxTaskBytes = 64 << 20

    func register(on router: Router<BasicRequestContext>) {
        router.post("/v1/environments") { request, _ in
            do {
                let body = try await request.body.collect(upTo: Self.maxSpecBytes)
                let source = request.uri.queryParameters["source"].map(String.init) ?? "request body"
                let results = try await admission.apply(text: String(buffer: body), source: source)
                return try json(results)
            } catch { return errorResponse(error) }
        }
        router.get("/v1/environments") { _, _ in
            try json(await pool.list())
        }
        router.get("/v1/environments/:name") { _, context in
            do {
                return try json(try await pool.status(context.parameters.get("name") ?? ""))
            } catch { return errorResponse(error) }
        }
        router.delete("/v1/environments/:name") { _, context in
            do {
                try await admission.remove(context.parameters.get("name") ?? "")
                return Response(status: .noContent)
            } catch { return errorResponse(error) }
        }
        router.post("/v1/environments/:name/tasks") { request, context in
            do {
                let env = context.parameters.get("name") ?? ""
                let body = try await request.body.collect(upTo: Self.maxTaskBytes)
                let req = try decodeBody(TaskRequest.self, body, what: "task request")
                let task = try await pool.submit(env, try submission(req.module, req.function, req.kwargs ?? .object([:]),
                                                                     req.bundle, req.timeout, req.identity))
                if req.wait == true {
                    return try json(await task.wait())
                }
                return try json(task.snapshot, status: .accepted)
            } catch { return errorResponse(error) }
        }
        router.post("/v1/environments/:name/batch") { request, context in
            do {
                let env = context.parameters.get("name") ?? ""
                let body = try await request.body.collect(upTo: Self.maxTaskBytes)
                let req = try decodeBody(BatchRequest.self, body, what: "batch request")
                var tasks: [TaskRecord] = []
                tasks.reserveCapacity(req.inputs.count)
                for (i, input) in req.inputs.enumerated() {
                    guard case .object = input else {
                        throw HearthError.invalid("inputs[\(i)]: each input is an object of keyword arguments")
                    }
                    tasks.append(try await pool.submit(env, try submission(req.module, req.function, input, req.bundle,
                                                                           req.timeout, req.identity)))
                }
                var results: [TaskSnapshot] = []
                results.reserveCapacity(tasks.count)
                for t in tasks { results.append(await t.wait()) }
                return try json(results)
            } catch { return errorResponse(error) }
        }
        router.get("/v1/tasks/:id") { _, context in
            do {
                return try json(try task(context).snapshot)
            } catch { return errorResponse(error) }
        }
        router.get("/v1/tasks/:id/logs") { _, context in
            do {
                let t = try task(context)
                let entries = t.logs().map { TaskLogs.Entry(stream: $0.stream.rawValue, text: String(decoding: $0.bytes, as: UTF8.self)) }
                return try json(TaskLogs(id: t.id, entries: entries, truncated: t.logsTruncated))
            } catch { return errorResponse(error) }
        }
        router.delete("/v1/tasks/:id") { _, context in
            do {
                let t = try await pool.cancel(context.parameters.get("id") ?? "")
                return try json(t.snapshot, status: .accepted)
            } catch { return errorResponse(error) }
        }
        // Lets a client skip the upload of a bundle the daemon already has.
        router.get("/v1/code/:sha") { _, context in
            do {
                let sha = context.parameters.get("sha") ?? ""
                return try json(try await Blocking.run { try code.bundle(sha) })
            } catch { return errorResponse(error) }
        }
        router.put("/v1/code/:sha") { request, context in
            do {
                let sha = context.parameters.get("sha") ?? ""
                let body = try await request.body.collect(upTo: CodeStore.maxUploadBytes)
                let bytes = Array(buffer: body)
                let bundle = try await Blocking.run { try code.store(sha256: sha, tarball: bytes) }
                return try json(bundle, status: .created)
            } catch { return errorResponse(error) }
        }
        router.get("/v1/secrets") { _, _ in
            do { return try json(try secrets.list()) } catch { return errorResponse(error) }
        }
        router.put("/v1/secrets/:key") { request, context in
            do {
                let key = context.parameters.get("key") ?? ""
                let body = try await request.body.collect(upTo: SecretStore.maxValueBytes + 1)
                try secrets.set(key: key, value: Array(buffer: body))
                logger.info("secret \(key) set")  // the name only, never the value
                return Response(status: .noContent)
            } catch { return errorResponse(error) }
        }
        router.delete("/v1/secrets/:key") { _, context in
            do {
                try secrets.remove(key: context.parameters.get("key") ?? "")
                return Response(status: .noContent)
            } catch { return errorResponse(error) }
        }
    }

    private func task(_ context: BasicRequestContext) throws -> TaskRecord {
        let id = context.parameters.get("id") ?? ""
        guard let t = pool.tasks.get(id) else {
            throw HearthError(.notFound, "task \(id) not found (finished tasks are kept for the last 10,000)")
        }
        return t
    }

    private func submission(_ module: String, _ function: String, _ kwargs: JSONValue, _ bundle: String?,
                            _ timeout: Double?, _ identity: String?) throws -> Pool.Submission {
        guard isDottedName(module) else {
            throw HearthError.invalid("module: \"\(module)\" is not a Python module name (dotted identifiers)")
        }
        guard isDottedName(function) else {
            throw HearthError.invalid("function: \"\(function)\" is not a Python name")
        }
        guard case .object = kwargs else { throw HearthError.invalid("kwargs: must be an object of keyword arguments") }
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
