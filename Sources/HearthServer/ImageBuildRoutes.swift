import Foundation
import HearthBuild
import HearthCore
import HearthSandbox
import Hummingbird
import Logging
import NIOCore

/// `POST /v1/images/build`: an ImageSpec → an NDJSON stream of the build's
/// events (see `ImageBuildEvent`). A request that cannot be a build (bad
/// JSON, an unknown field, a name that is not an image name) is answered
/// 400 before anything starts. The build runs to its end even if the client
/// goes away, so a retry finds its steps cached.
struct ImageBuildRoutes: Sendable {
    let builder: ImageBuilder
    let logger: Logger
    /// Runs after a build recorded its image (spares of what the name meant before go).
    var afterBuild: @Sendable (ImageSummary) async -> Void = { _ in }

    func register(on router: Router<HearthRequestContext>) {
        router.post("/v1/images/build") { request, _ in
            let body = try await request.body.collect(upTo: RequestLimits.body)
            let req = try ImageBuildRequest.parse(json: String(decoding: body.readableBytesView, as: UTF8.self))
            _ = try builder.imageName(req.spec)
            return stream(req)
        }
    }

    private func stream(_ req: ImageBuildRequest) -> Response {
        let (events, cont) = AsyncStream<ImageBuildEvent>.makeStream()
        let builder = self.builder, logger = self.logger, afterBuild = self.afterBuild
        Task.detached {
            do {
                let (image, cached) = try await builder.build(req.spec, verbose: req.verbose) { event in
                    cont.yield(Self.encode(event))
                }
                await afterBuild(image)
                logger.info("built image \(image.name) (\(cached ? "all steps cached" : "\(image.layers) layers"))")
                cont.yield(ImageBuildEvent(event: "done", image: image, cached: cached))
            } catch {
                let e = HearthError.wrap(error)
                logger.info("image build failed: \(e.message)")
                cont.yield(ImageBuildEvent(event: "error", error: APIErrorBody.Detail(code: e.code.rawValue, message: e.message)))
            }
            cont.finish()
            MallocTuning.trim()
        }
        return Response(status: .ok, headers: [.contentType: "application/x-ndjson"], body: ResponseBody { writer in
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.withoutEscapingSlashes]
            for await e in events {
                var line = (try? encoder.encode(e)) ?? Data()
                line.append(10)
                try await writer.write(ByteBuffer(bytes: line))
            }
            try await writer.finish(nil)
        })
    }

    static func encode(_ event: BuildEvent) -> ImageBuildEvent {
        switch event {
        case .start(let image, let steps):
            return ImageBuildEvent(event: "start", imageName: image, steps: steps)
        case .step(let index, let total, let description, let cached):
            return ImageBuildEvent(event: "step", index: index, total: total, description: description, cached: cached)
        case .output(let index, let line):
            return ImageBuildEvent(event: "output", index: index, line: line)
        case .stepDone(let index, let seconds, let cached):
            return ImageBuildEvent(event: "step_done", index: index, cached: cached, seconds: seconds)
        case .pull(let line):
            return ImageBuildEvent(event: "pull", line: line)
        }
    }
}
