import ArgumentParser
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import Glibc
import HearthClient
import HearthCore

extension ImageCommand {
    struct Pull: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Pull an image from an OCI registry (hearthd fetches it; hearth login for private ones).",
            discussion: "REFERENCE is read as Docker reads it: python:3.11-slim is docker.io/library/python:3.11-slim; host:port/repo:tag@sha256:… pulls by digest. The image is stored under its familiar name (python:3.11-slim), or NAME@sha256:… for a digest reference.")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "[HOST[:PORT]/]NAME[:TAG][@sha256:DIGEST]") var reference: String
        @Option(help: "NAME:TAG to store it under instead.") var name: String?
        @Flag(name: .shortAndLong, help: "Print only the result, no progress.") var quiet = false

        func run() throws {
            do {
                let body = try JSONEncoder().encode(ImagePullRequest(reference: reference, name: name))
                let view = PullProgress(enabled: !quiet)
                var lines = NDJSONLines()
                var result: ImageSummary?
                var failure: HearthError?
                var errorBody: [UInt8] = []
                var ok = true
                let r = try global.client.stream("POST", "/v1/images/pull", body: Array(body), onData: { bytes in
                    if !ok { errorBody += bytes; return }
                    for line in lines.feed(bytes) {
                        guard let e = try? JSONDecoder().decode(ImagePullEvent.self, from: Data(line)) else { continue }
                        switch e.event {
                        case "done": result = e.image
                        case "error":
                            if let d = e.error { failure = HearthError(HearthError.Code(rawValue: d.code) ?? .internal, d.message) }
                        default: view.show(e)
                        }
                    }
                }, onHead: { ok = $0 == 200 })
                view.finish()
                if r.status != 200 { throw apiError(.init(status: r.status, headers: r.headers, body: errorBody)) }
                if let failure { throw failure }
                guard let image = result else { throw HearthError(.internal, "hearthd ended the pull without a result") }
                print("pulled \(image.name) (\(image.id.prefix(19)), \(image.layers) layer\(image.layers == 1 ? "" : "s"), \(formatBytes(image.size))\(view.tally))")
            } catch { throw failure(error) }
        }
    }
}

struct Login: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Check a user name and password against a registry and save them in hearthd (0600, never shown again).")
    @OptionGroup var global: GlobalOptions
    @Argument(help: "HOST[:PORT] as image references name the registry.") var registry: String
    @Option(name: .shortAndLong, help: "User name (asked for when absent).") var username: String?
    @Flag(help: "Read the password from standard input (one line) instead of asking for it.") var passwordStdin = false

    func run() throws {
        do {
            let user = try username ?? prompt("Username: ", echo: true)
            let password: String
            if passwordStdin {
                var text = String(decoding: try BundleWriter.readFile("-"), as: UTF8.self)
                while text.hasSuffix("\n") || text.hasSuffix("\r") { text.removeLast() }
                password = text
            } else {
                password = try prompt("Password: ", echo: false)
            }
            let body = try JSONEncoder().encode(RegistryLoginRequest(registry: registry, username: user, password: password))
            let r = try global.client.request("POST", "/v1/registries/login", body: Array(body))
            guard r.status == 200 else { throw apiError(r) }
            let result = try JSONDecoder().decode(RegistryLoginResult.self, from: Data(r.body))
            print(result.message)
        } catch { throw failure(error) }
    }

    /// Reads a line from the terminal; without echo for a password.
    private func prompt(_ text: String, echo: Bool) throws -> String {
        let tty = open("/dev/tty", O_RDWR | O_CLOEXEC | O_NOCTTY)
        guard tty >= 0 else {
            throw HearthError.invalid("no terminal to ask for the \(echo ? "user name" : "password") on; pass \(echo ? "--username" : "--password-stdin")")
        }
        defer { close(tty) }
        writeAll(tty, Array(text.utf8))
        var saved = termios()
        let quiet = !echo && tcgetattr(tty, &saved) == 0
        if quiet {
            var noEcho = saved
            noEcho.c_lflag &= ~tcflag_t(ECHO)
            _ = tcsetattr(tty, TCSAFLUSH, &noEcho)
        }
        defer {
            if quiet {
                _ = tcsetattr(tty, TCSAFLUSH, &saved)
                writeAll(tty, [10])
            }
        }
        var line: [UInt8] = []
        var byte: UInt8 = 0
        while true {
            let n = read(tty, &byte, 1)
            if n < 0 && errno == EINTR { continue }
            if n <= 0 || byte == 10 { break }
            if byte != 13 { line.append(byte) }
            if line.count > 4096 { throw HearthError.invalid("that line is longer than 4096 bytes") }
        }
        return String(decoding: line, as: UTF8.self)
    }
}

struct Logout: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Remove a registry's saved credentials from hearthd.")
    @OptionGroup var global: GlobalOptions
    @Argument(help: "HOST[:PORT]") var registry: String

    func run() throws {
        do {
            let body = try JSONEncoder().encode(RegistryLogoutRequest(registry: registry))
            let r = try global.client.request("POST", "/v1/registries/logout", body: Array(body))
            guard r.status == 200 else { throw apiError(r) }
            print(try JSONDecoder().decode(RegistryLoginResult.self, from: Data(r.body)).message)
        } catch { throw failure(error) }
    }
}

/// Splits a byte stream into lines.
struct NDJSONLines {
    private var pending: [UInt8] = []

    mutating func feed(_ bytes: [UInt8]) -> [[UInt8]] {
        pending += bytes
        var out: [[UInt8]] = []
        while let nl = pending.firstIndex(of: 10) {
            out.append(Array(pending[..<nl]))
            pending.removeFirst(nl + 1)
        }
        return out
    }
}

/// One line per layer: state, bytes, rate and ETA. On a terminal the
/// lines are redrawn in place; otherwise a line is printed when a layer
/// changes state, and every few seconds while it downloads.
final class PullProgress {
    private struct Layer {
        var digest: String
        var size: Int64
        var bytes: Int64
        var state: String
        var started: Double?
        var printed: Double = 0
    }

    private let enabled: Bool
    private let tty: Bool
    private var layers: [Layer] = []
    private var drawn = 0
    private var header: String?

    init(enabled: Bool) {
        self.enabled = enabled
        tty = isatty(1) == 1
    }

    /// ", 2 fetched, 1 cached" once the pull has said.
    var tally: String {
        let cached = layers.filter { $0.state == "cached" }.count
        let fetched = layers.filter { $0.state == "done" }.count
        guard !layers.isEmpty else { return "" }
        return ", \(fetched) fetched, \(cached) already present"
    }

    func show(_ e: ImagePullEvent) {
        let now = Self.now()
        switch e.event {
        case "resolved":
            layers = []
            header = "\(e.reference ?? "image"): \(e.manifestDigest ?? "")"
            if enabled && !tty, let header { writeAll(1, Array((header + "\n").utf8)) }
        case "layer":
            guard let digest = e.digest else { return }
            let state = e.state ?? "?"
            var changed = false
            if let i = layers.firstIndex(where: { $0.digest == digest }) {
                changed = layers[i].state != state
                layers[i].state = state
                layers[i].bytes = e.bytes ?? layers[i].bytes
                if state == "downloading" && layers[i].started == nil { layers[i].started = now }
            } else {
                layers.append(Layer(digest: digest, size: e.size ?? 0, bytes: e.bytes ?? 0, state: state,
                                    started: state == "downloading" ? now : nil))
                changed = true
            }
            guard enabled, let i = layers.firstIndex(where: { $0.digest == digest }) else { return }
            if tty {
                redraw(now)
            } else if changed || now - layers[i].printed >= 2 {
                layers[i].printed = now
                writeAll(1, Array((line(layers[i], now) + "\n").utf8))
            }
        default:
            break
        }
    }

    func finish() {
        guard enabled, tty else { return }
        redraw(Self.now())
    }

    private func redraw(_ now: Double) {
        var out = ""
        if drawn > 0 { out += "\u{1B}[\(drawn)A" }
        var lines = layers.map { line($0, now) }
        if let header { lines.insert(header, at: 0) }
        for l in lines { out += "\r\u{1B}[K" + l + "\n" }
        drawn = lines.count
        writeAll(1, Array(out.utf8))
    }

    private func line(_ l: Layer, _ now: Double) -> String {
        let id = String(l.digest.prefix(19))
        let size = formatBytes(l.size)
        switch l.state {
        case "downloading":
            var s = "\(id)  downloading  \(formatBytes(l.bytes)) / \(size)"
            if let started = l.started, now - started > 0.05, l.bytes > 0 {
                let rate = Double(l.bytes) / (now - started)
                s += "  \(formatBytes(Int64(rate)))/s"
                let left = Double(l.size - l.bytes) / rate
                s += "  ETA \(Self.duration(left))"
            }
            return s
        case "cached": return "\(id)  already present  \(size)"
        case "waiting": return "\(id)  waiting  \(size)"
        case "unpacking": return "\(id)  unpacking  \(size)"
        case "done": return "\(id)  done  \(size)"
        default: return "\(id)  \(l.state)"
        }
    }

    static func duration(_ seconds: Double) -> String {
        guard seconds.isFinite, seconds >= 0 else { return "?" }
        let s = Int(seconds.rounded(.up))
        if s < 60 { return "\(s)s" }
        func two(_ n: Int) -> String { n < 10 ? "0\(n)" : "\(n)" }
        if s < 3600 { return "\(s / 60)m\(two(s % 60))s" }
        return "\(s / 3600)h\(two((s % 3600) / 60))m"
    }

    static func now() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }
}
