import ArgumentParser
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import Glibc
import HearthClient
import HearthCore

struct Sandbox: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a command in a fresh isolated replica and remove it afterwards.",
        discussion: "Exits with the command's status; 125 when the sandbox could not be started."
    )
    @OptionGroup var global: GlobalOptions

    @Option(help: "Image (default \(HearthDefaults.image)).") var image: String?
    @Option(help: "Memory limit, e.g. 64Mi, 1Gi (default: hearthd's --default-memory).") var memory: String?
    @Option(help: "Bytes the command may write to the replica's filesystem, e.g. 100Mi; over it the replica is killed.")
    var ephemeralStorage: String?
    @Option(help: "CPU limit in cores, e.g. 0.5, 2, 500m.") var cpus: String?
    @Option(help: "Process limit (default \(HearthDefaults.pidsMax)).") var pids: Int64?
    @Option(help: "none (loopback only, default), egress (HTTP and HTTPS to public hosts through hearthd's proxy) or host.") var network: String?
    @Option(name: .customLong("env"), help: "KEY=VALUE, repeatable.") var env: [String] = []
    @Option(help: "default, unconfined, or the path of an OCI seccomp profile (JSON).") var seccomp: String?
    @Option(help: "Working directory inside the replica.") var workdir: String?
    @Flag(inversion: .prefixedNo, help: "Run in a user namespace (root inside is an unprivileged host uid); default: hearthd's --userns.")
    var userns: Bool?
    @Argument(parsing: .captureForPassthrough, help: "-- CMD ARGS...") var command: [String] = []

    func run() throws {
        var argv = command
        if argv.first == "--" { argv.removeFirst() }
        guard !argv.isEmpty else { throw fail("sandbox: no command given; usage: hearth sandbox [OPTIONS] -- CMD ARGS...", code: 125) }
        var req = SandboxRequest(image: image, memory: memory, cpus: cpus, pids: pids, network: network, userNamespace: userns,
                                 env: env.isEmpty ? nil : env, workdir: workdir, ephemeralStorage: ephemeralStorage,
                                 argv: argv)
        switch seccomp {
        case nil, "default": req.seccomp = seccomp
        case "unconfined": req.seccomp = "unconfined"
        case let path?:
            guard let data = FileManager.default.contents(atPath: path) else {
                throw fail("--seccomp: cannot read profile file \(path)", code: 125)
            }
            req.seccomp = "profile"
            req.seccompProfile = String(decoding: data, as: UTF8.self)
        }
        let code: Int32
        do {
            code = try Self.stream(req, client: global.client)
        } catch { throw failure(error, code: 125) }
        throw ExitCode(code)
    }

    /// Streams the replica's output to our stdout/stderr; returns its exit code.
    static func stream(_ req: SandboxRequest, client: DaemonClient) throws -> Int32 {
        let body = try JSONEncoder().encode(req)
        var parser = FrameParser()
        var exitEvent: SandboxEvent?
        var errorBody: [UInt8] = []
        let response = try client.stream("POST", "/v1/sandboxes", body: Array(body)) { bytes in
            if exitEvent == nil && parser.failedStatus { errorBody += bytes; return }
            try parser.feed(bytes) { kind, payload in
                switch kind {
                case .stdout: writeAll(1, payload)
                case .stderr: writeAll(2, payload)
                case .event:
                    let e = try JSONDecoder().decode(SandboxEvent.self, from: Data(payload))
                    if e.event == "exit" { exitEvent = e }
                    if e.event == "error", let d = e.error { throw HearthError(HearthError.Code(rawValue: d.code) ?? .internal, d.message) }
                }
            }
        } onHead: { status in
            parser.failedStatus = status != 200
        }
        if response.status != 200 {
            throw apiError(DaemonClient.Response(status: response.status, headers: response.headers, body: errorBody))
        }
        guard let e = exitEvent else {
            throw HearthError(.unavailable, "hearthd ended the sandbox stream without an exit status")
        }
        if let message = e.message, e.oomKilled == true || e.ephemeralStorageExceeded == true {
            writeAll(2, Array("hearth: \(message)\n".utf8))
        }
        return e.exitCode ?? 125
    }
}

/// Splits the sandbox stream into (kind, payload) frames.
struct FrameParser {
    var buffer: [UInt8] = []
    var failedStatus = false

    mutating func feed(_ bytes: [UInt8], _ handle: (StreamFrameKind, [UInt8]) throws -> Void) throws {
        buffer += bytes
        var offset = 0
        while buffer.count - offset >= 5 {
            let len = Int(buffer[offset + 1]) << 24 | Int(buffer[offset + 2]) << 16 | Int(buffer[offset + 3]) << 8 | Int(buffer[offset + 4])
            guard buffer.count - offset - 5 >= len else { break }
            guard let kind = StreamFrameKind(rawValue: buffer[offset]) else {
                throw HearthError(.internal, "hearthd sent an unknown stream frame kind \(buffer[offset])")
            }
            try handle(kind, Array(buffer[(offset + 5)..<(offset + 5 + len)]))
            offset += 5 + len
        }
        if offset > 0 { buffer.removeFirst(offset) }
    }
}

func writeAll(_ fd: Int32, _ bytes: [UInt8]) {
    var off = 0
    while off < bytes.count {
        let n = bytes[off...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        if n < 0 {
            if errno == EINTR { continue }
            return
        }
        off += n
    }
}
