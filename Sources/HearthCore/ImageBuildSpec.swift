/// flytekit's `ImageSpec`, as `POST /v1/images/build` takes it: what the
/// daemon builds on a base image, step by step (apt packages, Python
/// packages, copied files, commands; env goes into the image's config).
///
/// Lists and `env` are optional so that a `null` the client sent is kept as
/// `null` in the canonical JSON (the tag is its hash); a build treats null
/// as empty.
public struct ImageBuildSpec: Sendable, Equatable {
    public var name: String
    public var registry: String?
    /// nil: computed from the spec (`computedTag`).
    public var tag: String?
    /// nil: the default image (`HearthDefaults.image`).
    public var baseImage: String?
    /// `3.11`: must match the base image's python3 (nothing is downloaded).
    public var pythonVersion: String?
    public var packages: [String]?
    /// The text of a requirements.txt (a client reads the file).
    public var requirements: String?
    public var aptPackages: [String]?
    public var pipIndex: String?
    public var pipExtraIndexURL: [String]?
    /// Split on whitespace into installer arguments.
    public var pipExtraArgs: String?
    public var env: [String: String]?
    public var commands: [String]?
    public var copy: Copy?

    /// Files of an uploaded code bundle (`PUT /v1/code/{sha256}`) placed
    /// under `dest` in the image.
    public struct Copy: Sendable, Equatable {
        public var bundle: String
        public var dest: String
        public init(bundle: String, dest: String = ImageBuildSpec.defaultCopyDestination) {
            self.bundle = bundle
            self.dest = dest
        }
    }

    /// flytekit copies into the image's /root.
    public static let defaultCopyDestination = "/root"
    /// Requirements travel to the build step in its environment, where one
    /// string may hold at most 128 KiB (MAX_ARG_STRLEN).
    public static let maxRequirementsBytes = 64 << 10

    public init(name: String = "flytekit", registry: String? = nil, tag: String? = nil, baseImage: String? = nil,
                pythonVersion: String? = nil, packages: [String]? = [], requirements: String? = nil,
                aptPackages: [String]? = [], pipIndex: String? = nil, pipExtraIndexURL: [String]? = [],
                pipExtraArgs: String? = nil, env: [String: String]? = [:], commands: [String]? = [],
                copy: Copy? = nil) {
        self.name = name; self.registry = registry; self.tag = tag; self.baseImage = baseImage
        self.pythonVersion = pythonVersion; self.packages = packages; self.requirements = requirements
        self.aptPackages = aptPackages; self.pipIndex = pipIndex; self.pipExtraIndexURL = pipExtraIndexURL
        self.pipExtraArgs = pipExtraArgs; self.env = env; self.commands = commands; self.copy = copy
    }

    enum Key: String, CaseIterable {
        case name, registry, tag
        case baseImage = "base_image"
        case pythonVersion = "python_version"
        case packages, requirements
        case aptPackages = "apt_packages"
        case pipIndex = "pip_index"
        case pipExtraIndexURL = "pip_extra_index_url"
        case pipExtraArgs = "pip_extra_args"
        case env, commands, copy
    }

    // MARK: name and tag

    /// The spec as one canonical JSON text (see `CanonicalJSON`): every
    /// field but `tag`, nulls and empty lists as given, `base_image` null
    /// replaced by `defaultBaseImage`.
    public func canonicalJSON(defaultBaseImage: String) -> String {
        CanonicalJSON.encode(jsonValue(tag: false, defaultBaseImage: defaultBaseImage))
    }

    /// SHA-256 of the canonical JSON, its first 16 bytes in base64url
    /// without padding, `-` replaced by `_` (a tag may not start with `-`):
    /// 22 characters of `[A-Za-z0-9_]`.
    public func computedTag(defaultBaseImage: String) -> String {
        var hasher = SHA256()
        hasher.update(Array(canonicalJSON(defaultBaseImage: defaultBaseImage).utf8))
        let digest = Array(hasher.finalize().prefix(16))
        return Self.base64URL(digest).replacingOccurrences(of: "-", with: "_")
    }

    /// `[registry/]name:tag`, the tag given or computed.
    public func imageName(defaultBaseImage: String) -> String {
        let repository = registry.map { r in (r.hasSuffix("/") ? String(r.dropLast()) : r) + "/" + name } ?? name
        return repository + ":" + (tag ?? computedTag(defaultBaseImage: defaultBaseImage))
    }

    /// The JSON the API takes (every field, `tag` included when `tag` is set).
    public func jsonValue(tag includeTag: Bool = true, defaultBaseImage: String? = nil) -> JSONValue {
        func list(_ l: [String]?) -> JSONValue { l.map { .array($0.map(JSONValue.string)) } ?? .null }
        func text(_ s: String?) -> JSONValue { s.map(JSONValue.string) ?? .null }
        var object: [String: JSONValue] = [
            Key.name.rawValue: .string(name),
            Key.registry.rawValue: text(registry),
            Key.baseImage.rawValue: text(baseImage ?? defaultBaseImage),
            Key.pythonVersion.rawValue: text(pythonVersion),
            Key.packages.rawValue: list(packages),
            Key.requirements.rawValue: text(requirements),
            Key.aptPackages.rawValue: list(aptPackages),
            Key.pipIndex.rawValue: text(pipIndex),
            Key.pipExtraIndexURL.rawValue: list(pipExtraIndexURL),
            Key.pipExtraArgs.rawValue: text(pipExtraArgs),
            Key.env.rawValue: env.map { .object($0.mapValues(JSONValue.string)) } ?? .null,
            Key.commands.rawValue: list(commands),
            Key.copy.rawValue: copy.map { .object(["bundle": .string($0.bundle), "dest": .string($0.dest)]) } ?? .null,
        ]
        if includeTag { object[Key.tag.rawValue] = text(tag) }
        return .object(object)
    }

    static func base64URL(_ bytes: [UInt8]) -> String {
        let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".utf8)
        var out: [UInt8] = []
        var i = 0
        while i + 2 < bytes.count {
            let n = UInt32(bytes[i]) << 16 | UInt32(bytes[i + 1]) << 8 | UInt32(bytes[i + 2])
            for shift in [18, 12, 6, 0] { out.append(alphabet[Int((n >> UInt32(shift)) & 63)]) }
            i += 3
        }
        let rest = bytes.count - i
        if rest > 0 {
            var n = UInt32(bytes[i]) << 16
            if rest == 2 { n |= UInt32(bytes[i + 1]) << 8 }
            let chars = rest == 1 ? 2 : 3
            for shift in [18, 12, 6].prefix(chars) { out.append(alphabet[Int((n >> UInt32(shift)) & 63)]) }
        }
        return String(decoding: out, as: UTF8.self)
    }
}

/// The body of `POST /v1/images/build`.
public struct ImageBuildRequest: Sendable, Equatable {
    public var spec: ImageBuildSpec
    /// Stream each step's output lines as `output` events.
    public var verbose: Bool

    public init(spec: ImageBuildSpec, verbose: Bool = false) {
        self.spec = spec
        self.verbose = verbose
    }

    /// Reads and checks a request body (JSON). Unknown fields, wrong types
    /// and broken rules are refused naming the field (`spec.packages[1]`).
    public static func parse(json text: String) throws -> ImageBuildRequest {
        let node: SpecNode
        do {
            node = try SpecNode.parseJSON(text)
        } catch {
            throw HearthError.invalid("image build request: not valid JSON (\(error))")
        }
        let r = try SpecReader(node, path: "", what: "a JSON object with spec")
        try r.rejectUnknown(["spec", "verbose"])
        guard let specNode = r.node("spec") else { throw SpecReader.error("spec", "missing; this field is required") }
        let spec = try ImageBuildSpec.read(specNode, path: "spec", form: .api).spec
        return ImageBuildRequest(spec: spec, verbose: try r.bool("verbose") ?? false)
    }

    /// The JSON body for the API.
    public func json() -> String {
        CanonicalJSON.encode(.object(["spec": spec.jsonValue(), "verbose": .bool(verbose)]))
    }
}

/// An ImageSpec YAML (or JSON) file for `hearth image build -f`: the API's
/// fields, except that `requirements` is a path and `copy` a list of paths,
/// both relative to the file, which the CLI reads and uploads.
public struct ImageSpecFile: Sendable, Equatable {
    /// `requirements` and `copy` are not set here.
    public var spec: ImageBuildSpec
    public var requirementsPath: String?
    public var copyPaths: [String]

    public static func parse(_ text: String, source: String) throws -> ImageSpecFile {
        do {
            let start = text.first { !$0.isWhitespace }
            let node: SpecNode
            if start == "{", let json = try? SpecNode.parseJSON(text) {
                node = json
            } else {
                let documents = try SpecNode.yamlDocuments(text)
                guard documents.count == 1, let document = documents.first else {
                    throw HearthError.invalid("expected one YAML document (an ImageSpec mapping), found \(documents.count)")
                }
                node = try SpecNode(yaml: document, path: "")
            }
            let read = try ImageBuildSpec.read(node, path: "", form: .file)
            return ImageSpecFile(spec: read.spec, requirementsPath: read.requirementsPath, copyPaths: read.copyPaths)
        } catch let e as HearthError {
            throw HearthError(e.code, "\(source): \(e.message)")
        } catch {
            throw HearthError.invalid("\(source): \(error)")
        }
    }
}

// MARK: reading

extension ImageBuildSpec {
    enum Form { case api, file }

    struct Read {
        var spec: ImageBuildSpec
        var requirementsPath: String?
        var copyPaths: [String] = []
    }

    /// Absent fields take their defaults; a null is kept as null.
    static func read(_ node: SpecNode, path: String, form: Form) throws -> Read {
        let r = try SpecReader(node, path: path, what: "an ImageSpec mapping")
        try r.rejectUnknown(Key.allCases.map(\.rawValue))
        func list(_ key: Key) throws -> [String]? {
            if r.has(key.rawValue) && r.node(key.rawValue) == nil { return nil }
            return try r.list(key.rawValue, SpecReader.string)
        }
        func text(_ key: Key) throws -> String? { try r.string(key.rawValue) }

        var spec = ImageBuildSpec()
        if r.has(Key.name.rawValue) {
            guard let name = try text(.name) else { throw SpecReader.error(r.path("name"), "null; give the image's name") }
            spec.name = name
        }
        spec.registry = try text(.registry)
        spec.tag = try text(.tag)
        spec.baseImage = try text(.baseImage)
        if let node = r.node(Key.pythonVersion.rawValue) {
            // YAML reads `python_version: 3.10` as a number; its text is what was meant.
            spec.pythonVersion = try SpecReader.scalarText(node, path: r.path(Key.pythonVersion.rawValue))
        }
        spec.packages = try list(.packages)
        spec.aptPackages = try list(.aptPackages)
        spec.pipIndex = try text(.pipIndex)
        spec.pipExtraIndexURL = try list(.pipExtraIndexURL)
        spec.pipExtraArgs = try text(.pipExtraArgs)
        if r.has(Key.env.rawValue) {
            spec.env = r.node(Key.env.rawValue) == nil ? nil : try r.stringMap(Key.env.rawValue)
        }
        spec.commands = try list(.commands)

        var read = Read(spec: spec)
        switch form {
        case .api:
            read.spec.requirements = try text(.requirements)
            if let node = r.node(Key.copy.rawValue) {
                let c = try SpecReader(node, path: r.path(Key.copy.rawValue), what: "a mapping with bundle and dest")
                try c.rejectUnknown(["bundle", "dest"])
                read.spec.copy = Copy(bundle: try c.requiredString("bundle"),
                                      dest: try c.string("dest") ?? defaultCopyDestination)
            }
        case .file:
            read.requirementsPath = try text(.requirements)
            read.copyPaths = try r.list(Key.copy.rawValue, SpecReader.string)
        }
        try read.spec.check(path: path)
        return read
    }

    /// Rules no base image can change: what could never be a package, a
    /// URL, a variable name, a path.
    func check(path: String) throws {
        func at(_ key: Key) -> String { SpecReader.join(path, key.rawValue) }
        func printable(_ s: String) -> Bool { !s.unicodeScalars.contains { $0.value < 0x20 || $0.value == 0x7f } }
        guard !name.isEmpty, printable(name) else {
            throw SpecReader.error(at(.name), "\"\(name)\" is not an image name; use lowercase letters, digits and separators such as flytekit or my-team/app")
        }
        if let tag, tag.isEmpty || !printable(tag) {
            throw SpecReader.error(at(.tag), "\"\(tag)\" is not a tag; use letters, digits, '_', '.' and '-' (not first)")
        }
        if let baseImage {
            try EnvironmentSpec.checkImage(baseImage, path: at(.baseImage))
        }
        if let v = pythonVersion {
            let parts = v.split(separator: ".", omittingEmptySubsequences: false)
            guard (1...3).contains(parts.count), parts.allSatisfy({ !$0.isEmpty && $0.allSatisfy(\.isASCII) && $0.allSatisfy(\.isNumber) }) else {
                throw SpecReader.error(at(.pythonVersion), "\"\(v)\" is not a Python version; use MAJOR.MINOR such as 3.11")
            }
        }
        for (i, p) in (packages ?? []).enumerated() {
            guard !p.trimmingSpaces().isEmpty, printable(p), !p.hasPrefix("-") else {
                throw SpecReader.error("\(at(.packages))[\(i)]", "\"\(p)\" is not a package requirement; use a name with an optional version clause such as pandas==2.2.3 (installer options go in pip_extra_args)")
            }
        }
        if let requirements, requirements.unicodeScalars.contains(where: { $0.value == 0 }) {
            throw SpecReader.error(at(.requirements), "contains a NUL byte; give the text of a requirements file")
        }
        if let requirements, requirements.utf8.count > Self.maxRequirementsBytes {
            throw SpecReader.error(at(.requirements), "\(requirements.utf8.count) bytes is more than the \(Self.maxRequirementsBytes >> 10) KiB a requirements file may have here")
        }
        for (i, p) in (aptPackages ?? []).enumerated() where !Self.isAptPackage(p) {
            throw SpecReader.error("\(at(.aptPackages))[\(i)]", "\"\(p)\" is not a Debian package name; use lowercase letters, digits, '+', '-', '.', optionally =VERSION or /RELEASE")
        }
        for (key, urls) in [(at(.pipIndex), pipIndex.map { [$0] } ?? []), (at(.pipExtraIndexURL), pipExtraIndexURL ?? [])] {
            for (i, url) in urls.enumerated() where url.isEmpty || !printable(url) || url.contains(" ") || url.hasPrefix("-") {
                let where_ = key.hasSuffix("pip_index") ? key : "\(key)[\(i)]"
                throw SpecReader.error(where_, "\"\(url)\" is not an index URL such as https://pypi.org/simple")
            }
        }
        if let args = pipExtraArgs, !printable(args.replacingOccurrences(of: "\t", with: " ")) {
            throw SpecReader.error(at(.pipExtraArgs), "contains control characters; give the arguments separated by spaces")
        }
        for name in (env ?? [:]).keys.sorted() where !EnvironmentSpec.isVariableName(name) {
            throw SpecReader.error("\(at(.env))[\"\(name)\"]", "\"\(name)\" is not a variable name; use letters, digits and '_', not starting with a digit")
        }
        for (name, value) in env ?? [:] where value.unicodeScalars.contains(where: { $0.value == 0 }) {
            throw SpecReader.error("\(at(.env))[\"\(name)\"]", "the value contains a NUL byte")
        }
        for (i, c) in (commands ?? []).enumerated() where c.trimmingSpaces().isEmpty || c.unicodeScalars.contains(where: { $0.value == 0 }) {
            throw SpecReader.error("\(at(.commands))[\(i)]", "empty or contains a NUL byte; give a shell command")
        }
        if let copy {
            let hex = copy.bundle.utf8
            guard hex.count == 64, hex.allSatisfy({ (0x30...0x39).contains($0) || (0x61...0x66).contains($0) }) else {
                throw SpecReader.error("\(at(.copy)).bundle", "\"\(copy.bundle)\" is not a bundle's SHA-256 (64 lowercase hex digits; upload it with PUT /v1/code/{sha256})")
            }
            let parts = copy.dest.split(separator: "/")
            guard copy.dest.hasPrefix("/"), printable(copy.dest), !parts.contains(".."), !parts.contains("."),
                  copy.dest.utf8.count < 1024 else {
                throw SpecReader.error("\(at(.copy)).dest", "\"\(copy.dest)\" is not an absolute path without . or .. components")
            }
        }
    }

    /// Debian policy's package names (lowercase letters, digits, `+-.`,
    /// two characters at least, alphanumeric first), with an optional
    /// `=VERSION` or `/RELEASE` as apt-get takes them.
    static func isAptPackage(_ s: String) -> Bool {
        var name = Substring(s)
        var suffix: Substring = ""
        if let i = s.firstIndex(where: { $0 == "=" || $0 == "/" }) {
            name = s[..<i]
            suffix = s[s.index(after: i)...]
            guard !suffix.isEmpty, suffix.utf8.allSatisfy({ c in
                (0x30...0x39).contains(c) || (0x41...0x5a).contains(c) || (0x61...0x7a).contains(c)
                    || "+-.:~_".utf8.contains(c)
            }) else { return false }
        }
        let b = Array(name.utf8)
        func alnum(_ c: UInt8) -> Bool { (0x30...0x39).contains(c) || (0x61...0x7a).contains(c) }
        guard b.count >= 2, b.count <= 200, alnum(b[0]) else { return false }
        return b.allSatisfy { alnum($0) || $0 == UInt8(ascii: "+") || $0 == UInt8(ascii: "-") || $0 == UInt8(ascii: ".") }
    }
}

/// One line of the NDJSON stream answering `POST /v1/images/build`:
/// `start` (image name, steps), per step `step` (description, cached),
/// `output` lines with `verbose`, `step_done` (seconds, cached), then
/// `done` (the image as `GET /v1/images` lists it; `cached`: no step ran)
/// or `error`. `image` is the name in `start` and the summary in `done`.
public struct ImageBuildEvent: Codable, Sendable {
    public var event: String
    public var imageName: String?
    public var image: ImageSummary?
    public var steps: Int?
    public var index: Int?
    public var total: Int?
    public var description: String?
    public var cached: Bool?
    public var line: String?
    public var seconds: Double?
    public var error: APIErrorBody.Detail?

    public init(event: String, imageName: String? = nil, image: ImageSummary? = nil, steps: Int? = nil,
                index: Int? = nil, total: Int? = nil, description: String? = nil, cached: Bool? = nil,
                line: String? = nil, seconds: Double? = nil, error: APIErrorBody.Detail? = nil) {
        self.event = event; self.imageName = imageName; self.image = image; self.steps = steps
        self.index = index; self.total = total; self.description = description; self.cached = cached
        self.line = line; self.seconds = seconds; self.error = error
    }

    enum CodingKeys: String, CodingKey {
        case event, image, steps, index, total, description, cached, line, seconds, error
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        event = try c.decode(String.self, forKey: .event)
        if let name = try? c.decodeIfPresent(String.self, forKey: .image) {
            imageName = name
        } else {
            image = try c.decodeIfPresent(ImageSummary.self, forKey: .image)
        }
        steps = try c.decodeIfPresent(Int.self, forKey: .steps)
        index = try c.decodeIfPresent(Int.self, forKey: .index)
        total = try c.decodeIfPresent(Int.self, forKey: .total)
        description = try c.decodeIfPresent(String.self, forKey: .description)
        cached = try c.decodeIfPresent(Bool.self, forKey: .cached)
        line = try c.decodeIfPresent(String.self, forKey: .line)
        seconds = try c.decodeIfPresent(Double.self, forKey: .seconds)
        error = try c.decodeIfPresent(APIErrorBody.Detail.self, forKey: .error)
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(event, forKey: .event)
        if let image { try c.encode(image, forKey: .image) } else { try c.encodeIfPresent(imageName, forKey: .image) }
        try c.encodeIfPresent(steps, forKey: .steps)
        try c.encodeIfPresent(index, forKey: .index)
        try c.encodeIfPresent(total, forKey: .total)
        try c.encodeIfPresent(description, forKey: .description)
        try c.encodeIfPresent(cached, forKey: .cached)
        try c.encodeIfPresent(line, forKey: .line)
        try c.encodeIfPresent(seconds, forKey: .seconds)
        try c.encodeIfPresent(error, forKey: .error)
    }
}
