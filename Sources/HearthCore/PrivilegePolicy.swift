/// What a client of the socket may ask for without the operator's consent.
///
/// Every setting listed here takes away one of the sandbox's walls, so a
/// client that may set it can reach the host: `seccomp: unconfined` and a
/// custom profile can allow mount, unshare, bpf and the rest; added
/// capabilities give root in the replica host-level powers; `network: host`
/// shares the host's interfaces and its abstract Unix sockets (the daemon's
/// own socket included, if it were abstract); a profile *path* makes root
/// read a host file the client names. They are refused unless the daemon
/// runs with `--allow-privileged`. Pure logic: the daemon applies it to
/// environment specs and sandbox requests.
public struct PrivilegePolicy: Sendable, Equatable {
    public var allowPrivileged: Bool

    public init(allowPrivileged: Bool) { self.allowPrivileged = allowPrivileged }

    public static let flag = "--allow-privileged"

    /// One privileged setting: the field as the user wrote it and why it is privileged.
    public struct Violation: Sendable, Equatable, CustomStringConvertible {
        public var field: String
        public var value: String
        public var why: String
        public var description: String { "\(field): \(value) \(why)" }
    }

    /// The privileged settings of an environment, in field order.
    public static func violations(of e: EffectiveEnvironment) -> [Violation] {
        var out: [Violation] = []
        switch e.seccomp {
        case .default: break
        case .unconfined:
            out.append(Violation(field: "seccomp", value: "unconfined",
                                 why: "turns the syscall filter off (mount, unshare, bpf, keyctl … reach the kernel)"))
        case .profile(let path):
            out.append(Violation(field: "seccomp", value: path.debugDescription,
                                 why: "loads a custom profile from a host path (it may allow any syscall, and the daemon reads the file as root)"))
        }
        if !e.capabilities.add.isEmpty {
            out.append(Violation(field: "capabilities.add", value: "[" + e.capabilities.add.joined(separator: ", ") + "]",
                                 why: "grants root in the replica capabilities beyond Docker's default set"))
        }
        if e.network == .host {
            out.append(Violation(field: "network", value: "host",
                                 why: "shares the host's network namespace (its interfaces, ports and abstract sockets)"))
        }
        return out
    }

    /// The privileged settings of a one-shot sandbox request.
    public static func violations(of r: SandboxRequest) -> [Violation] {
        var out: [Violation] = []
        switch r.seccomp ?? "default" {
        case "unconfined":
            out.append(Violation(field: "seccomp", value: "unconfined",
                                 why: "turns the syscall filter off (mount, unshare, bpf, keyctl … reach the kernel)"))
        case "profile":
            out.append(Violation(field: "seccomp", value: "a custom profile",
                                 why: "replaces the default syscall filter (it may allow any syscall)"))
        default: break
        }
        if r.network == "host" {
            out.append(Violation(field: "network", value: "host",
                                 why: "shares the host's network namespace (its interfaces, ports and abstract sockets)"))
        }
        return out
    }

    /// Throws `.forbidden` naming every privileged field and the flag,
    /// unless privileged settings are allowed.
    public func check(_ violations: [Violation], subject: String) throws {
        guard !allowPrivileged, !violations.isEmpty else { return }
        let list = violations.map(\.description).joined(separator: "; ")
        throw HearthError(.forbidden,
            "\(subject): \(list). \(violations.count == 1 ? "This setting is" : "These settings are") privileged: "
            + "hearthd refuses \(violations.count == 1 ? "it" : "them") unless it runs with \(Self.flag) (see docs/security.md)")
    }
}
