import Yams

extension EnvironmentSpec {
    /// Reads every environment in `text`: YAML (one or more documents
    /// separated by `---`, each a mapping or a list of mappings) or JSON (an
    /// object or an array of objects). Each environment is type-checked and
    /// validated; names must be unique within the file.
    ///
    /// Errors are `HearthError.invalidArgument` with a message that starts
    /// with `source` and, when the file holds several environments, the
    /// environment's index counted over the whole file:
    /// `envs.yaml: environments[1].pod_template.pod_spec.containers[0].imagee: unknown field ...`.
    /// An empty `source` adds no prefix.
    public static func parseDocuments(_ text: String, source: String) throws -> [EnvironmentSpec] {
        let items: [Item]
        do {
            items = try Self.items(text)
        } catch {
            throw Self.prefixed(error, source: source)
        }
        guard !items.isEmpty else {
            throw HearthError.invalid("\(source): no environments found; expected a YAML or JSON mapping with at least a name")
        }
        var specs: [EnvironmentSpec] = []
        for (index, item) in items.enumerated() {
            let base = items.count > 1 ? "environments[\(index)]" : ""
            do {
                let spec = try EnvironmentSpec(node: item.node(path: base), path: base)
                _ = try spec.check(base: base)
                if let other = specs.firstIndex(where: { $0.name == spec.name }) {
                    throw SpecReader.error(SpecReader.join(base, "name"),
                                           "\"\(spec.name)\" is already the name of environments[\(other)]; names must be unique")
                }
                specs.append(spec)
            } catch {
                throw Self.prefixed(error, source: source)
            }
        }
        return specs
    }

    /// Decodes the same language as `parseDocuments` (one environment), with
    /// the same checks; error paths start at the decoder's coding path.
    public init(from decoder: any Decoder) throws {
        let base = Self.render(decoder.codingPath)
        self = try EnvironmentSpec(node: SpecNode(from: decoder), path: base)
        _ = try check(base: base)
    }

    // MARK: Documents

    /// One environment's raw value: YAML nodes are converted lazily so that
    /// conversion errors can carry the environment's index.
    enum Item {
        case yaml(Yams.Node)
        case json(SpecNode)

        func node(path: String) throws -> SpecNode {
            switch self {
            case .yaml(let node): return try SpecNode(yaml: node, path: path)
            case .json(let node): return node
            }
        }
    }

    static func items(_ text: String) throws -> [Item] {
        let start = text.first { !$0.isWhitespace }
        if start == "{" || start == "[" {
            // JSON is tried first: YAML 1.1 parsers differ from JSON on
            // escapes such as `\/` and on tabs. A flow-style YAML document
            // that is not JSON still parses as YAML below.
            do {
                let node = try SpecNode.parseJSON(text)
                if case .sequence(let elements) = node.value { return elements.map(Item.json) }
                return [.json(node)]
            } catch {
                do {
                    return Self.flatten(try SpecNode.yamlDocuments(text))
                } catch {
                    // JSONDecoder says only "not valid JSON"; the YAML
                    // parser (YAML's flow style covers JSON) gives the
                    // line and column.
                    throw HearthError.invalid("invalid JSON: \(error)")
                }
            }
        }
        do {
            return Self.flatten(try SpecNode.yamlDocuments(text))
        } catch {
            throw HearthError.invalid("invalid YAML: \(error)")
        }
    }

    /// A document that is a list contributes each of its items.
    private static func flatten(_ documents: [Yams.Node]) -> [Item] {
        documents.flatMap { document -> [Item] in
            if case .sequence(let sequence) = document { return sequence.map(Item.yaml) }
            return [.yaml(document)]
        }
    }

    /// `source: message`; every error below is already a HearthError, the
    /// fallback only keeps an unexpected one readable.
    private static func prefixed(_ error: any Error, source: String) -> HearthError {
        let e = error as? HearthError ?? HearthError.invalid(String(describing: error))
        return HearthError(e.code, source.isEmpty ? e.message : "\(source): \(e.message)")
    }

    private static func render(_ codingPath: [any CodingKey]) -> String {
        codingPath.reduce("") { path, key in
            if let index = key.intValue { return "\(path)[\(index)]" }
            return SpecReader.join(path, key.stringValue)
        }
    }

    // MARK: Fields

    /// Reads and type-checks every field; values are checked by `check`.
    init(node: SpecNode, path: String) throws {
        let r = try SpecReader(node, path: path, what: "a mapping of environment fields")
        try r.rejectUnknown(CodingKeys.allCases.map(\.rawValue))
        typealias K = CodingKeys
        self.init(name: try r.requiredString(K.name.rawValue))
        containerImage = try r.string(K.containerImage.rawValue)
        environment = try r.stringMap(K.environment.rawValue)
        requests = try Resources(r.node(K.requests.rawValue), path: r.path(K.requests.rawValue))
        limits = try Resources(r.node(K.limits.rawValue), path: r.path(K.limits.rawValue))
        replicaCount = try r.int(K.replicaCount.rawValue) ?? Self.defaultReplicaCount
        ttlSeconds = try r.int(K.ttlSeconds.rawValue) ?? Self.defaultTTLSeconds
        secretRequests = try Self.unique(r.list(K.secretRequests.rawValue, Self.secretKey))
        if let template = r.node(K.podTemplate.rawValue) {
            podTemplate = try PodTemplate(template, path: r.path(K.podTemplate.rawValue))
        }
        if let text = try r.string(K.network.rawValue) {
            guard let value = Network(rawValue: text) else {
                throw SpecReader.error(r.path(K.network.rawValue), "\"\(text)\" is not supported; expected none (loopback only), egress (HTTP and HTTPS to public hosts through the daemon's proxy) or host")
            }
            network = value
        }
        if let text = try r.string(K.seccomp.rawValue) {
            guard let value = Seccomp(text: text) else {
                throw SpecReader.error(r.path(K.seccomp.rawValue), "\"\(text)\" is not allowed; \(Seccomp.rule)")
            }
            seccomp = value
        }
        if let caps = r.node(K.capabilities.rawValue) {
            let c = try SpecReader(caps, path: r.path(K.capabilities.rawValue), what: "a mapping with add and drop")
            try c.rejectUnknown(Capabilities.CodingKeys.allCases.map(\.rawValue))
            capabilities = Capabilities(add: try c.list("add", SpecReader.string), drop: try c.list("drop", SpecReader.string))
        }
        if let t = r.node(K.timeout.rawValue) {
            timeout = try Self.seconds(t, path: r.path(K.timeout.rawValue))
        }
        maxTasksPerReplica = try r.int(K.maxTasksPerReplica.rawValue)
        maxQueue = try r.int(K.maxQueue.rawValue) ?? Self.defaultMaxQueue
        packages = try Self.unique(r.list(K.packages.rawValue, SpecReader.string))
        userNamespace = try r.bool(K.userNamespace.rawValue)
        imagePullPolicy = try Self.pullPolicy(r, K.imagePullPolicy.rawValue)
        if let node = r.node(K.replicas.rawValue) {
            let range = try Self.replicaRange(node, path: r.path(K.replicas.rawValue))
            // replica_count is the maximum: both may be written (the
            // normalized form does), but they must agree.
            if r.node(K.replicaCount.rawValue) != nil, replicaCount != range.max {
                throw SpecReader.error(r.path(K.replicaCount.rawValue), "\(replicaCount) disagrees with replicas.max (\(range.max)); give replicas {min, max}, or replica_count alone for a fixed number")
            }
            replicas = range
            replicaCount = range.max
        }
        if let node = r.node(K.scaledownTTLSeconds.rawValue) {
            let path = r.path(K.scaledownTTLSeconds.rawValue)
            let value = try Self.seconds(node, path: path)
            guard value.isFinite, value == value.rounded(), let whole = Int(exactly: value) else {
                throw SpecReader.error(path, "\(SpecNode.render(value)) is not whole seconds")
            }
            scaledownTTLSeconds = whole
        }
        concurrency = try r.int(K.concurrency.rawValue)
        prewarm = try r.bool(K.prewarm.rawValue)
        devices = try r.list(K.devices.rawValue, SpecReader.string)
        preload = try r.list(K.preload.rawValue, SpecReader.string)
        mounts = try r.list(K.mounts.rawValue) { node, path in
            let m = try SpecReader(node, path: path, what: "a mapping with host_path, path and read_only")
            try m.rejectUnknown(Mount.CodingKeys.allCases.map(\.rawValue))
            guard let host = try m.string("host_path") else {
                throw SpecReader.error(m.path("host_path"), "missing; a mount needs the host directory to mount")
            }
            guard let target = try m.string("path") else {
                throw SpecReader.error(m.path("path"), "missing; a mount needs the path it takes in the replica")
            }
            return Mount(hostPath: host, path: target, readOnly: try m.bool("read_only"))
        }
    }

    /// `{min: M, max: N}`, `[M, N]` (Flyte 2's tuple) or `N` (both).
    static func replicaRange(_ node: SpecNode, path: String) throws -> ReplicaRange {
        switch node.value {
        case .int, .double:
            let n = try SpecReader.int(node, path: path)
            return ReplicaRange(min: n, max: n)
        case .sequence(let items):
            guard items.count == 2 else {
                throw SpecReader.error(path, "expected [min, max], got a list of \(items.count)")
            }
            return ReplicaRange(min: try SpecReader.int(items[0], path: path + "[0]"),
                                max: try SpecReader.int(items[1], path: path + "[1]"))
        case .mapping:
            let m = try SpecReader(node, path: path, what: "a mapping with min and max")
            try m.rejectUnknown(ReplicaRange.CodingKeys.allCases.map(\.rawValue))
            guard let max = try m.int("max") else {
                throw SpecReader.error(m.path("max"), "missing; replicas needs a max (the most replicas at once)")
            }
            return ReplicaRange(min: try m.int("min") ?? 0, max: max)
        default:
            throw SpecReader.error(path, "expected {min, max}, [min, max] or a number, got \(node.kindDescription)")
        }
    }

    /// `IfNotPresent`, `Always` or `Never` at `key`, if present.
    static func pullPolicy(_ r: SpecReader, _ key: String) throws -> PullPolicy? {
        guard let text = try r.string(key) else { return nil }
        guard let policy = PullPolicy(rawValue: text) else {
            throw SpecReader.error(r.path(key), "\"\(text)\" is not a pull policy; \(PullPolicy.rule)")
        }
        return policy
    }

    /// A secret request: `"KEY"` or flytekit's `Secret` as `{key, group}`;
    /// Hearth's store is flat, so the key (else the group) names the secret.
    private static func secretKey(_ node: SpecNode, path: String) throws -> String {
        if case .string(let key) = node.value { return key }
        guard case .mapping = node.value else {
            throw SpecReader.error(path, "expected a secret key (a string) or a mapping with key and group, got \(node.kindDescription)")
        }
        let r = try SpecReader(node, path: path)
        try r.rejectUnknown(["key", "group"])
        if let key = try r.string("key") { return key }
        if let group = try r.string("group") { return group }
        throw SpecReader.error(r.path("key"), "missing; a secret request needs a key")
    }

    private static func unique(_ values: [String]) -> [String] {
        var seen = Set<String>()
        return values.filter { seen.insert($0).inserted }
    }

    /// Seconds as a number, or a duration string: `30`, `"30s"`, `"5m"`,
    /// `"1h30m"`, `"1.5h"`, `"500ms"`.
    static func seconds(_ node: SpecNode, path: String) throws -> Double {
        switch node.value {
        case .int(let i): return Double(i)
        case .double(let d): return d
        case .string(let s):
            guard let value = parseDuration(s) else {
                throw SpecReader.error(path, "\"\(s)\" is not a duration; expected seconds (30) or a duration such as 30s, 5m, 1h or 1h30m")
            }
            return value
        default:
            throw SpecReader.error(path, "expected seconds or a duration such as \"5m\", got \(node.kindDescription)")
        }
    }

    /// Go-style durations with units h, m, s, ms; a bare number is seconds.
    static func parseDuration(_ text: String) -> Double? {
        let s = text.trimmingSpaces()
        if let plain = Quantity.parseDecimal(s) { return plain }
        let units: [(String, Double)] = [("ms", 0.001), ("h", 3600), ("m", 60), ("s", 1)]
        var rest = Substring(s)
        var total = 0.0
        guard !rest.isEmpty else { return nil }
        while !rest.isEmpty {
            let number = rest.prefix { $0.isASCII && ($0.isNumber || $0 == ".") }
            guard !number.isEmpty, let value = Quantity.parseDecimal(String(number)) else { return nil }
            rest = rest.dropFirst(number.count)
            guard let (unit, scale) = units.first(where: { rest.hasPrefix($0.0) }) else { return nil }
            rest = rest.dropFirst(unit.count)
            total += value * scale
        }
        return total
    }
}

extension EnvironmentSpec.Resources {
    /// The keys read as each field: Kubernetes' spellings are aliases.
    static let spellings: [(field: String, keys: [String])] = [
        ("cpu", ["cpu"]),
        ("mem", ["mem", "memory"]),
        ("gpu", ["gpu", "nvidia.com/gpu"]),
        ("ephemeral_storage", ["ephemeral_storage", "ephemeral-storage"]),
    ]

    /// Reads `{cpu, mem, ...}`; each quantity is checked here, where the
    /// key is known as the user spelled it.
    init(_ node: SpecNode?, path: String) throws {
        self.init()
        guard let node else { return }
        let r = try SpecReader(node, path: path, what: "a mapping of resources (cpu, mem, gpu, ephemeral_storage)")
        try r.rejectUnknown(Self.spellings.flatMap(\.keys))
        for (field, keys) in Self.spellings {
            guard let (key, value) = try r.node(anyOf: keys) else { continue }
            let text = try SpecReader.quantityText(value, path: r.path(key))
            _ = try Self.amount(field, text, path: r.path(key))
            switch field {
            case "cpu": cpu = text
            case "mem": mem = text
            case "gpu": gpu = text
            default: ephemeralStorage = text
            }
        }
    }
}

extension EnvironmentSpec.PodTemplate {
    init(_ node: SpecNode, path: String) throws {
        let r = try SpecReader(node, path: path, what: "a pod template mapping")
        try r.rejectUnknown(CodingKeys.allCases.map(\.rawValue))
        self.init(
            primaryContainerName: try r.string(CodingKeys.primaryContainerName.rawValue) ?? EnvironmentSpec.defaultPrimaryContainerName,
            labels: try r.stringMap(CodingKeys.labels.rawValue),
            annotations: try r.stringMap(CodingKeys.annotations.rawValue))
        if let spec = r.node(CodingKeys.podSpec.rawValue) {
            let s = try SpecReader(spec, path: r.path(CodingKeys.podSpec.rawValue), what: "a pod spec mapping")
            try s.rejectUnknown(EnvironmentSpec.PodSpec.CodingKeys.allCases.map(\.rawValue))
            podSpec = EnvironmentSpec.PodSpec(
                containers: try s.list("containers", EnvironmentSpec.Container.init),
                volumes: try s.list("volumes") { item, itemPath in
                    let v = try SpecReader(item, path: itemPath, what: "a volume (name and hostPath)")
                    let name = try v.requiredString("name")
                    guard let hp = v.node("hostPath") else {
                        throw SpecReader.error(itemPath, "volume \(name.debugDescription) is not a hostPath volume; a replica mounts hostPath volumes only (as mounts entries)")
                    }
                    try v.rejectUnknown(["name", "hostPath"])
                    let h = try SpecReader(hp, path: v.path("hostPath"), what: "a mapping with path and type")
                    try h.rejectUnknown(["path", "type"])
                    if let type = try h.string("type"), !["", "Directory"].contains(type) {
                        throw SpecReader.error(h.path("type"), "\"\(type)\" is not supported; a hostPath volume here is an existing directory (Directory)")
                    }
                    return EnvironmentSpec.Volume(name: name, hostPath: try h.requiredString("path"))
                })
        }
    }
}

extension EnvironmentSpec.Container {
    init(_ node: SpecNode, path: String) throws {
        let r = try SpecReader(node, path: path, what: "a container mapping")
        // Kubernetes' camelCase, and the snake_case the rest of a spec uses.
        try r.rejectUnknown(CodingKeys.allCases.map(\.rawValue) + ["image_pull_policy"])
        self.init(name: try r.requiredString("name"), image: try r.string("image"))
        if let (key, _) = try r.node(anyOf: ["imagePullPolicy", "image_pull_policy"]) {
            imagePullPolicy = try EnvironmentSpec.pullPolicy(r, key)
        }
        env = try r.list("env") { item, itemPath in
            let e = try SpecReader(item, path: itemPath, what: "a mapping with name and value")
            try e.rejectUnknown(EnvironmentSpec.EnvVar.CodingKeys.allCases.map(\.rawValue))
            // Kubernetes treats a missing value as the empty string.
            let value = try e.node("value").map { try SpecReader.scalarText($0, path: e.path("value")) } ?? ""
            return EnvironmentSpec.EnvVar(name: try e.requiredString("name"), value: value)
        }
        volumeMounts = try r.list("volumeMounts") { item, itemPath in
            let m = try SpecReader(item, path: itemPath, what: "a volume mount (name, mountPath, readOnly)")
            try m.rejectUnknown(EnvironmentSpec.VolumeMount.CodingKeys.allCases.map(\.rawValue))
            return EnvironmentSpec.VolumeMount(name: try m.requiredString("name"), mountPath: try m.requiredString("mountPath"),
                                               readOnly: try m.bool("readOnly"))
        }
        if let res = r.node("resources") {
            let q = try SpecReader(res, path: r.path("resources"), what: "a mapping with requests and limits")
            try q.rejectUnknown(EnvironmentSpec.ResourceRequirements.CodingKeys.allCases.map(\.rawValue))
            resources = EnvironmentSpec.ResourceRequirements(
                requests: try EnvironmentSpec.Resources(q.node("requests"), path: q.path("requests")),
                limits: try EnvironmentSpec.Resources(q.node("limits"), path: q.path("limits")))
        }
    }
}
