import HTTPTypes
import HearthCore
import HearthPool
import Hummingbird
import NIOCore

/// Every error a route throws becomes the API's JSON error body
/// (`{"error": {"code", "message"}}`, the status from the code), so routes
/// just `try`. Hummingbird's own errors keep their status: an unknown route
/// (or method) is a 404 and a body over a route's limit a 413, with the same
/// JSON body (the task route's fast path, TaskFastPath, answers an oversized
/// task itself: 400). An expired result is a 410 that also carries the task.
struct ErrorMiddleware<Context: RequestContext>: RouterMiddleware {
    func handle(_ request: Request, context: Context,
                next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let e as ResultExpired {
            return expiredResponse(e)
        } catch let e as HTTPError {
            return httpErrorResponse(e, request: request)
        } catch is NIOTooManyBytesError {  // a body over the route's `collect(upTo:)`
            return httpErrorResponse(HTTPError(.contentTooLarge), request: request)
        } catch {
            return errorResponse(error)
        }
    }
}

/// Hummingbird's HTTPError as the API's error body.
func httpErrorResponse(_ e: HTTPError, request: Request) -> Response {
    let code: HearthError.Code
    let message: String
    switch e.status {
    case .notFound:
        code = .notFound
        message = "no route \(request.method) \(request.uri.path) (the API is under /v1; see GET /v1/version)"
    case .contentTooLarge:
        code = .invalidArgument
        message = "\(request.method) \(request.uri.path): the request body is larger than this route takes"
    default:
        code = e.status.code >= 500 ? .internal : .invalidArgument
        message = "\(request.method) \(request.uri.path): \(e.body ?? e.status.reasonPhrase)"
    }
    let (_, bytes) = errorBody(HearthError(code, message))
    return jsonBytes(bytes, status: e.status)
}
