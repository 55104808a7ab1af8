import ArgumentParser
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import Glibc
import HearthClient
import HearthCore
import HearthOS

struct ImageCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "image",
        abstract: "Import, pull, build, list and remove images.",
        subcommands: [Import.self, Pull.self, Build.self, List.self, Remove.self]
    )

    struct Import: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Import an OCI image layout directory, an OCI archive, a `docker save` tarball, or a root filesystem (a directory, or a tar of one such as `docker export` writes; --name required)."
        )
        @OptionGroup var global: GlobalOptions
        @Argument(help: "Path of the image.") var path: String
        @Option(help: "NAME:TAG to store it under (default: the name recorded in the image).") var name: String?
        @Flag(help: "Send the image's bytes even when run as root (a non-root user's import, and one to a remote daemon, always does; root's default is to let hearthd read the path).")
        var stream = false

        func run() throws {
            let absolute = path.hasPrefix("/") ? path : FileManager.default.currentDirectoryPath + "/" + path
            let showProgress = isatty(1) == 1
            // hearthd opens a path only for a root peer (it reads it as
            // root): everyone else sends the bytes, and so does anyone
            // talking to a remote daemon (the path is on this machine).
            var local = true
            if case .tcp = try global.client.endpoint { local = false }
            let byPath = !stream && geteuid() == 0 && local
            do {
                var pending: [UInt8] = []
                var result: ImageSummary?
                var failure: HearthError?
                var errorBody: [UInt8] = []
                var ok = true
                let onData: ([UInt8]) throws -> Void = { bytes in
                    if !ok { errorBody += bytes; return }
                    pending += bytes
                    while let nl = pending.firstIndex(of: 10) {
                        let line = Array(pending[..<nl])
                        pending.removeFirst(nl + 1)
                        guard let e = try? JSONDecoder().decode(ImageImportEvent.self, from: Data(line)) else { continue }
                        switch e.event {
                        case "progress" where showProgress:
                            let mb = Double(e.bytes ?? 0) / 1_048_576
                            let total = e.totalBytes.map { " / " + oneDecimal(Double($0) / 1_048_576) + " MiB" } ?? ""
                            let line = "\r\u{1B}[Kimporting: layer \(e.layer ?? 0)/\(e.layers ?? 0), \(oneDecimal(mb)) MiB" + total
                            writeAll(1, Array(line.utf8))
                        case "done": result = e.image
                        case "error":
                            if let d = e.error { failure = HearthError(HearthError.Code(rawValue: d.code) ?? .internal, d.message) }
                        default: break
                        }
                    }
                }
                let onHead: (Int) -> Void = { status in ok = status == 200 }
                let r: DaemonClient.Response
                if byPath {
                    let body = try JSONEncoder().encode(ImageImportRequest(path: normalizePath(absolute), name: name))
                    r = try global.client.stream("POST", "/v1/images/import", body: Array(body), onData: onData, onHead: onHead)
                } else {
                    let directory = try ArchiveStreamer.isDirectory(absolute)
                    let rootfs = directory && FS.isPlainRootfs(absolute)
                    if rootfs && name == nil {
                        throw HearthError.invalid("\(path) is a root filesystem directory, which carries no image name; pass one: hearth image import \(path) --name NAME[:TAG]")
                    }
                    var target = "/v1/images/import"
                    if let name {
                        target += "?name=" + ImageCommand.percentEncoded(name)
                    }
                    var skipped = 0
                    defer {
                        if skipped > 0 {
                            writeAll(2, Array("hearth: left out \(skipped) device node(s), FIFO(s) or socket(s) of \(path) (a replica's /dev is its own)\n".utf8))
                        }
                    }
                    r = try global.client.upload("POST", target, contentType: "application/x-tar", produce: { emit in
                        if rootfs {
                            skipped = try ArchiveStreamer.streamRootfsTar(directory: absolute, emit: emit)
                        } else if directory {
                            try ArchiveStreamer.streamTar(directory: absolute, emit: emit)
                        } else {
                            try ArchiveStreamer.streamFile(absolute, emit: emit)
                        }
                    }, onData: onData, onHead: onHead)
                }
                if showProgress { writeAll(1, Array("\r\u{1B}[K".utf8)) }
                if r.status != 200 { throw apiError(.init(status: r.status, headers: r.headers, body: errorBody)) }
                if let failure { throw failure }
                guard let image = result else { throw HearthError(.internal, "hearthd ended the import without a result") }
                print("imported \(image.name) (\(image.id.prefix(19)), \(image.layers) layer\(image.layers == 1 ? "" : "s"), \(formatBytes(image.size)))")
            } catch { throw failure(error) }
        }
    }

    /// RFC 3986 unreserved characters stay; every other byte is %XX.
    static func percentEncoded(_ s: String) -> String {
        var out = ""
        for b in s.utf8 {
            let c = Character(Unicode.Scalar(b))
            if b < 128 && (c.isLetter || c.isNumber || "-._~".contains(c)) {
                out.append(c)
            } else {
                out += "%" + (b < 16 ? "0" : "") + String(b, radix: 16, uppercase: true)
            }
        }
        return out
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "ls", abstract: "List images.")
        @OptionGroup var global: GlobalOptions
        @Flag(help: "Print JSON.") var json = false

        func run() throws {
            do {
                guard let images = try global.listing("/v1/images", as: [ImageSummary].self, json: json) else { return }
                var rows = [["NAME", "ID", "LAYERS", "SIZE", "CREATED"]]
                for i in images.sorted(by: { $0.name < $1.name }) {
                    let id = i.id.hasPrefix("sha256:") ? String(i.id.dropFirst(7).prefix(12)) : String(i.id.prefix(12))
                    rows.append([i.name, id, "\(i.layers)", formatBytes(i.size), i.created ?? "-"])
                }
                printTable(rows)
            } catch { throw failure(error) }
        }
    }

    struct Remove: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "rm", abstract: "Remove an image (and layers no other image uses).")
        @OptionGroup var global: GlobalOptions
        @Argument(help: "NAME[:TAG]") var name: String

        func run() throws {
            do {
                let r = try global.client.request("DELETE", "/v1/images/" + percentEncodePath(name))
                guard r.status == 204 || r.status == 200 else { throw apiError(r) }
                print("removed \(name)")
            } catch { throw failure(error) }
        }
    }
}

func formatBytes(_ n: Int64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"]
    var v = Double(n), i = 0
    while v >= 1024 && i < units.count - 1 { v /= 1024; i += 1 }
    return i == 0 ? "\(n) B" : "\(oneDecimal(v)) \(units[i])"
}

func oneDecimal(_ v: Double) -> String {
    let tenths = Int((v * 10).rounded())
    return "\(tenths / 10).\(tenths % 10)"
}

/// "/a/./b/../c" → "/a/c" (lexically, as the daemon will see it).
func normalizePath(_ path: String) -> String {
    var parts: [Substring] = []
    for c in path.split(separator: "/") {
        if c == "." { continue }
        if c == ".." { _ = parts.popLast(); continue }
        parts.append(c)
    }
    return "/" + parts.joined(separator: "/")
}

/// Keeps unreserved characters, "/", ":" and "@"; percent-encodes the rest.
func percentEncodePath(_ s: String) -> String {
    var out = ""
    for b in s.utf8 {
        let c = Character(Unicode.Scalar(b))
        if c.isASCII && (c.isLetter || c.isNumber || "-._~/:@".contains(c)) {
            out.append(c)
        } else {
            let hex = String(b, radix: 16, uppercase: true)
            out += "%" + (hex.count == 1 ? "0" + hex : hex)
        }
    }
    return out
}

func printTable(_ rows: [[String]]) {
    guard let first = rows.first else { return }
    var widths = first.map(\.count)
    for r in rows { for (i, c) in r.enumerated() where i < widths.count { widths[i] = max(widths[i], c.count) } }
    for r in rows {
        let line = r.enumerated().map { i, c in i == r.count - 1 ? c : c + String(repeating: " ", count: widths[i] + 2 - c.count) }
        print(line.joined())
    }
}
