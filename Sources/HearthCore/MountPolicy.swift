/// Which host directories environments may mount (`hearthd --allow-mount
/// DIR`, repeatable): a mount's `host_path` must be one of them or lie
/// below one. Pure logic; the daemon canonicalizes the prefixes at start,
/// and opens each host path beneath its prefix (HearthOS.HostPath) so that
/// no symlink on the way can lead out.
public struct MountPolicy: Sendable, Equatable {
    public var allowed: [String]

    public init(allowed: [String]) { self.allowed = allowed }

    public static let flag = "--allow-mount"

    /// The allowed prefix each of `e`'s mounts lies under (the longest), in
    /// order; `.forbidden` naming the first that lies under none.
    public func prefixes(for e: EffectiveEnvironment) throws -> [String] {
        try (e.mounts ?? []).map { m in
            let matching = allowed.filter { Self.isUnder(m.hostPath, $0) }
            guard let prefix = matching.max(by: { $0.count < $1.count }) else {
                let allowedText = allowed.isEmpty
                    ? "hearthd allows none; an operator starts it with \(Self.flag) DIR to allow DIR"
                    : "hearthd \(Self.flag): \(allowed.joined(separator: ", "))"
                throw HearthError(.forbidden, "environment \"\(e.name)\": mounts: host_path \(m.hostPath.debugDescription) (at \(m.path)) is not under a directory hearthd lets environments mount (\(allowedText))")
            }
            return prefix
        }
    }

    /// `path` is `prefix` or below it, component-wise.
    public static func isUnder(_ path: String, _ prefix: String) -> Bool {
        if prefix == "/" { return path.hasPrefix("/") }
        let p = prefix.hasSuffix("/") ? String(prefix.dropLast()) : prefix
        return path == p || path.hasPrefix(p + "/")
    }
}
