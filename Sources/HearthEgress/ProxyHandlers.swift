import HearthCore
import HearthRelay
import NIOCore
import NIOPosix

/// One client connection of a replica's proxy: reads the request head,
/// resolves and checks the destination off the loop, connects, then relays
/// through a `GlueHandler` pair. After an absolute-form request it keeps
/// framing the client's bytes (heads and Content-Length bodies), so every
/// later request on the connection is checked to name the same destination.
final class EgressClientHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundOut = ByteBuffer

    /// draining: a later request was refused; the server gets EOF after
    /// what was forwarded, answers it, and its close closes the client.
    private enum State: Equatable { case head, connecting, relaying, draining, closed }

    private let proxy: EgressProxy
    private let session: ProxySession
    private let resolver: NIOThreadPool
    private var state = State.head
    /// Client bytes not yet forwarded.
    private var buffer = ByteBuffer()
    /// How far past the reader index the buffer was searched for a head's end.
    private var scanned = 0
    private var first: EgressRequest?
    /// Body bytes of the current absolute-form request still to forward.
    private var bodyLeft = 0
    private var inputClosed = false
    private var timer: Scheduled<Void>?

    init(proxy: EgressProxy, session: ProxySession, resolver: NIOThreadPool) {
        self.proxy = proxy
        self.session = session
        self.resolver = resolver
    }

    private var replica: String { session.replica }

    func handlerAdded(context: ChannelHandlerContext) {
        let seconds = proxy.limits.requestTimeout.nanoseconds / 1_000_000_000
        timer = context.eventLoop.assumeIsolated().scheduleTask(in: proxy.limits.requestTimeout) { [self] in
            guard state == .head || state == .connecting else { return }
            fail(context, 408, "hearth egress: no request and connection within \(seconds) s")
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var data = unwrapInboundIn(data)
        switch state {
        case .head:
            buffer.writeBuffer(&data)
            switch nextHead() {
            case .none:
                if buffer.readableBytes > proxy.limits.maxHead { fail(context, 431, headTooLarge) }
            case .tooLarge:
                fail(context, 431, headTooLarge)
            case .head(let head):
                begin(context, head)
            }
        case .connecting:
            // autoRead is off: at most what one read had in flight.
            buffer.writeBuffer(&data)
        case .relaying:
            guard let first else { return }
            if first.kind == .connect {
                context.fireChannelRead(wrapInboundOut(data))
            } else if buffer.readableBytes == 0 && data.readableBytes <= bodyLeft {
                bodyLeft -= data.readableBytes
                context.fireChannelRead(wrapInboundOut(data))
            } else {
                buffer.writeBuffer(&data)
                frame(context)
            }
        case .draining, .closed:
            break
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        guard let e = event as? ChannelEvent, e == .inputClosed else {
            context.fireUserInboundEventTriggered(event)
            return
        }
        switch state {
        case .head: close(context)
        case .connecting: inputClosed = true
        case .relaying: context.fireUserInboundEventTriggered(event)
        case .draining: break
        case .closed: context.close(promise: nil)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        state = .closed
        timer?.cancel()
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        close(context)
    }

    // MARK: the first request

    private var headTooLarge: String { "hearth egress: the request head is over \(proxy.limits.maxHead) bytes" }

    private enum Scan { case none, tooLarge, head(ByteBuffer) }

    /// The next complete head at the reader index, taken out of the buffer.
    /// Scans only what it has not scanned before (a head trickling in a
    /// byte at a time costs linear time).
    private func nextHead() -> Scan {
        let start = max(0, scanned - 3)
        let end: Int? = buffer.withUnsafeReadableBytes { all in
            guard start < all.count else { return nil }
            return EgressRequest.headEnd(UnsafeRawBufferPointer(rebasing: all[start...])).map { $0 + start }
        }
        guard let end else {
            scanned = buffer.readableBytes
            return .none
        }
        guard end <= proxy.limits.maxHead, let head = buffer.readSlice(length: end) else { return .tooLarge }
        scanned = 0
        return .head(head)
    }

    private func begin(_ context: ChannelHandlerContext, _ head: ByteBuffer) {
        let request: EgressRequest
        do {
            request = try EgressRequest.parse(head.readableBytesView)
        } catch {
            fail(context, error.status, "hearth egress: \(error.reason)")
            return
        }
        first = request
        state = .connecting
        // Nothing more is read until the destination is connected.
        try? context.channel.syncOptions?.setOption(.autoRead, value: false)
        // The head goes out again in front of the rest (absolute-form).
        if request.kind == .http {
            var again = head
            again.writeBuffer(&buffer)
            buffer = again
        }
        // A name on a port no rule allows costs no lookup. (An address is
        // checked whole below, so a loopback address is named as such.)
        guard IPAddress(request.host) != nil || proxy.policy.portMayBeAllowed(request.port) else {
            refuse(context, request.destination, "port \(request.port) is not allowed")
            return
        }
        let host = request.host
        resolver.runIfActive(eventLoop: context.eventLoop) { () throws -> ([IPAddress], HostNetworks) in
            let addresses = try IPAddress(host).map { [$0] } ?? Resolver.resolve(host)
            return (addresses, Resolver.hostNetworks())
        }.assumeIsolated().whenComplete { [self] result in
            guard state == .connecting else { return }
            switch result {
            case .failure(let e as Resolver.Failure):
                fail(context, 502, "hearth egress: \(e.message)")
            case .failure(let e):
                fail(context, 502, "hearth egress: cannot resolve \(host): \(e)")
            case .success(let (addresses, hostNetworks)):
                let literal = IPAddress(host) != nil
                for a in addresses {
                    if case .refuse(let why) = proxy.policy.check(a, port: request.port, host: hostNetworks) {
                        refuse(context, literal ? request.destination : "\(request.destination) (\(a))", why)
                        return
                    }
                }
                connect(context, request, addresses, 0, lastError: nil)
            }
        }
    }

    /// Tries the checked addresses in order; the connection goes to the
    /// address that was checked, never to a name.
    private func connect(_ context: ChannelHandlerContext, _ request: EgressRequest, _ addresses: [IPAddress], _ i: Int,
                         lastError: (status: Int, text: String)?) {
        guard i < addresses.count else {
            let e = lastError ?? (502, "no address")
            fail(context, e.status, "hearth egress: connect to \(request.destination): \(e.text)")
            return
        }
        let address = addresses[i]
        guard let target = try? SocketAddress(ipAddress: address.description, port: Int(request.port)) else {
            connect(context, request, addresses, i + 1, lastError: (502, "\(address): not an address"))
            return
        }
        let timeout = proxy.limits.connectTimeout
        ClientBootstrap(group: context.eventLoop)
            .connectTimeout(timeout)
            .channelOption(.allowRemoteHalfClosure, value: true)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .connect(to: target)
            .assumeIsolated().whenComplete { [self] result in
                switch result {
                case .success(let upstream):
                    guard state == .connecting, context.channel.isActive, session.track(upstream) else {
                        upstream.close(promise: nil)
                        return
                    }
                    established(context, request, upstream, address)
                case .failure(let error):
                    guard state == .connecting else { return }
                    let e: (Int, String)
                    if case ChannelError.connectTimeout = error {
                        e = (504, "\(address): no answer within \(timeout.nanoseconds / 1_000_000_000) s")
                    } else if let io = error as? IOError {
                        e = (502, "\(address): \(ErrnoName.name(io.errnoCode)) (\(String(cString: strerror(io.errnoCode))))")
                    } else {
                        e = (502, "\(address): \(error)")
                    }
                    connect(context, request, addresses, i + 1, lastError: e)
                }
            }
    }

    private func established(_ context: ChannelHandlerContext, _ request: EgressRequest, _ upstream: any Channel,
                             _ address: IPAddress) {
        timer?.cancel()
        let (mine, theirs) = GlueHandler.matchedPair()
        let idle = proxy.limits.idleTimeout
        do {
            try context.pipeline.syncOperations.addHandlers([IdleStateHandler(allTimeout: idle), mine])
            try upstream.pipeline.syncOperations.addHandlers([IdleStateHandler(allTimeout: idle), theirs])
        } catch {
            upstream.close(promise: nil)
            close(context)
            return
        }
        state = .relaying
        proxy.logger.debug("egress \(replica): \(request.method) \(request.destination) via \(address)")
        if request.kind == .connect {
            context.writeAndFlush(wrapOutboundOut(ByteBuffer(string: "HTTP/1.1 200 Connection established\r\n\r\n")),
                                  promise: nil)
            if buffer.readableBytes > 0 {
                // Bytes the client sent before the 200 (TLS's first flight).
                let early = buffer
                buffer = ByteBuffer()
                context.fireChannelRead(wrapInboundOut(early))
                context.fireChannelReadComplete()
            }
        } else {
            frame(context)
        }
        if inputClosed && state == .relaying { context.fireUserInboundEventTriggered(ChannelEvent.inputClosed) }
        try? context.channel.syncOptions?.setOption(.autoRead, value: true)
    }

    // MARK: absolute-form requests after the first

    /// Forwards complete heads and their bodies. A head that names another
    /// destination, or is malformed or too large, ends the forwarding: no
    /// error response can be placed among the responses still to come, so
    /// the server gets EOF after the earlier requests and its answers to
    /// them reach the client before both close.
    private func frame(_ context: ChannelHandlerContext) {
        guard let first else { return }
        var forwarded = false
        while buffer.readableBytes > 0 && state == .relaying {
            if bodyLeft > 0 {
                let n = min(bodyLeft, buffer.readableBytes)
                guard let body = buffer.readSlice(length: n) else { break }
                bodyLeft -= n
                context.fireChannelRead(wrapInboundOut(body))
                forwarded = true
                continue
            }
            switch nextHead() {
            case .none:
                if buffer.readableBytes > proxy.limits.maxHead {
                    drain(context, forwarded, "a later request head is over \(proxy.limits.maxHead) bytes")
                    return
                }
            case .tooLarge:
                drain(context, forwarded, "a later request head is over \(proxy.limits.maxHead) bytes")
                return
            case .head(let head):
                let next: EgressRequest
                do {
                    next = try EgressRequest.parse(head.readableBytesView)
                } catch {
                    drain(context, forwarded, "a later request is malformed (\(error.reason))")
                    return
                }
                guard next.kind == .http, next.host == first.host, next.port == first.port else {
                    drain(context, forwarded, "a later request names \(next.destination) (one destination per connection)")
                    return
                }
                bodyLeft = next.bodyLength
                context.fireChannelRead(wrapInboundOut(head))
                forwarded = true
                continue
            }
            break
        }
        buffer.discardReadBytes()
        if forwarded { context.fireChannelReadComplete() }
    }

    private func drain(_ context: ChannelHandlerContext, _ forwarded: Bool, _ why: String) {
        proxy.logger.info("egress \(replica): connection to \(first?.destination ?? "?"): \(why); nothing more is forwarded on it")
        state = .draining
        buffer.clear()
        if forwarded { context.fireChannelReadComplete() }
        context.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
    }

    // MARK: answers

    private func refuse(_ context: ChannelHandlerContext, _ destination: String, _ why: String) {
        switch session.countRefusal() {
        case .info: proxy.logger.info("egress \(replica): \(destination) refused: \(why)")
        case .last:
            proxy.logger.info("egress \(replica): \(destination) refused: \(why) (\(ProxySession.refusalsAtInfo) refusals: the rest of this replica's are logged at debug)")
        case .debug: proxy.logger.debug("egress \(replica): \(destination) refused: \(why)")
        }
        fail(context, 403, EgressPolicy.refusal(destination, why))
    }

    /// Answers with `status` and a one-line body, then closes. A client may
    /// still be sending (an oversized head): closing with its bytes unread
    /// would reset the connection and could drop the answer, so the output
    /// is shut first and what arrives is discarded until EOF or 2 s.
    private func fail(_ context: ChannelHandlerContext, _ status: Int, _ message: String) {
        guard state != .closed else { return }
        state = .closed
        timer?.cancel()
        context.writeAndFlush(wrapOutboundOut(Self.response(status, message))).assumeIsolated().whenComplete { _ in
            context.close(mode: .output, promise: nil)
        }
        try? context.channel.syncOptions?.setOption(.autoRead, value: true)
        context.eventLoop.assumeIsolated().scheduleTask(in: .seconds(2)) { context.close(promise: nil) }
    }

    private func close(_ context: ChannelHandlerContext) {
        state = .closed
        timer?.cancel()
        context.close(promise: nil)
    }

    static func response(_ status: Int, _ message: String) -> ByteBuffer {
        let reasons = [400: "Bad Request", 403: "Forbidden", 408: "Request Timeout",
                       431: "Request Header Fields Too Large", 501: "Not Implemented", 502: "Bad Gateway",
                       503: "Service Unavailable", 504: "Gateway Timeout", 505: "HTTP Version Not Supported"]
        let body = message + "\n"
        return ByteBuffer(string: "HTTP/1.1 \(status) \(reasons[status] ?? "Error")\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n" + body)
    }
}

/// A connection over the limits: answered at once and closed, unread.
final class RefuseHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    private let status: Int
    private let message: String

    init(status: Int, message: String) {
        self.status = status
        self.message = message
    }

    func channelActive(context: ChannelHandlerContext) {
        context.writeAndFlush(wrapOutboundOut(EgressClientHandler.response(status, message))).assumeIsolated()
            .whenComplete { _ in context.close(promise: nil) }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {}

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}
