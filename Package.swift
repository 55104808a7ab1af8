// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "Hearth",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "hearthd", targets: ["hearthd"]),
        .executable(name: "hearth", targets: ["hearth"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-crypto", from: "3.12.3"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.6.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-extras", from: "1.35.2"),
        .package(url: "https://github.com/apple/swift-http-types", from: "1.8.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "5.0.1"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.5.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.0.0"),
        .package(url: "https://github.com/swift-server/async-http-client.git", from: "1.37.0"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-system", from: "1.4.0"),
        .package(url: "https://github.com/apple/swift-certificates", from: "1.21.1"),
        .package(url: "https://github.com/apple/swift-asn1", from: "1.7.4"),
    ],
    targets: [
        // C: the spawn path (clone3 -> execve) and raw syscall shims.
        .target(name: "CHearth", path: "Sources/CHearth"),
        .systemLibrary(name: "CSeccomp", path: "Sources/CSeccomp", pkgConfig: "libseccomp",
                       providers: [.apt(["libseccomp-dev"])]),
        .systemLibrary(name: "CCap", path: "Sources/CCap", pkgConfig: "libcap",
                       providers: [.apt(["libcap-dev"])]),
        .systemLibrary(name: "CSQLite", path: "Sources/CSQLite", pkgConfig: "sqlite3",
                       providers: [.apt(["libsqlite3-dev"])]),
        .systemLibrary(name: "CZlib", path: "Sources/CZlib", pkgConfig: "zlib",
                       providers: [.apt(["zlib1g-dev"])]),

        // Spec, quantities, errors, API types: no I/O.
        .target(name: "HearthCore", dependencies: [.product(name: "Yams", package: "Yams")]),
        // The one home for OS helpers on swift-system: owned descriptors,
        // directories, atomic writes, safe tree removal, pipes.
        .target(name: "HearthOS", dependencies: [
            "HearthCore", "CHearth",
            .product(name: "SystemPackage", package: "swift-system"),
        ]),
        // OCI import, layer cache, whiteouts.
        .target(name: "HearthImage", dependencies: [
            "HearthCore", "HearthOS", "CHearth", "CZlib",
            .product(name: "Crypto", package: "swift-crypto"),
        ]),
        // Pulls from OCI registries: references, the distribution protocol, auth, credentials.
        .target(name: "HearthRegistry", dependencies: [
            "HearthCore", "HearthOS", "HearthImage",
            .product(name: "AsyncHTTPClient", package: "async-http-client"),
            .product(name: "NIOSSL", package: "swift-nio-ssl"),
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "NIOHTTP1", package: "swift-nio"),
            .product(name: "Crypto", package: "swift-crypto"),
        ]),
        // cgroups, seccomp -> BPF, capabilities, mount plan, SpawnPlan, running a replica.
        .target(name: "HearthSandbox", dependencies: [
            "HearthCore", "HearthOS", "HearthImage", "CHearth", "CSeccomp", "CCap",
            .product(name: "Crypto", package: "swift-crypto"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        // Finished tasks on disk: SQLite (WAL), batched writes, retention.
        .target(name: "HearthTaskStore", dependencies: [
            "HearthCore", "CHearth", "CSQLite",
            .product(name: "Logging", package: "swift-log"),
        ]),
        // Environments, warm replicas, the task channel, scheduler, code bundles, secrets.
        .target(name: "HearthPool", dependencies: [
            "HearthCore", "HearthOS", "HearthImage", "HearthSandbox", "HearthTaskStore", "CHearth",
            .product(name: "Crypto", package: "swift-crypto"),
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "Logging", package: "swift-log"),
            .product(name: "Metrics", package: "swift-metrics"),
        ]),
        // Image builds from ImageSpecs: steps in build replicas, upper dirs → OCI layers, the step cache.
        .target(name: "HearthBuild", dependencies: [
            "HearthCore", "HearthOS", "HearthImage", "HearthSandbox", "CHearth",
            .product(name: "Crypto", package: "swift-crypto"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        // The filtering HTTP(S) forward proxy of replicas with network egress.
        .target(name: "HearthEgress", dependencies: [
            "HearthCore", "HearthSandbox", "HearthRelay",
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        // A byte relay between two NIO channels (the egress proxy's tunnels, the CLI's TLS tunnel).
        .target(name: "HearthRelay", dependencies: [.product(name: "NIOCore", package: "swift-nio")]),
        // Mutual TLS for remote daemons: the cluster's certificates (`hearth
        // certs`), the daemon's and a client's TLS files, the CLI's tunnel.
        .target(name: "HearthTLS", dependencies: [
            "HearthCore", "HearthRelay",
            .product(name: "X509", package: "swift-certificates"),
            .product(name: "SwiftASN1", package: "swift-asn1"),
            .product(name: "Crypto", package: "swift-crypto"),
            .product(name: "NIOSSL", package: "swift-nio-ssl"),
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "NIOTLS", package: "swift-nio"),
        ]),
        // HTTP API on the Unix socket (and on TCP with mutual TLS).
        .target(name: "HearthServer", dependencies: [
            "HearthCore", "HearthOS", "HearthImage", "HearthSandbox", "HearthPool", "HearthTaskStore", "HearthBuild", "HearthEgress", "HearthRegistry", "HearthTLS",
            .product(name: "Hummingbird", package: "hummingbird"),
            .product(name: "NIOSSL", package: "swift-nio-ssl"),
            .product(name: "NIOTLS", package: "swift-nio"),
            .product(name: "HummingbirdCore", package: "hummingbird"),
            .product(name: "NIOHTTPTypes", package: "swift-nio-extras"),
            .product(name: "HTTPTypes", package: "swift-http-types"),
            .product(name: "Logging", package: "swift-log"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "Metrics", package: "swift-metrics"),
            .product(name: "Prometheus", package: "swift-prometheus"),
        ]),
        // Blocking HTTP/1.1 client over the Unix socket (or a TLS tunnel), for the CLI.
        .target(name: "HearthClient", dependencies: ["HearthCore", "HearthOS", "HearthTLS"]),

        .executableTarget(name: "hearthd", dependencies: [
            "HearthServer",
            "HearthClient",
            "HearthTLS",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Logging", package: "swift-log"),
        ], linkerSettings: [
            // Resident memory (idle hearthd 37 → 29 MiB): a static Swift
            // runtime and Foundation map only the pages the daemon touches,
            // not every shared library's symbol tables and relocated data;
            // packed relative relocations (lld, DT_RELR, glibc ≥ 2.36) keep
            // the binary position-independent without 2.6 MiB of .rela.dyn
            // read at start-up; no exported symbols, no 2 MiB dynamic symbol
            // table paged in.
            .unsafeFlags(["-static-stdlib", "-l_FoundationCollections", "-l_FoundationCShims", "-lswiftSynchronization", "-lCoreFoundation", "-l_FoundationICU", "-lFoundationInternationalization",
                          "-use-ld=lld", "-Xlinker", "-z", "-Xlinker", "pack-relative-relocs", "-Xlinker", "--no-export-dynamic"]),
        ]),
        .executableTarget(name: "hearth", dependencies: [
            "HearthClient", "HearthCore", "HearthOS", "HearthTLS",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ], linkerSettings: [
            // Every CLI run pays for dynamic linking; a static Swift runtime
            // starts several milliseconds sooner.
            .unsafeFlags(["-static-stdlib", "-l_FoundationCollections", "-l_FoundationCShims", "-lswiftSynchronization", "-lCoreFoundation", "-l_FoundationICU", "-lFoundationInternationalization"]),
        ]),

        .testTarget(name: "HearthCoreTests", dependencies: ["HearthCore"]),
        .testTarget(name: "HearthTLSTests", dependencies: ["HearthTLS", "HearthCore"]),
        .testTarget(name: "HearthOSTests", dependencies: ["HearthOS", "HearthCore"]),
        .testTarget(name: "HearthImageTests", dependencies: ["HearthOS", "HearthImage", "HearthCore"]),
        .testTarget(name: "HearthSandboxTests", dependencies: ["HearthOS", "HearthSandbox", "HearthCore"]),
        .testTarget(name: "HearthRegistryTests", dependencies: ["HearthRegistry", "HearthImage", "HearthCore"]),
        .testTarget(name: "HearthTaskStoreTests", dependencies: ["HearthTaskStore", "HearthCore"]),
        .testTarget(name: "HearthPoolTests", dependencies: [
            "HearthOS", "HearthPool", "HearthTaskStore", "HearthCore", "HearthSandbox",
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        .testTarget(name: "HearthBuildTests", dependencies: ["HearthOS", "HearthBuild", "HearthImage", "HearthCore"]),
    ],
    swiftLanguageModes: [.v6]
)
