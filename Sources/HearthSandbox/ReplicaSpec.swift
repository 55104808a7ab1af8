import CHearth
import Foundation
import Glibc
import HearthCore
import HearthImage
import Synchronization

public enum NetworkMode: String, Sendable, Codable {
    /// none: loopback only. egress: loopback, and the daemon's filtering
    /// proxy at 127.0.0.1:3128 (Egress.swift). host: the host's namespace.
    case none, host, egress
}

/// A host path mounted into a replica.
public struct BindMount: Sendable, Equatable {
    public var source: String
    public var target: String
    public var readOnly: Bool
    /// A detached mount tree (an fd the caller keeps open until the spawn
    /// returns) attached instead of binding `source` by path; its flags
    /// were set when it was made.
    public var tree: Int32?
    public init(source: String, target: String, readOnly: Bool, tree: Int32? = nil) {
        self.source = source; self.target = target; self.readOnly = readOnly; self.tree = tree
    }
}

/// What one replica is: its image, command, limits and isolation settings.
public struct ReplicaSpec: Sendable {
    public var name: String
    public var image: ResolvedImage
    public var argv: [String]
    public var env: [String] = []
    public var workdir: String?
    public var limits: CgroupLimits
    public var network: NetworkMode = .none
    /// nil: unconfined.
    public var seccomp: SeccompProfile? = SeccompProfile.default
    public var capabilities: CapabilitySet = .dockerDefault
    public var mounts: [BindMount] = []
    /// Devices granted beyond `DeviceRule.standard` (nothing grants any yet;
    /// GPUs will). Everything else is refused by the replica's cgroup.
    public var devices: [DeviceRule] = []
    /// Device nodes made in the replica's /dev (CDI devices); each needs a
    /// rule in `devices` to be opened.
    public var deviceNodes: [DeviceNode] = []
    /// (target, link) symlinks made in the root after the mounts (CDI
    /// `create-symlinks`); missing parent directories are made.
    public var symlinks: [(target: String, link: String)] = []
    /// CDI createContainer hooks run on the host while the replica waits
    /// with its root complete (ContainerHooks; `--allow-privileged` only).
    public var hooks: [CDISpec.Hook] = []
    /// Extra pipes for the child: (fd in the daemon, fd number in the replica).
    public var extraFDs: [(source: Int32, target: Int32)] = []
    /// Host paths that belong to this replica and go with it (e.g. its secrets).
    public var cleanupPaths: [String] = []
    /// Run in a user namespace of its own: root inside is an unprivileged
    /// host uid from a range of the replica's (UserNamespaces), and the
    /// image layers are idmapped mounts, so nothing is chowned on disk.
    public var userNamespace = false
    /// Host paths made for this replica whose owners are ids inside it
    /// (its secrets): shifted into its host range when it has a user namespace.
    public var idShiftedPaths: [String] = []
    /// Bytes the replica may write to its writable layer before it is
    /// evicted (`ephemeral_storage`); nil: not measured.
    public var ephemeralStorageLimit: Int64?

    public init(name: String, image: ResolvedImage, argv: [String], limits: CgroupLimits) {
        self.name = name; self.image = image; self.argv = argv; self.limits = limits
    }
}

public struct StartPhase: Sendable, CustomStringConvertible {
    public var name: String
    public var duration: Duration
    public var description: String {
        let (s, atto) = duration.components
        return "\(name) \((s * 1_000_000) + atto / 1_000_000_000_000) µs"
    }
}

/// Output of a replica's command, as it arrives.
public enum OutputChunk: Sendable {
    case stdout([UInt8])
    case stderr([UInt8])
}
