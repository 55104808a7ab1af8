import Foundation
import HearthCore
import HearthImage
import HearthRegistry
import Hummingbird
import Logging
import NIOCore

/// Pulls from registries and the credentials they use.
struct RegistryRoutes: Sendable {
    /// Pulls `reference` (stored under `name`, else its own), reporting
    /// progress: `Puller.pull` plus what the daemon does after a pull.
    let pull: @Sendable (_ reference: String, _ name: String?, _ progress: @escaping @Sendable (ImagePullEvent) -> Void)
        async throws -> ImageSummary
    let puller: Puller
    let logger: Logger

    func register(on router: Router<HearthRequestContext>) {
        router.post("/v1/images/pull") { request, _ in
            let body = try await request.body.collect(upTo: RequestLimits.body)
            let req = try decodeBody(ImagePullRequest.self, body, what: "image pull request")
            // Refused before the stream starts: a bad reference or name is a 400.
            let ref = try ImageReference.parse(req.reference)
            if let name = req.name { _ = try ImageName.normalize(name) }
            return pullResponse(req, reference: ref)
        }
        router.post("/v1/registries/login") { request, _ in
            let body = try await request.body.collect(upTo: 64 << 10)
            let req = try decodeBody(RegistryLoginRequest.self, body, what: "login request")
            let result = try await puller.login(registry: req.registry, username: req.username, password: req.password)
            // The registry and the user; never the password.
            logger.info("registry \(result.registry): credentials of \(req.username) saved")
            return try json(result)
        }
        router.post("/v1/registries/logout") { request, _ in
            let body = try await request.body.collect(upTo: 64 << 10)
            let req = try decodeBody(RegistryLogoutRequest.self, body, what: "logout request")
            let result = try puller.logout(registry: req.registry)
            logger.info("registry \(result.registry): \(result.message)")
            return try json(result)
        }
        router.get("/v1/registries") { _, _ in
            let saved = try puller.credentials.list()
            return try json(saved.keys.sorted().map {
                RegistryLoginResult(registry: $0, username: saved[$0], message: "credentials saved")
            })
        }
    }

    /// NDJSON: `resolved`, `layer` events, then `done` with the image or
    /// `error`. The pull goes on if the client hangs up.
    private func pullResponse(_ req: ImagePullRequest, reference: ImageReference) -> Response {
        let (events, cont) = AsyncStream<ImagePullEvent>.makeStream()
        let pull = self.pull, logger = self.logger
        Task {
            let started = ContinuousClock.now
            do {
                let image = try await pull(req.reference, req.name) { cont.yield($0) }
                logger.info("pulled \(reference) as \(image.name) (\(image.id)) in \(started.duration(to: .now))")
                cont.yield(ImagePullEvent(event: "done", reference: reference.description, image: image))
            } catch {
                let e = HearthError.wrap(error)
                logger.info("\(e.message)")  // it names the pull
                cont.yield(ImagePullEvent(event: "error", reference: reference.description,
                                          error: APIErrorBody.Detail(code: e.code.rawValue, message: e.message)))
            }
            cont.finish()
        }
        return ndjsonResponse(events)
    }
}

/// A response that writes each element of `events` as one JSON line.
func ndjsonResponse<T: Encodable & Sendable>(_ events: AsyncStream<T>) -> Response {
    Response(status: .ok, headers: [.contentType: "application/x-ndjson"], body: ResponseBody { writer in
        let encoder = JSONEncoder()
        for await e in events {
            var line = (try? encoder.encode(e)) ?? Data()
            line.append(10)
            try await writer.write(ByteBuffer(bytes: line))
        }
        try await writer.finish(nil)
    })
}
