import HTTPTypes
import HearthCore
import NIOCore
import NIOHTTPTypes

/// Answers `POST /v1/environments/{env}/tasks` in the channel pipeline,
/// before Hummingbird's router: the warm path is request → run frame,
/// result frame → response, with no Swift-concurrency task in between.
/// The router's way costs a task wake-up and an async writer per request,
/// about a fifth of a warm round trip on the build VM (the benchmark's
/// figures). The work itself is the router's (`PoolRoutes.postTask`).
/// Any other request, and a task request this handler is unsure of (a
/// query string, an escaped name, `Expect`, a `Connection` other than
/// keep-alive or close), goes on to the router unchanged.
/// `Connection: close` closes after the response, as the router's
/// connection loop does.
///
/// Pipelined requests stay in order: Hummingbird turns NIOHTTP1's
/// pipelining assistance off (its connection loop reads one request at a
/// time), so this handler holds the parts of a later request, and stops
/// asking for more reads, until the current one has been answered, by this
/// handler or (its response's end passing through here) by the router.
final class TaskFastPath: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart
    typealias OutboundIn = HTTPResponsePart
    typealias OutboundOut = HTTPResponsePart

    private enum Mode {
        case idle
        /// A request the router answers: its parts go on until both the
        /// request and the response have ended.
        case router(requestEnded: Bool, responseEnded: Bool)
        /// Reading a task request's body into `body`.
        case collecting(environment: String, tooLarge: Bool, close: Bool)
        /// Submitted; the response has not been written yet.
        case answering(close: Bool)
    }

    private let routes: PoolRoutes
    private var mode = Mode.idle
    /// The body being collected. Kept out of `Mode` so that it has one
    /// owner: a copy of the enum alive during an append (a `switch` on a
    /// tuple holds one) made every chunk copy the whole body, quadratic
    /// in its size (a 64 MiB body took 20 s).
    private var body = ByteBuffer()
    /// Parts of later requests, held until the current one is answered.
    private var held = CircularBuffer<HTTPRequestPart>()
    private var readHeld = false
    /// Graceful shutdown arrived while a task was in flight: close once it is answered.
    private var closeAfterResponse = false

    init(routes: PoolRoutes) { self.routes = routes }

    /// The environment name, and whether to close after answering, when
    /// `head` is a task submission this handler takes.
    static func route(_ head: HTTPRequest) -> (environment: String, close: Bool)? {
        guard head.method == .post, head.headerFields[.expect] == nil,
              let path = head.path, path.hasPrefix("/v1/environments/"), path.hasSuffix("/tasks") else { return nil }
        let name = path.dropFirst("/v1/environments/".count).dropLast("/tasks".count)
        guard !name.isEmpty, !name.contains(where: { $0 == "/" || $0 == "%" || $0 == "?" || $0 == "#" }) else {
            return nil
        }
        let connection = head.headerFields[values: .connection].map { $0.lowercased() }
        guard connection.allSatisfy({ $0 == "close" || $0 == "keep-alive" }) else { return nil }
        return (String(name), connection.contains("close"))
    }

    /// Whether the current request has been read whole and waits for its answer.
    private var waiting: Bool {
        switch mode {
        case .answering: return true
        case .router(let requestEnded, _): return requestEnded
        default: return false
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let part = unwrapInboundIn(data)
        if waiting || !held.isEmpty {
            held.append(part)
            return
        }
        handle(part, context: context)
    }

    private func handle(_ part: HTTPRequestPart, context: ChannelHandlerContext) {
        switch (part, mode) {
        case (.head(let head), .idle):
            if let (env, close) = Self.route(head) {
                // The declared length up front, to 1 MiB (a header alone
                // must not reserve the 64 MiB limit); past it the buffer doubles.
                let declared = head.headerFields[.contentLength].flatMap { Int($0) } ?? 0
                body = context.channel.allocator.buffer(capacity: max(256, min(declared, 1 << 20)))
                mode = .collecting(environment: env, tooLarge: false, close: close)
            } else {
                mode = .router(requestEnded: false, responseEnded: false)
                context.fireChannelRead(wrapInboundOut(part))
            }
        case (.body(var chunk), .collecting(let env, let tooLarge, let close)):
            if tooLarge || body.readableBytes + chunk.readableBytes > PoolRoutes.maxTaskBytes {
                body = ByteBuffer()
                mode = .collecting(environment: env, tooLarge: true, close: close)
            } else {
                body.writeBuffer(&chunk)
            }
        case (.end, .collecting(let env, let tooLarge, let close)):
            mode = .answering(close: close)
            let body = self.body
            self.body = ByteBuffer()
            if tooLarge {
                let (status, bytes) = errorBody(HearthError.invalid(
                    "task request: the body is over \(PoolRoutes.maxTaskBytes >> 20) MiB; ship large inputs in the code bundle or a file"))
                respond(context: context, status: status, bytes: bytes)
                return
            }
            let loop = context.eventLoop
            let bound = NIOLoopBound((self, context), eventLoop: loop)
            routes.postTask(environment: env, body: body) { status, bytes in
                // On the event loop for an error or `wait: false`; on the
                // reader's thread (the same loop) when a waited-for task finishes.
                if loop.inEventLoop {
                    bound.value.0.respond(context: bound.value.1, status: status, bytes: bytes)
                } else {
                    loop.execute { bound.value.0.respond(context: bound.value.1, status: status, bytes: bytes) }
                }
            }
        case (_, .router(_, let responseEnded)):
            if case .end = part {
                mode = responseEnded ? .idle : .router(requestEnded: true, responseEnded: false)
            }
            context.fireChannelRead(wrapInboundOut(part))
        default:
            // A part out of order (a body with no head): the router's side
            // reports such things.
            mode = .router(requestEnded: false, responseEnded: false)
            context.fireChannelRead(wrapInboundOut(part))
        }
    }

    /// The current request is answered: handle what was held, then read on.
    private func next(context: ChannelHandlerContext) {
        var replayed = false
        while !waiting, let part = held.popFirst() {
            handle(part, context: context)
            replayed = true
        }
        // Outside a read cycle: NIOAsyncChannel hands reads on at read-complete.
        if replayed { context.fireChannelReadComplete() }
        if !waiting && readHeld {
            readHeld = false
            context.read()
        }
    }

    func read(context: ChannelHandlerContext) {
        if waiting {
            readHeld = true
        } else {
            context.read()
        }
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        context.write(data, promise: promise)
        // The router's response: once it has ended, so has its request's turn.
        if case .end = unwrapOutboundIn(data), case .router(let requestEnded, _) = mode {
            mode = requestEnded ? .idle : .router(requestEnded: false, responseEnded: true)
            if requestEnded { next(context: context) }
        }
    }

    private func respond(context: ChannelHandlerContext, status: HTTPResponse.Status, bytes: [UInt8]) {
        guard case .answering(let close) = mode else { return }
        mode = .idle
        guard context.channel.isActive else { return }
        var head = HTTPResponse(status: status)
        head.headerFields[.contentType] = "application/json"
        head.headerFields[.contentLength] = String(bytes.count)
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        context.write(wrapOutboundOut(.body(context.channel.allocator.buffer(bytes: bytes))), promise: nil)
        if close || closeAfterResponse {
            let channel = context.channel
            context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in channel.close(promise: nil) }
            return
        }
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        next(context: context)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        // Graceful shutdown: the router's connection state (after this
        // handler) never saw our request and would close the connection
        // under it; close after our response instead.
        if event is ChannelShouldQuiesceEvent {
            switch mode {
            case .collecting, .answering:
                closeAfterResponse = true
                return
            default:
                break
            }
        }
        context.fireUserInboundEventTriggered(event)
    }
}
