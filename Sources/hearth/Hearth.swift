import ArgumentParser
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import HearthClient
import HearthCore

@main
struct Hearth: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "hearth",
        abstract: "Hearth: warm, isolated Python replicas on one machine.",
        discussion: "Talks to hearthd over its Unix socket (HEARTH_SOCKET, default \(HearthDefaults.socketPath)), or to a remote one over mutual TLS (HEARTH_HOST=tcp://HOST:PORT with HEARTH_TLS_CERT, HEARTH_TLS_KEY and HEARTH_TLS_CA).",
        subcommands: [Apply.self, EnvList.self, EnvStatus.self, EnvRemove.self, RunTask.self, TaskResult.self, Logs.self,
                      SecretCommand.self, Spares.self, Devices.self, Sandbox.self, ImageCommand.self, Login.self, Logout.self,
                      Certs.self, Version.self]
    )
}

struct GlobalOptions: ParsableArguments {
    @Option(name: .long, help: "hearthd's socket (default: $HEARTH_SOCKET or \(HearthDefaults.socketPath)).")
    var socket: String?

    /// `--socket`, else `HEARTH_HOST` (a remote daemon over mutual TLS),
    /// `HEARTH_SOCKET` or the default socket.
    var client: DaemonClient {
        get throws { try DaemonClient.fromEnvironment(socket: socket, ProcessInfo.processInfo.environment) }
    }
}

extension GlobalOptions {
    /// GET `path` for a command with `--json`: with `json` the body is
    /// printed as it came and nil returned; otherwise it is decoded as `T`.
    func listing<T: Decodable>(_ path: String, as type: T.Type, json: Bool) throws -> T? {
        let r = try client.request("GET", path)
        guard r.status == 200 else { throw apiError(r) }
        if json { writeAll(1, r.body + [10]); return nil }
        return try JSONDecoder().decode(T.self, from: Data(r.body))
    }
}

/// Prints "hearth: message" and exits with `code`.
func fail(_ message: String, code: Int32 = 1) -> ExitCode {
    writeAll(2, Array("hearth: \(message)\n".utf8))
    return ExitCode(code)
}

func failure(_ error: any Error, code: Int32 = 1) -> ExitCode {
    switch error {
    case let e as ExitCode: return e
    case let e as HearthError: return fail(e.message, code: code)
    case let e as SystemError: return fail(e.description, code: code)
    default: return fail(String(describing: error), code: code)
    }
}

/// Decodes an API error body, or describes the status.
func apiError(_ response: DaemonClient.Response) -> HearthError {
    if let body = try? JSONDecoder().decode(APIErrorBody.self, from: Data(response.body)) {
        return HearthError(HearthError.Code(rawValue: body.error.code) ?? .internal, body.error.message)
    }
    return HearthError(.internal, "hearthd answered HTTP \(response.status): \(String(decoding: response.body.prefix(500), as: UTF8.self))")
}

struct Version: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show the daemon's version.")
    @OptionGroup var global: GlobalOptions

    func run() throws {
        do {
            let r = try global.client.request("GET", "/v1/version")
            guard r.status == 200 else { throw apiError(r) }
            let v = try JSONDecoder().decode(VersionInfo.self, from: Data(r.body))
            print("hearthd \(v.version) (API \(v.api), cgroup \(v.cgroup), pid \(v.pid))")
            if let caller = v.caller { print("you are \(caller) on \(try global.client.socketPath)") }
        } catch { throw failure(error) }
    }
}
