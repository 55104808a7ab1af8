import HearthCore

/// The steps of an image build, in flytekit's order, each with its cache
/// key: apt packages, Python packages, env (image config only, no step),
/// the copied bundle, then each command. A step's key is the SHA-256 of the
/// key before it and the step's canonical description, starting from the
/// base image's config digest; env takes part in that chain, so it reaches
/// every step after it. Changing one package changes that step's key and
/// every key after it; the steps before keep theirs.
public struct BuildPlan: Sendable, Equatable {
    public enum Kind: Sendable, Equatable {
        case apt(packages: [String])
        case python(PythonInstall)
        case copy(ImageBuildSpec.Copy)
        case command(String)
    }

    public struct Step: Sendable, Equatable {
        public var kind: Kind
        /// 64 hex digits.
        public var key: String
        /// Whether the spec's env applies to the step (it follows env).
        public var afterEnv: Bool
    }

    /// Python packages, installer-neutral: what goes into the key.
    public struct PythonInstall: Sendable, Equatable {
        public var packages: [String]
        public var requirements: String?
        public var index: String?
        public var extraIndexURLs: [String]
        public var extraArgs: [String]
    }

    public var steps: [Step]
    /// The spec's env as `KEY=value`, sorted by name.
    public var env: [String]

    /// Packages Hearth provides in every replica (the SDK, union's names
    /// for it, and the flytekit plugin's replica side): requested, they are
    /// satisfied without an install. flytekit itself is not: the plugin's
    /// tasks need the real one in the image.
    public static let providedPackages: Set<String> = ["union", "flytekitplugins-pod", "flytekitplugins-hearth", "hearth"]

    /// Bumped when what a step runs changes, so old cache entries miss.
    static let version = "hearth-build 1"

    public init(spec: ImageBuildSpec, baseID: String) {
        var steps: [Step] = []
        var key = Self.sha256(Self.version + "\nbase " + baseID)
        func add(_ kind: Kind, descriptor: JSONValue, afterEnv: Bool) {
            key = Self.sha256(key + "\n" + CanonicalJSON.encode(descriptor))
            steps.append(Step(kind: kind, key: key, afterEnv: afterEnv))
        }
        let apt = spec.aptPackages ?? []
        if !apt.isEmpty {
            add(.apt(packages: apt), descriptor: .object(["apt": .array(apt.map(JSONValue.string))]), afterEnv: false)
        }
        let packages = (spec.packages ?? []).filter { !Self.providedPackages.contains(Self.projectName($0)) }
        let requirements = spec.requirements.map(Self.withoutProvided).flatMap { $0.isEmpty ? nil : $0 }
        if !packages.isEmpty || requirements != nil {
            let install = PythonInstall(
                packages: packages, requirements: requirements, index: spec.pipIndex,
                extraIndexURLs: spec.pipExtraIndexURL ?? [],
                extraArgs: (spec.pipExtraArgs ?? "").split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\n" }).map(String.init))
            let descriptor: JSONValue = .object(["python": .object([
                "packages": .array(install.packages.map(JSONValue.string)),
                "requirements": install.requirements.map(JSONValue.string) ?? .null,
                "index": install.index.map(JSONValue.string) ?? .null,
                "extra_index_urls": .array(install.extraIndexURLs.map(JSONValue.string)),
                "args": .array(install.extraArgs.map(JSONValue.string)),
            ])])
            add(.python(install), descriptor: descriptor, afterEnv: false)
        }
        env = (spec.env ?? [:]).sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }
        if !env.isEmpty {
            key = Self.sha256(key + "\n" + CanonicalJSON.encode(.object(["env": .array(env.map(JSONValue.string))])))
        }
        if let copy = spec.copy {
            add(.copy(copy), descriptor: .object(["copy": .object(["bundle": .string(copy.bundle), "dest": .string(copy.dest)])]),
                afterEnv: true)
        }
        for command in spec.commands ?? [] {
            add(.command(command), descriptor: .object(["command": .string(command)]), afterEnv: true)
        }
        self.steps = steps
    }

    /// PEP 503's normalised project name of a requirement (`Flytekit>=1.10`
    /// → `flytekit`, `flytekitplugins_pod` → `flytekitplugins-pod`).
    static func projectName(_ requirement: String) -> String {
        let name = requirement.trimmingSpaces().prefix { c in
            c.isASCII && (c.isLetter || c.isNumber || c == "-" || c == "_" || c == ".")
        }
        var out = ""
        var separator = false
        for c in name.lowercased() {
            if c == "-" || c == "_" || c == "." {
                separator = true
            } else {
                if separator && !out.isEmpty { out.append("-") }
                separator = false
                out.append(c)
            }
        }
        return out
    }

    /// A requirements file without the lines that ask for a package Hearth
    /// provides; options, comments and everything else are kept.
    static func withoutProvided(_ text: String) -> String {
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init).filter { line in
            let trimmed = line.trimmingSpaces()
            guard let first = trimmed.first, first != "-", first != "#" else { return true }
            return !providedPackages.contains(projectName(trimmed))
        }
        // Nothing left but comments and blank lines: nothing to install.
        let asks = lines.contains { line in
            let trimmed = line.trimmingSpaces()
            return !trimmed.isEmpty && !trimmed.hasPrefix("#")
        }
        var kept = lines
        while let last = kept.last, last.trimmingSpaces().isEmpty { kept.removeLast() }
        return asks ? kept.joined(separator: "\n") : ""
    }

    static func sha256(_ text: String) -> String {
        ContentHash.sha256Hex(Array(text.utf8))
    }
}
