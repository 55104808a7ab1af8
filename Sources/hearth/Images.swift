import ArgumentParser
import Foundation
import Glibc
import HearthClient
import HearthCore

struct ImageCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "image",
        abstract: "Import, list and remove images.",
        subcommands: [Import.self, List.self, Remove.self]
    )

    struct Import: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Import an OCI image layout directory, an OCI archive or a `docker save` tarball."
        )
        @OptionGroup var global: GlobalOptions
        @Argument(help: "Path of the image.") var path: String
        @Option(help: "NAME:TAG to store it under (default: the name recorded in the image).") var name: String?

        func run() throws {
            let absolute = path.hasPrefix("/") ? path : FileManager.default.currentDirectoryPath + "/" + path
            let showProgress = isatty(1) == 1
            do {
                let body = try JSONEncoder().encode(ImageImportRequest(path: (absolute as NSString).standardizingPath, name: name))
                var pending: [UInt8] = []
                var result: ImageSummary?
                var failure: HearthError?
                var errorBody: [UInt8] = []
                var ok = true
                let r = try global.client.stream("POST", "/v1/images/import", body: Array(body)) { bytes in
                    if !ok { errorBody += bytes; return }
                    pending += bytes
                    while let nl = pending.firstIndex(of: 10) {
                        let line = Array(pending[..<nl])
                        pending.removeFirst(nl + 1)
                        guard let e = try? JSONDecoder().decode(ImageImportEvent.self, from: Data(line)) else { continue }
                        switch e.event {
                        case "progress" where showProgress:
                            let mb = Double(e.bytes ?? 0) / 1_048_576
                            let total = e.totalBytes.map { String(format: " / %.1f MiB", Double($0) / 1_048_576) } ?? ""
                            let line = String(format: "\r\u{1B}[Kimporting: layer %d/%d, %.1f MiB", e.layer ?? 0, e.layers ?? 0, mb) + total
                            writeAll(1, Array(line.utf8))
                        case "done": result = e.image
                        case "error":
                            if let d = e.error { failure = HearthError(HearthError.Code(rawValue: d.code) ?? .internal, d.message) }
                        default: break
                        }
                    }
                } onHead: { status in ok = status == 200 }
                if showProgress { writeAll(1, Array("\r\u{1B}[K".utf8)) }
                if r.status != 200 { throw apiError(.init(status: r.status, headers: r.headers, body: errorBody)) }
                if let failure { throw failure }
                guard let image = result else { throw HearthError(.internal, "hearthd ended the import without a result") }
                print("imported \(image.name) (\(image.id.prefix(19)), \(image.layers) layer\(image.layers == 1 ? "" : "s"), \(formatBytes(image.size)))")
            } catch { throw failure(error) }
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(commandName: "ls", abstract: "List images.")
        @OptionGroup var global: GlobalOptions
        @Flag(help: "Print JSON.") var json = false

        func run() throws {
            do {
                let r = try global.client.request("GET", "/v1/images")
                guard r.status == 200 else { throw apiError(r) }
                if json { writeAll(1, r.body + [10]); return }
                let images = try JSONDecoder().decode([ImageSummary].self, from: Data(r.body))
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
                let escaped = name.split(separator: "/").map { $0.addingPercentEncoding(withAllowedCharacters: .urlPathAllowed) ?? String($0) }
                let r = try global.client.request("DELETE", "/v1/images/" + escaped.joined(separator: "/"))
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
    return i == 0 ? "\(n) B" : String(format: "%.1f %@", v, units[i])
}

func printTable(_ rows: [[String]]) {
    guard let first = rows.first else { return }
    var widths = first.map(\.count)
    for r in rows { for (i, c) in r.enumerated() where i < widths.count { widths[i] = max(widths[i], c.count) } }
    for r in rows {
        let line = r.enumerated().map { i, c in i == r.count - 1 ? c : c.padding(toLength: widths[i] + 2, withPad: " ", startingAt: 0) }
        print(line.joined())
    }
}
