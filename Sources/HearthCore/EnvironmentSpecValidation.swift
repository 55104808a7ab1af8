extension EnvironmentSpec {
    /// Checks every rule (names, ranges, quantities, variable names, secret
    /// keys, seccomp, capabilities, the pod template, requests within
    /// limits) and returns the spec unchanged, or throws
    /// `HearthError.invalidArgument` naming the field and the rule.
    public func validated() throws -> EnvironmentSpec {
        _ = try check(base: "")
        return self
    }

    /// The spec as the daemon acts on it (see `EffectiveEnvironment`);
    /// throws what `validated()` throws.
    public var effective: EffectiveEnvironment {
        get throws { try check(base: "") }
    }

    /// `effective.identity`: equal for specs that mean the same, different
    /// after any change that matters to the daemon.
    public var identity: String {
        get throws { try effective.identity }
    }

    // MARK: Rules

    static let namePattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
    static let variablePattern = "^[A-Za-z_][A-Za-z0-9_]*$"
    static let secretKeyPattern = "^[A-Za-z0-9_.-]{1,253}$"

    /// Validates with field paths under `base` and merges; one pass so the
    /// rules that need merged values (requests within limits) see them.
    func check(base: String) throws -> EffectiveEnvironment {
        func at(_ field: String) -> String { SpecReader.join(base, field) }
        typealias K = CodingKeys

        guard Self.isDNSLabel(name) else {
            throw SpecReader.error(at(K.name.rawValue), "\"\(name)\" is not a valid environment name; use 1 to 63 lowercase letters, digits and '-', starting and ending with a letter or digit (\(Self.namePattern))")
        }
        if let image = containerImage { try Self.checkImage(image, path: at(K.containerImage.rawValue)) }
        try Self.checkVariables(environment.map { ($0.key, $0.value, "\(at(K.environment.rawValue))[\"\($0.key)\"]") })
        if let replicas {
            let path = at(K.replicas.rawValue)
            guard Self.minReplicasRange.contains(replicas.min) else {
                throw SpecReader.error(path + ".min", "\(replicas.min) is out of range; expected \(Self.minReplicasRange.lowerBound) to \(Self.minReplicasRange.upperBound)")
            }
            guard Self.replicaCountRange.contains(replicas.max) else {
                throw SpecReader.error(path + ".max", "\(replicas.max) is out of range; expected \(Self.replicaCountRange.lowerBound) to \(Self.replicaCountRange.upperBound)")
            }
            guard replicas.min <= replicas.max else {
                throw SpecReader.error(path + ".min", "\(replicas.min) is more than replicas.max (\(replicas.max)); the least replicas cannot exceed the most")
            }
            guard replicaCount == replicas.max else {
                throw SpecReader.error(at(K.replicaCount.rawValue), "\(replicaCount) disagrees with replicas.max (\(replicas.max)); give replicas {min, max}, or replica_count alone for a fixed number")
            }
        }
        guard Self.replicaCountRange.contains(replicaCount) else {
            throw SpecReader.error(at(K.replicaCount.rawValue), "\(replicaCount) is out of range; expected \(Self.replicaCountRange.lowerBound) to \(Self.replicaCountRange.upperBound)")
        }
        guard Self.ttlSecondsRange.contains(ttlSeconds) else {
            throw SpecReader.error(at(K.ttlSeconds.rawValue), "\(ttlSeconds) is out of range; expected \(Self.ttlSecondsRange.lowerBound) to \(Self.ttlSecondsRange.upperBound) seconds (one day)")
        }
        if let scaledownTTLSeconds, !Self.ttlSecondsRange.contains(scaledownTTLSeconds) {
            throw SpecReader.error(at(K.scaledownTTLSeconds.rawValue), "\(scaledownTTLSeconds) is out of range; expected \(Self.ttlSecondsRange.lowerBound) to \(Self.ttlSecondsRange.upperBound) seconds (one day)")
        }
        if let concurrency, !Self.concurrencyRange.contains(concurrency) {
            throw SpecReader.error(at(K.concurrency.rawValue), "\(concurrency) is out of range; expected \(Self.concurrencyRange.lowerBound) to \(Self.concurrencyRange.upperBound) tasks at once in one replica")
        }
        // The primary container's hostPath volumes join `mounts`.
        var allMounts = mounts
        if let podTemplate, let podSpec = podTemplate.podSpec,
           let index = podSpec.containers.firstIndex(where: { $0.name == podTemplate.primaryContainerName }) {
            let base = "\(at(K.podTemplate.rawValue)).pod_spec.containers[\(index)].volumeMounts"
            for (i, vm) in podSpec.containers[index].volumeMounts.enumerated() {
                guard let volume = podSpec.volumes.first(where: { $0.name == vm.name }) else {
                    throw SpecReader.error("\(base)[\(i)].name", "\(vm.name.debugDescription) names no volume in pod_spec.volumes")
                }
                allMounts.append(Mount(hostPath: volume.hostPath, path: vm.mountPath, readOnly: vm.readOnly))
            }
        }
        let effectiveMounts = try Self.checkedMounts(allMounts, path: at(K.mounts.rawValue))
        guard preload.count <= Self.maxPreload else {
            throw SpecReader.error(at(K.preload.rawValue), "\(preload.count) modules; at most \(Self.maxPreload)")
        }
        for (i, module) in preload.enumerated() where !Self.isModuleName(module) {
            throw SpecReader.error("\(at(K.preload.rawValue))[\(i)]", "\(module.debugDescription) is not a module name; expected dotted Python identifiers such as numpy or torch.nn")
        }
        for (i, d) in devices.enumerated() where CDISpec.parseQualified(d) == nil {
            throw SpecReader.error("\(at(K.devices.rawValue))[\(i)]", "\(d.debugDescription) is not a CDI device name; expected vendor.com/class=name, as `hearth devices` lists them")
        }
        for (i, key) in secretRequests.enumerated() where !Self.isSecretKey(key) {
            throw SpecReader.error("\(at(K.secretRequests.rawValue))[\(i)]", "\"\(key)\" is not a valid secret key; use 1 to 253 letters, digits, '_', '.' or '-' (\(Self.secretKeyPattern)), not \".\" or \"..\"")
        }
        if case .profile(let path) = seccomp, !path.hasPrefix("/") || path.contains("\0") {
            throw SpecReader.error(at(K.seccomp.rawValue), "\"\(path)\" is not allowed; \(Seccomp.rule)")
        }
        let capabilities = try Self.normalized(capabilities, path: at(K.capabilities.rawValue))
        if let timeout {
            guard timeout.isFinite, timeout > 0 else {
                throw SpecReader.error(at(K.timeout.rawValue), "\(SpecNode.render(timeout)) is not allowed; a timeout must be more than 0 seconds")
            }
            guard timeout <= Self.maxTimeoutSeconds else {
                throw SpecReader.error(at(K.timeout.rawValue), "\(SpecNode.render(timeout)) seconds is too long; the most is \(SpecNode.render(Self.maxTimeoutSeconds)) (7 days)")
            }
        }
        if let maxTasksPerReplica, maxTasksPerReplica < 1 {
            throw SpecReader.error(at(K.maxTasksPerReplica.rawValue), "\(maxTasksPerReplica) is out of range; expected at least 1")
        }
        guard Self.maxQueueRange.contains(maxQueue) else {
            throw SpecReader.error(at(K.maxQueue.rawValue), "\(maxQueue) is out of range; expected \(Self.maxQueueRange.lowerBound) to \(Self.maxQueueRange.upperBound)")
        }

        for (i, requirement) in packages.enumerated() where !Self.isRequirement(requirement) {
            throw SpecReader.error("\(at(K.packages.rawValue))[\(i)]", "\"\(requirement)\" is not a package requirement; use a distribution name, optionally with one version clause such as numpy>=1.24 or pandas==2.1.4")
        }

        // The primary container's image, env and resources over the environment's.
        var image = containerImage ?? Self.defaultImage
        var variables = environment
        var pullPolicy = imagePullPolicy
        var requested = try Resources.amounts(requests, path: at(K.requests.rawValue))
        var limited = try Resources.amounts(limits, path: at(K.limits.rawValue))
        if let podTemplate, let (index, container) = try podTemplate.checkedPrimary(path: at(K.podTemplate.rawValue)) {
            let containerPath = "\(at(K.podTemplate.rawValue)).pod_spec.containers[\(index)]"
            if let containerImage = container.image { image = containerImage }
            if let policy = container.imagePullPolicy { pullPolicy = policy }
            for variable in container.env { variables[variable.name] = variable.value }
            if let resources = container.resources {
                requested.merge(try Resources.amounts(resources.requests, path: "\(containerPath).resources.requests")) { $1 }
                limited.merge(try Resources.amounts(resources.limits, path: "\(containerPath).resources.limits")) { $1 }
            }
        }
        try Resources.applyDefaults(requested: &requested, limited: &limited)

        var effective = EffectiveEnvironment(
            name: name, image: image, environment: variables,
            cpuRequestMilli: requested["cpu"]?.amount, cpuLimitMilli: limited["cpu"]?.amount,
            memoryRequest: requested["mem"]?.amount, memoryLimit: limited["mem"]?.amount,
            gpus: limited["gpu"]?.amount,
            ephemeralStorageRequest: requested["ephemeral_storage"]?.amount,
            ephemeralStorageLimit: limited["ephemeral_storage"]?.amount,
            replicaCount: replicaCount, ttlSeconds: ttlSeconds, secrets: Array(Set(secretRequests)).sorted(),
            network: network, seccomp: seccomp, capabilities: capabilities, timeoutSeconds: timeout,
            maxTasksPerReplica: maxTasksPerReplica, maxQueue: maxQueue,
            labels: podTemplate?.labels ?? [:], annotations: podTemplate?.annotations ?? [:],
            packages: packages.isEmpty ? nil : Array(Set(packages)).sorted(), userNamespace: userNamespace)
        effective.imagePullPolicy = pullPolicy
        // Each left out when it says what the default says, so that
        // environments without them keep their identity.
        if let replicas, replicas.min != replicas.max { effective.minReplicas = replicas.min }
        if let scaledownTTLSeconds, scaledownTTLSeconds != ttlSeconds { effective.scaledownTTLSeconds = scaledownTTLSeconds }
        if let concurrency, concurrency != 1 { effective.concurrency = concurrency }
        if prewarm == true { effective.prewarm = true }
        if !effectiveMounts.isEmpty { effective.mounts = effectiveMounts }
        if !devices.isEmpty { effective.devices = Array(Set(devices)).sorted() }
        // In the order given (an import may need the one before it), once each.
        var modules: [String] = []
        for m in preload where !modules.contains(m) { modules.append(m) }
        if !modules.isEmpty { effective.preload = modules }
        return effective
    }

    static let maxPreload = 64

    /// `a.b_c.d`: ASCII identifiers joined by dots, each at most 100 bytes.
    static func isModuleName(_ s: String) -> Bool {
        let parts = s.split(separator: ".", omittingEmptySubsequences: false)
        return !parts.isEmpty && parts.allSatisfy { p in
            guard let first = p.utf8.first, p.utf8.count <= 100, first == UInt8(ascii: "_") || (first | 0x20) >= 97 && (first | 0x20) <= 122
            else { return false }
            return p.utf8.allSatisfy { c in
                c == UInt8(ascii: "_") || (c >= 48 && c <= 57) || ((c | 0x20) >= 97 && (c | 0x20) <= 122)
            }
        }
    }

    // MARK: Helpers

    /// Absolute, normalized paths (no `.`, `..` or empty components, no
    /// NUL), targets outside the reserved places, one mount per target;
    /// sorted by target, read-only unless said otherwise.
    static func checkedMounts(_ mounts: [Mount], path: String) throws -> [EffectiveEnvironment.Mount] {
        guard mounts.count <= maxMounts else {
            throw SpecReader.error(path, "\(mounts.count) mounts; at most \(maxMounts)")
        }
        var seen: [String: Int] = [:]
        var out: [EffectiveEnvironment.Mount] = []
        for (i, m) in mounts.enumerated() {
            let at = "\(path)[\(i)]"
            try checkAbsolute(m.hostPath, path: at + ".host_path")
            try checkAbsolute(m.path, path: at + ".path")
            if let reserved = reservedMountPaths.first(where: { m.path == $0 || m.path.hasPrefix($0 + "/") }) {
                throw SpecReader.error(at + ".path", "\"\(m.path)\" is \(m.path == reserved ? "" : "under ")\(reserved), which a mount may not cover (\(reservedMountPaths.joined(separator: ", ")) are the replica's own)")
            }
            if let other = seen[m.path] {
                throw SpecReader.error(at + ".path", "\"\(m.path)\" is already the path of \(path)[\(other)]; one mount per path")
            }
            seen[m.path] = i
            out.append(.init(hostPath: m.hostPath, path: m.path, readOnly: m.readOnly ?? true))
        }
        return out.sorted { $0.path < $1.path }
    }

    private static func checkAbsolute(_ p: String, path: String) throws {
        guard p.hasPrefix("/"), p != "/" else {
            throw SpecReader.error(path, "\(p.debugDescription) is not allowed; expected an absolute path other than /")
        }
        guard !p.utf8.contains(0) else { throw SpecReader.error(path, "the path contains a NUL byte") }
        let parts = p.dropFirst().split(separator: "/", omittingEmptySubsequences: false)
        guard !parts.contains(where: { $0.isEmpty || $0 == "." || $0 == ".." }) else {
            throw SpecReader.error(path, "\(p.debugDescription) is not a normalized path; write it without empty, . or .. components")
        }
        guard p.utf8.count <= 1024 else { throw SpecReader.error(path, "the path is longer than 1024 bytes") }
    }

    static func isDNSLabel(_ s: String) -> Bool {
        let b = Array(s.utf8)
        func alnum(_ c: UInt8) -> Bool { (c >= 0x61 && c <= 0x7a) || (c >= 0x30 && c <= 0x39) }
        guard let first = b.first, let last = b.last, b.count <= 63, alnum(first), alnum(last) else { return false }
        return b.allSatisfy { alnum($0) || $0 == UInt8(ascii: "-") }
    }

    static func isVariableName(_ s: String) -> Bool {
        let b = Array(s.utf8)
        func letter(_ c: UInt8) -> Bool { (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a) || c == UInt8(ascii: "_") }
        guard let first = b.first, letter(first) else { return false }
        return b.allSatisfy { letter($0) || ($0 >= 0x30 && $0 <= 0x39) }
    }

    /// A PEP 508 name (letters, digits, `.`, `_`, `-`, alphanumeric at both
    /// ends) and at most one version clause (`==`, `!=`, `>=`, `<=`, `>`,
    /// `<`, `~=`, then digits, letters, `.`, `*`, `+`, `!`): what the worker's
    /// check understands, and nothing that could smuggle in shell or markers.
    static func isRequirement(_ s: String) -> Bool {
        let b = Array(s.utf8)
        func alnum(_ c: UInt8) -> Bool {
            (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a) || (c >= 0x30 && c <= 0x39)
        }
        var i = 0
        while i < b.count, alnum(b[i]) || b[i] == UInt8(ascii: ".") || b[i] == UInt8(ascii: "_") || b[i] == UInt8(ascii: "-") { i += 1 }
        guard i > 0, i <= 200, alnum(b[0]), alnum(b[i - 1]) else { return false }
        if i == b.count { return true }
        let ops = ["==", "!=", ">=", "<=", "~=", ">", "<"]
        let rest = String(decoding: b[i...], as: UTF8.self)
        guard let op = ops.first(where: { rest.hasPrefix($0) }) else { return false }
        let version = rest.dropFirst(op.count).utf8
        return !version.isEmpty && version.count <= 64 && version.allSatisfy {
            alnum($0) || $0 == UInt8(ascii: ".") || $0 == UInt8(ascii: "*") || $0 == UInt8(ascii: "+") || $0 == UInt8(ascii: "!")
        }
    }

    static func isSecretKey(_ s: String) -> Bool {
        let b = Array(s.utf8)
        guard (1...253).contains(b.count), s != ".", s != ".." else { return false }
        return b.allSatisfy { c in
            (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a) || (c >= 0x30 && c <= 0x39)
                || c == UInt8(ascii: "_") || c == UInt8(ascii: ".") || c == UInt8(ascii: "-")
        }
    }

    /// Image references are resolved by the image store; here only what can
    /// never be a reference is refused.
    static func checkImage(_ image: String, path: String) throws {
        guard !image.isEmpty else { throw SpecReader.error(path, "empty; name an image such as \(defaultImage)") }
        guard !image.unicodeScalars.contains(where: { $0.value <= 0x20 || $0.value == 0x7f }) else {
            throw SpecReader.error(path, "\"\(image)\" is not an image reference; it contains spaces or control characters")
        }
    }

    /// Names become `NAME=value` strings in the replica's environment block.
    static func checkVariables(_ variables: [(name: String, value: String, path: String)]) throws {
        for v in variables.sorted(by: { $0.path < $1.path }) {
            guard isVariableName(v.name) else {
                throw SpecReader.error(v.path, "\"\(v.name)\" is not a valid environment variable name; expected \(variablePattern)")
            }
            guard !v.value.utf8.contains(0) else {
                throw SpecReader.error(v.path, "the value contains a NUL byte, which an environment variable cannot hold")
            }
        }
    }

    /// Capability names as `CAP_X` (case and prefix as the user likes) or
    /// `ALL`; whether the kernel knows a name is the daemon's check.
    static func normalized(_ caps: Capabilities, path: String) throws -> Capabilities {
        func names(_ list: [String], _ field: String) throws -> [String] {
            var out = Set<String>()
            for (i, raw) in list.enumerated() {
                let upper = raw.uppercased()
                let bare = upper.hasPrefix("CAP_") ? String(upper.dropFirst(4)) : upper
                let bytes = Array(bare.utf8)
                guard (1...32).contains(bytes.count), bytes.allSatisfy({ ($0 >= 0x41 && $0 <= 0x5a) || ($0 >= 0x30 && $0 <= 0x39) || $0 == UInt8(ascii: "_") }),
                      let first = bytes.first, first >= 0x41, first <= 0x5a else {
                    throw SpecReader.error("\(path).\(field)[\(i)]", "\"\(raw)\" is not a capability name; expected a name such as NET_ADMIN or CAP_NET_ADMIN, or ALL")
                }
                out.insert(upper == "ALL" ? "ALL" : "CAP_" + bare)
            }
            return out.sorted()
        }
        return Capabilities(add: try names(caps.add, "add"), drop: try names(caps.drop, "drop"))
    }
}

extension EnvironmentSpec.PodTemplate {
    /// Checks the template and finds its primary container. One replica runs
    /// one container, so a template's other containers are refused rather
    /// than silently dropped.
    func checkedPrimary(path: String) throws -> (index: Int, container: EnvironmentSpec.Container)? {
        let primaryPath = "\(path).primary_container_name"
        guard !primaryContainerName.isEmpty else { throw SpecReader.error(primaryPath, "empty; name the primary container") }
        for (key, _) in labels where key.isEmpty { throw SpecReader.error("\(path).labels", "a label name cannot be empty") }
        for (key, _) in annotations where key.isEmpty { throw SpecReader.error("\(path).annotations", "an annotation name cannot be empty") }
        guard let podSpec else { return nil }
        let containersPath = "\(path).pod_spec.containers"
        guard let index = podSpec.containers.firstIndex(where: { $0.name == primaryContainerName }) else {
            let names = podSpec.containers.map { "\"\($0.name)\"" }.joined(separator: ", ")
            throw SpecReader.error(primaryPath, "\"\(primaryContainerName)\" names no container in \(containersPath) (\(names.isEmpty ? "none given" : names))")
        }
        for (i, container) in podSpec.containers.enumerated() where i != index {
            throw SpecReader.error("\(containersPath)[\(i)]", "\"\(container.name)\" is not the primary container (\"\(primaryContainerName)\"); a replica runs only the primary container, so other containers are not supported")
        }
        let container = podSpec.containers[index]
        let containerPath = "\(containersPath)[\(index)]"
        if let image = container.image { try EnvironmentSpec.checkImage(image, path: "\(containerPath).image") }
        try EnvironmentSpec.checkVariables(container.env.enumerated().map { ($1.name, $1.value, "\(containerPath).env[\($0)].name") })
        var seen = Set<String>()
        for (i, variable) in container.env.enumerated() where !seen.insert(variable.name).inserted {
            throw SpecReader.error("\(containerPath).env[\(i)].name", "\"\(variable.name)\" is set twice")
        }
        return (index, container)
    }
}

extension EnvironmentSpec.Resources {
    static let fields = ["cpu", "mem", "gpu", "ephemeral_storage"]

    /// A parsed quantity with where it came from, for messages.
    struct Amount {
        var amount: Int64
        var text: String
        var path: String
    }

    /// Parses one quantity: cpu to millicores, memory and storage to bytes,
    /// gpu to a whole count.
    static func amount(_ field: String, _ text: String, path: String) throws -> Int64 {
        switch field {
        case "cpu":
            return try Quantity.parseCPU(text, field: path)
        case "gpu":
            guard let count = Int64(text.trimmingSpaces()), count >= 0 else {
                throw SpecReader.error(path, "\"\(text)\" is not a GPU count; expected a whole number such as 1")
            }
            return count
        default:
            return try Quantity.parseMemory(text, field: path)
        }
    }

    /// Flyte's rule (flytepropeller, as Kubernetes): a resource given only
    /// as a request is also its limit, one given only as a limit is also its
    /// request. Then a request may not exceed its limit, and GPUs, being
    /// whole devices, need request = limit.
    static func applyDefaults(requested: inout [String: Amount], limited: inout [String: Amount]) throws {
        for field in fields {
            switch (requested[field], limited[field]) {
            case (let r?, nil): limited[field] = r
            case (nil, let l?): requested[field] = l
            case (let r?, let l?) where r.amount > l.amount:
                throw SpecReader.error(r.path, "\(r.text) is more than \(l.path) (\(l.text)); a request cannot exceed its limit")
            case (let r?, let l?) where field == "gpu" && r.amount != l.amount:
                throw SpecReader.error(r.path, "\(r.text) differs from \(l.path) (\(l.text)); GPUs are whole devices, so request and limit must be equal")
            default: break
            }
        }
    }

    /// Every quantity given, by field name.
    static func amounts(_ resources: Self, path: String) throws -> [String: Amount] {
        var out: [String: Amount] = [:]
        let values: [(String, String?)] = [
            ("cpu", resources.cpu), ("mem", resources.mem), ("gpu", resources.gpu), ("ephemeral_storage", resources.ephemeralStorage),
        ]
        for (field, text) in values {
            guard let text else { continue }
            let fieldPath = SpecReader.join(path, field)
            out[field] = Amount(amount: try amount(field, text, path: fieldPath), text: text, path: fieldPath)
        }
        return out
    }
}
