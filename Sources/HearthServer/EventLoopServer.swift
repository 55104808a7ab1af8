import HummingbirdCore
import Logging
import NIOCore
import NIOSSL

/// Runs a connection's handler task on the connection's own event loop.
///
/// Without it, a request part read on the event loop resumes the handler on
/// Swift's cooperative pool, and the response goes back to the event loop:
/// two thread wake-ups per request on top of the task's own trip to the
/// worker. With this task executor preference the handler (and the default
/// actors it calls) run where the bytes arrive; only the result, which the
/// replica's reader delivers, crosses threads (and with the daemon's single
/// event loop, not even that). Handlers must not block: blocking
/// work goes through `Blocking.run`, as everywhere in the daemon.
final class EventLoopTaskExecutor: TaskExecutor, @unchecked Sendable {
    // @unchecked: EventLoop is Sendable; nothing else is stored.
    private let loop: any EventLoop

    init(_ loop: any EventLoop) { self.loop = loop }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        loop.execute { job.runSynchronously(on: self.asUnownedTaskExecutor()) }
    }
}

/// HTTP/1 with each connection's task on its event loop (see above).
struct EventLoopHTTP1Channel: ServerChildChannel {
    typealias Value = HTTP1Channel.Value
    let inner: HTTP1Channel

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        inner.setup(channel: channel, logger: logger)
    }

    func handle(value: Value, logger: Logger) async {
        await withTaskExecutorPreference(EventLoopTaskExecutor(value.channel.eventLoop)) {
            await inner.handle(value: value, logger: logger)
        }
    }
}

extension HTTPServerBuilder {
    /// `fastPath`: pipeline handlers placed before the router (TaskFastPath).
    static func http1OnEventLoop(fastPath: @escaping @Sendable () -> [any RemovableChannelHandler]) -> HTTPServerBuilder {
        .init { responder in
            EventLoopHTTP1Channel(inner: HTTP1Channel(responder: responder,
                                                      configuration: .init(additionalChannelHandlers: fastPath())))
        }
    }

    /// The same behind mutual TLS (`hearthd --listen`, RemoteListener).
    static func mutualTLSOnEventLoop(context: NIOSSLContext,
                                     fastPath: @escaping @Sendable () -> [any RemovableChannelHandler]) -> HTTPServerBuilder {
        .init { responder in
            MutualTLSChannel(base: EventLoopHTTP1Channel(inner: HTTP1Channel(
                responder: responder, configuration: .init(additionalChannelHandlers: fastPath()))), context: context)
        }
    }
}
