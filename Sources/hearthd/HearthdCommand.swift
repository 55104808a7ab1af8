import ArgumentParser
import Foundation
import HearthCore
import HearthServer
import Logging

@main
struct HearthdCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "hearthd",
        abstract: "The Hearth daemon: builds isolated replicas and serves the API on a Unix socket."
    )

    @Option(name: .long, help: "State root (images, layers, replicas).")
    var root: String = HearthDefaults.stateRoot

    @Option(name: .long, help: "Unix socket to listen on.")
    var socket: String = HearthDefaults.socketPath

    @Option(name: .long, help: "Static hearth-init binary (default: next to hearthd).")
    var `init`: String?

    @Option(name: .long, help: "Name of the cgroup subtree (default: derived from --root).")
    var cgroupName: String?

    @Option(name: .long, help: "Seconds running replicas get to finish on SIGTERM.")
    var shutdownTimeout: Int = 10

    @Option(name: .long, help: "trace, debug, info, notice, warning, error or critical.")
    var logLevel: String = "info"

    func run() async throws {
        guard let level = Logger.Level(rawValue: logLevel) else {
            throw ValidationError("--log-level: \"\(logLevel)\" is not a level; use trace, debug, info, notice, warning, error or critical")
        }
        LoggingSystem.bootstrap { StreamLogHandler.standardError(label: $0) }
        var options = DaemonOptions(initBinary: self.`init` ?? Self.defaultInit())
        options.stateRoot = (root as NSString).standardizingPath
        options.socketPath = socket
        options.cgroupSubtree = cgroupName
        options.shutdownDeadline = .seconds(shutdownTimeout)
        options.logLevel = level
        do {
            try await Daemon.run(options)
        } catch let e as HearthError {
            FileHandle.standardError.write(Data("hearthd: \(e.message)\n".utf8))
            throw ExitCode(1)
        } catch let e as SystemError {
            FileHandle.standardError.write(Data("hearthd: \(e.description)\n".utf8))
            throw ExitCode(1)
        }
    }

    static func defaultInit() -> String {
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? ""
        let beside = (exe as NSString).deletingLastPathComponent + "/hearth-init"
        if FileManager.default.fileExists(atPath: beside) { return beside }
        return "/usr/local/libexec/hearth/hearth-init"
    }
}
