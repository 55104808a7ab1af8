import Foundation
import Glibc
import HearthCore

/// `hearthd --upgrade`: asks the running hearthd to hand its replicas to
/// the binary now at its path (`POST /v1/upgrade`), then waits for the new
/// image to answer (`GET /v1/version` with another `started`).
public enum DaemonUpgrade {
    public struct Outcome: Sendable {
        public var before: VersionInfo
        public var after: VersionInfo
        public var binary: String
        /// From the request's acceptance to the new image's first answer.
        public var gap: Duration
    }

    private struct Accepted: Decodable { var pid: Int32; var binary: String }

    public static func run(socketPath: String, timeout: Duration) throws -> Outcome {
        let client = DaemonClient(socketPath: socketPath)
        let before = try version(client)
        let response = try client.request("POST", "/v1/upgrade")
        guard response.status == 202 else {
            let message = (try? JSONDecoder().decode(APIErrorBody.self, from: Data(response.body)))?.error.message
                ?? String(decoding: response.body.prefix(2000), as: UTF8.self)
            throw HearthError(.conflict, message)
        }
        let accepted = try JSONDecoder().decode(Accepted.self, from: Data(response.body))
        let clock = ContinuousClock()
        let start = clock.now
        while clock.now - start < timeout {
            // Refused or cut while the exec happens: asked again.
            if let now = try? version(client), now.started != before.started {
                return Outcome(before: before, after: now, binary: accepted.binary, gap: clock.now - start)
            }
            usleep(20_000)
        }
        throw HearthError(.unavailable, "hearthd (pid \(before.pid)) accepted the upgrade to \(accepted.binary) but did not answer as a new binary within \(timeout); see its log")
    }

    private static func version(_ client: DaemonClient) throws -> VersionInfo {
        let r = try client.request("GET", "/v1/version")
        guard r.status == 200 else { throw HearthError(.unavailable, "GET /v1/version: HTTP \(r.status)") }
        return try JSONDecoder().decode(VersionInfo.self, from: Data(r.body))
    }
}
