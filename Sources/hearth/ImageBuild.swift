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
    struct Build: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Build an image from an ImageSpec YAML file (flytekit's fields); prints its name.",
            discussion: """
                requirements is a requirements.txt and copy a list of files or directories, both relative to \
                the spec file; copied paths land under /root. A step whose inputs did not change is not run again.
                """
        )
        @OptionGroup var global: GlobalOptions
        @Option(name: .shortAndLong, help: "ImageSpec file (YAML or JSON).") var file: String
        @Option(help: "Tag for the image (default: a hash of the spec).") var tag: String?
        @Flag(help: "Print each step's output.") var verbose = false

        func run() throws {
            do {
                let text = String(decoding: try BundleWriter.readFile(file), as: UTF8.self)
                let parsed = try ImageSpecFile.parse(text, source: file)
                var spec = parsed.spec
                let absolute = file.hasPrefix("/") ? file : FileManager.default.currentDirectoryPath + "/" + file
                let normalized = normalizePath(absolute)
                let base = normalized.split(separator: "/").dropLast().reduce("") { $0 + "/" + $1 }
                if let path = parsed.requirementsPath {
                    let full = path.hasPrefix("/") ? path : base + "/" + path
                    let bytes = try BundleWriter.readFile(full)
                    guard bytes.count <= ImageBuildSpec.maxRequirementsBytes else {
                        throw HearthError.invalid("requirements: \(full) has \(bytes.count) bytes, more than the \(ImageBuildSpec.maxRequirementsBytes >> 10) KiB a requirements file may have")
                    }
                    spec.requirements = String(decoding: bytes, as: UTF8.self)
                }
                if !parsed.copyPaths.isEmpty {
                    let tar = try BundleWriter.tar(paths: parsed.copyPaths, base: base)
                    let sha = ContentHash.sha256Hex(tar)
                    let r = try global.client.request("PUT", "/v1/code/" + sha, body: tar, contentType: "application/x-tar")
                    guard r.status == 200 || r.status == 201 else { throw apiError(r) }
                    spec.copy = ImageBuildSpec.Copy(bundle: sha)
                }
                if let tag { spec.tag = tag }
                try stream(ImageBuildRequest(spec: spec, verbose: verbose))
            } catch { throw failure(error) }
        }

        /// Prints a line per step (`[2/3] uv pip install pandas … 41.2 s`),
        /// the output with --verbose, then the image's name.
        private func stream(_ request: ImageBuildRequest) throws {
            var pending: [UInt8] = []
            var errorBody: [UInt8] = []
            var ok = true
            var result: ImageSummary?
            var failure: HearthError?
            var open = false  // a step line waits for its end
            var total = 0
            let onData: ([UInt8]) throws -> Void = { bytes in
                if !ok { errorBody += bytes; return }
                pending += bytes
                while let nl = pending.firstIndex(of: 10) {
                    let line = Array(pending[..<nl])
                    pending.removeFirst(nl + 1)
                    guard let e = try? JSONDecoder().decode(ImageBuildEvent.self, from: Data(line)) else { continue }
                    switch e.event {
                    case "start":
                        writeAll(2, Array("building \(e.imageName ?? "?") (\(e.steps ?? 0) step\(e.steps == 1 ? "" : "s"))\n".utf8))
                    case "step":
                        total = e.total ?? total
                        let head = "[\(e.index ?? 0)/\(e.total ?? 0)] \(e.description ?? "")"
                        if verbose && e.cached != true {
                            writeAll(1, Array((head + "\n").utf8))
                        } else {
                            writeAll(1, Array((head + " … ").utf8))
                            open = true
                        }
                    case "pull":
                        writeAll(2, Array("\(e.line ?? "")\n".utf8))
                    case "output":
                        writeAll(1, Array("    \(e.line ?? "")\n".utf8))
                    case "step_done":
                        let how = e.cached == true ? "cached" : oneDecimal(e.seconds ?? 0) + " s"
                        if open {
                            writeAll(1, Array((how + "\n").utf8))
                        } else {
                            writeAll(1, Array("[\(e.index ?? 0)/\(total)] … \(how)\n".utf8))
                        }
                        open = false
                    case "done":
                        result = e.image
                    case "error":
                        if open { writeAll(1, Array("failed\n".utf8)); open = false }
                        if let d = e.error { failure = HearthError(HearthError.Code(rawValue: d.code) ?? .internal, d.message) }
                    default:
                        break
                    }
                }
            }
            let r = try global.client.stream("POST", "/v1/images/build", body: Array(request.json().utf8),
                                             onData: onData, onHead: { ok = $0 == 200 })
            if r.status != 200 { throw apiError(.init(status: r.status, headers: r.headers, body: errorBody)) }
            if let failure { throw failure }
            guard let image = result else { throw HearthError(.internal, "hearthd ended the build without a result") }
            print(image.name)
        }
    }
}
