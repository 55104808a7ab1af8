import HearthCore
import HearthTLS
import HummingbirdCore
import Logging
import NIOCore
import NIOSSL
import NIOTLS

/// `hearthd --listen tcp://ADDR:PORT`: the same API as the Unix socket,
/// for remote callers, only with mutual TLS. A client must present a
/// certificate of the cluster CA (`--tls-ca`); its subject is the
/// caller's identity (`HearthRequestContext.caller`). There is no plain
/// TCP mode: a node's API runs code as root.
struct MutualTLSChannel<Base: ServerChildChannel>: ServerChildChannel {
    typealias Value = Base.Value
    let base: Base
    let context: NIOSSLContext

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        channel.eventLoop.makeCompletedFuture {
            try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: context))
            try channel.pipeline.syncOperations.addHandler(TLSRefusalLog(logger: logger))
        }.flatMap {
            base.setup(channel: channel, logger: logger)
        }
    }

    func handle(value: Value, logger: Logger) async {
        await base.handle(value: value, logger: logger)
    }
}

/// An operator sees who was turned away and why (a certificate of another
/// CA, an expired one, no certificate, not TLS at all); the refused
/// client reads the reason from its TLS alert.
private final class TLSRefusalLog: ChannelInboundHandler, RemovableChannelHandler, @unchecked Sendable {
    // @unchecked: `admitted` is touched only on the connection's event loop.
    typealias InboundIn = ByteBuffer
    let logger: Logger
    private var admitted = false

    init(logger: Logger) { self.logger = logger }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let e = event as? TLSUserEvent, case .handshakeCompleted = e { admitted = true }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // After the handshake a client that hangs up without close_notify
        // is not a refusal.
        if !admitted && (error is NIOSSLError || error is BoringSSLError) {
            let peer = context.channel.remoteAddress.map { "\($0)" } ?? "a client"
            logger.notice("TLS: refused \(peer): \(TLSErrorText.reason(error))")
        }
        context.fireErrorCaught(error)
    }
}

/// What the daemon's `--listen` options come to: where, and the TLS
/// context built from `--tls-cert`, `--tls-key` and `--tls-ca`.
public struct RemoteListen: Sendable {
    public var host: String
    public var port: Int
    public var files: TLSFiles

    public init(host: String, port: Int, files: TLSFiles) {
        self.host = host; self.port = port; self.files = files
    }
}

extension RemoteListen {
    /// Loaded before the daemon creates anything: a wrong file stops it
    /// at start with the file's name, not at the first handshake.
    struct Prepared: Sendable {
        let listen: RemoteListen
        let context: NIOSSLContext
        let subject: String

        init(_ listen: RemoteListen) throws {
            let (config, material) = try listen.files.serverConfiguration()
            do { context = try NIOSSLContext(configuration: config) } catch {
                throw HearthError.invalid("--tls-cert \(listen.files.certificate), --tls-key \(listen.files.key), --tls-ca \(listen.files.ca): \(error)")
            }
            self.listen = listen
            subject = material.subject
        }
    }
}
