import Foundation
import Glibc
import HearthCore
import HearthRelay
import NIOCore
import NIOPosix
import NIOSSL
import NIOTLS

/// A blocking client's way to a remote hearthd: one mutual-TLS connection
/// to `host:port`, spliced onto one end of a Unix socketpair whose other
/// end the caller reads and writes as it would hearthd's Unix socket. The
/// CLI's small HTTP client stays one code path for both transports; only
/// this type knows TLS. The handshake completes (or fails with a message
/// that says which side refused what) before `open` returns.
public final class TLSTunnel: @unchecked Sendable {
    // @unchecked: `failureText` is guarded by `lock`; the rest is set once.
    public let fd: Int32
    private let group: MultiThreadedEventLoopGroup
    private let lock = NSLock()
    private var failureText: String?
    private let endpoint: String
    private let certificatePath: String

    /// Why the connection ended early, when TLS ended it (a daemon that
    /// refused the client's certificate after a TLS 1.3 handshake says so
    /// only on the first read).
    public var failure: String? { lock.lock(); defer { lock.unlock() }; return failureText }

    public static func open(host: String, port: Int, files: TLSFiles, connectTimeout: TimeAmount = .seconds(10)) throws -> TLSTunnel {
        let (config, material) = try files.clientConfiguration()
        let context: NIOSSLContext
        do { context = try NIOSSLContext(configuration: config) } catch {
            throw HearthError.invalid("TLS client files (\(files.certificate), \(files.key), \(files.ca)): \(error)")
        }
        var pair: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pair) == 0 else {
            throw SystemError.current("socketpair", "TLS tunnel")
        }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let tunnel = TLSTunnel(fd: pair[0], group: group, endpoint: "\(host):\(port)", certificate: files.certificate)
        let isIP = IPAddressBytes.parse(host) != nil
        let handshake = group.next().makePromise(of: Void.self)
        do {
            let remote = try ClientBootstrap(group: group)
                .connectTimeout(connectTimeout)
                .channelInitializer { ch in
                    ch.eventLoop.makeCompletedFuture {
                        // An IP is checked against the certificate's IP
                        // addresses; a name is also sent as SNI.
                        try ch.pipeline.syncOperations.addHandler(
                            NIOSSLClientHandler(context: context, serverHostname: isIP ? nil : host))
                        try ch.pipeline.syncOperations.addHandler(
                            HandshakeWatcher(promise: handshake, tunnel: tunnel, subject: material.subject))
                    }
                }
                .connect(host: host, port: port).wait()
            do {
                try handshake.futureResult.wait()
            } catch {
                remote.close(promise: nil)
                throw HearthError(.unavailable, tunnel.explain(error, during: "handshake", subject: material.subject))
            }
            let local = try ClientBootstrap(group: group).withConnectedSocket(pair[1]).wait()
            pair[1] = -1
            // HandshakeWatcher stays ahead of the relay: it keeps the TLS
            // error that ends the connection for the socketpair's reader.
            do {
                // Both channels are on the tunnel's one event loop.
                try remote.eventLoop.submit {
                    // Closed already: no channelInactive would reach the relay.
                    guard remote.isActive else { throw ChannelError.ioOnClosedChannel }
                    let (a, b) = GlueHandler.matchedPair()
                    try remote.pipeline.syncOperations.addHandler(a)
                    try local.pipeline.syncOperations.addHandler(b)
                }.wait()
            } catch {
                // After a TLS 1.3 handshake the daemon's refusal of our
                // certificate arrives as the first record: it may close
                // the connection before the splice is in place.
                local.close(promise: nil)
                throw HearthError(.unavailable, tunnel.failure ?? "hearthd at \(host):\(port) closed the connection right after the TLS handshake")
            }
        } catch {
            handshake.fail(ChannelError.alreadyClosed)  // a connect that failed never completed it
            if pair[1] >= 0 { Glibc.close(pair[1]) }
            Glibc.close(pair[0])
            try? group.syncShutdownGracefully()
            if let e = error as? HearthError { throw e }
            throw HearthError(.unavailable, "cannot connect to hearthd at \(host):\(port): \(Self.connectMessage(error)). Is `hearthd --listen tcp://…:\(port)` running there (HEARTH_HOST)?")
        }
        return tunnel
    }

    private init(fd: Int32, group: MultiThreadedEventLoopGroup, endpoint: String, certificate: String) {
        self.fd = fd; self.group = group; self.endpoint = endpoint; self.certificatePath = certificate
    }

    /// Closes the caller's end and stops the tunnel's thread.
    public func close() {
        Glibc.close(fd)
        try? group.syncShutdownGracefully()
    }

    fileprivate func record(_ error: any Error, subject: String) {
        let text = explain(error, during: "connection", subject: subject)
        lock.lock(); if failureText == nil { failureText = text }; lock.unlock()
    }

    /// Which side refused, and what to check: BoringSSL's reason names the
    /// alert the daemon sent, or what this side found wrong with the daemon's.
    func explain(_ error: any Error, during: String, subject: String) -> String {
        let raw = TLSErrorText.reason(error)
        let reason = raw.uppercased()
        let refusedUs = ["CERTIFICATE_REQUIRED", "UNKNOWN_CA", "BAD_CERTIFICATE", "CERTIFICATE_EXPIRED",
                         "CERTIFICATE_UNKNOWN", "CERTIFICATE_REVOKED", "UNSUPPORTED_CERTIFICATE", "ACCESS_DENIED",
                         "DECRYPT_ERROR", "HANDSHAKE_FAILURE"]
        if reason.contains("ALERT"), let which = refusedUs.first(where: { reason.contains($0) }) {
            return "hearthd at \(endpoint) refused this client's certificate (\(certificatePath), \(subject)) at the TLS handshake: \(which.lowercased().replacingOccurrences(of: "_", with: " ")) (\(raw)). It must be a client certificate of the daemon's CA (its --tls-ca), within its validity: check HEARTH_TLS_CERT and HEARTH_TLS_KEY"
        }
        if raw.contains("failedToValidateHostname") {
            return "this client refused the certificate of hearthd at \(endpoint) at the TLS handshake: it does not name the host dialled (\(endpoint.split(separator: ":").dropLast().joined(separator: ":"))); dial a name or address of its `hearth certs server --host`"
        }
        if reason.contains("CERTIFICATE_VERIFY_FAILED") || raw.contains("unableToValidateCertificate") {
            return "this client refused the certificate of hearthd at \(endpoint) at the TLS handshake: it is not signed by HEARTH_TLS_CA, or has expired (\(raw))"
        }
        if reason.contains("WRONG_VERSION_NUMBER") || reason.contains("PACKET_LENGTH_TOO_LONG") || reason.contains("HTTP_REQUEST") {
            return "\(endpoint) does not speak TLS: is it hearthd's --listen address? (\(raw))"
        }
        if raw.contains("uncleanShutdown") || raw.contains("eof") || raw.contains("EOF") {
            return "hearthd at \(endpoint) closed the connection during the TLS \(during) (\(raw)): it may have refused this client's certificate (\(certificatePath), \(subject))"
        }
        return "TLS \(during) with hearthd at \(endpoint) failed: \(raw)"
    }

    static func connectMessage(_ error: any Error) -> String {
        if let e = error as? NIOConnectionError {
            if let first = e.connectionErrors.first { return connectMessage(first.error) }
            if e.dnsAError != nil || e.dnsAAAAError != nil { return "cannot resolve \(e.host)" }
        }
        if let e = error as? IOError { return ErrnoName.name(e.errnoCode) }
        if case ChannelError.connectTimeout(let t) = error as? ChannelError ?? .ioOnClosedChannel {
            return "no answer within \(t.nanoseconds / 1_000_000_000) s"
        }
        return "\(error)"
    }
}

/// Completes the handshake promise, or fails it with the first error.
private final class HandshakeWatcher: ChannelInboundHandler, RemovableChannelHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    private let promise: EventLoopPromise<Void>
    private var done = false
    private let tunnel: TLSTunnel
    private let subject: String

    init(promise: EventLoopPromise<Void>, tunnel: TLSTunnel, subject: String) {
        self.promise = promise; self.tunnel = tunnel; self.subject = subject
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let e = event as? TLSUserEvent, case .handshakeCompleted = e, !done {
            done = true
            promise.succeed(())
        }
        context.fireUserInboundEventTriggered(event)
    }

    /// Before the handshake completes: its failure. After: the reason the
    /// connection ends, kept for the reader of the socketpair.
    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if !done { done = true; promise.fail(error) } else { tunnel.record(error, subject: subject) }
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        if !done { done = true; promise.fail(NIOSSLError.uncleanShutdown) }
        context.fireChannelInactive()
    }
}

/// BoringSSL's reason out of NIOSSL's error text: `TLSV1_ALERT_UNKNOWN_CA`
/// rather than the error's whole description with its source location.
public enum TLSErrorText {
    public static func reason(_ error: any Error) -> String {
        let raw = "\(error)"
        guard let r = raw.range(of: "OPENSSL_internal:") else { return raw }
        let rest = raw[r.upperBound...]
        let end = rest.range(of: " at ")?.lowerBound ?? rest.firstIndex(of: "]") ?? rest.endIndex
        return String(rest[..<end])
    }
}
