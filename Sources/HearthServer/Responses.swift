import CHearth
import Foundation
import Glibc
import HearthCore
import HearthImage
import HearthSandbox
import Hummingbird
import Logging
import NIOCore
import Synchronization

func json<T: Encodable>(_ value: T, status: HTTPResponse.Status = .ok) throws -> Response {
    let data = try JSONEncoder().encode(value)
    return Response(status: status, headers: [.contentType: "application/json"],
                    body: ResponseBody(byteBuffer: ByteBuffer(bytes: data)))
}

func errorResponse(_ error: any Error) -> Response {
    let (status, bytes) = errorBody(error)
    return jsonBytes(bytes, status: status)
}

/// The status and `{"error": {"code", "message"}}` body for an error.
func errorBody(_ error: any Error) -> (HTTPResponse.Status, [UInt8]) {
    let e = HearthError.wrap(error)
    let status: HTTPResponse.Status
    switch e.code {
    case .invalidArgument, .invalidImage, .unsafeLayer: status = .badRequest
    case .notFound, .environmentNotFound, .imageNotFound: status = .notFound
    case .conflict, .specChanged: status = .conflict
    case .forbidden: status = .forbidden
    case .queueFull: status = .tooManyRequests
    case .resultExpired: status = .gone
    case .buildFailed: status = .unprocessableContent
    case .unavailable, .upgrading: status = .serviceUnavailable
    case .spawnFailed, .system, .internal: status = .internalServerError
    }
    let body = APIErrorBody(code: e.code.rawValue, message: e.message)
    let bytes = (try? JSONEncoder().encode(body)).map { Array($0) } ?? Array("{}".utf8)
    return (status, bytes)
}

/// The largest request body a route that takes JSON reads.
enum RequestLimits {
    static let body = 4 << 20
}
