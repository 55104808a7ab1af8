import HearthCore
@testable import HearthPool
import HearthSandbox
import XCTest

/// The spec → replica mapping, and that admission counts what a replica's
/// cgroup gets (one rule, applied in one place).
final class PoolConfigTests: XCTestCase {
    let mi: Int64 = 1 << 20

    private func config(_ e: EffectiveEnvironment, defaultMemory: Int64? = nil, userns: Bool = false) throws -> PoolConfig {
        try PoolConfig(e, seccomp: SeccompProfile.default, defaultMemory: defaultMemory, defaultUserNamespace: userns)
    }

    func testMemoryLimitIsTheLimitElseTheRequestElseTheDefault() throws {
        let cases: [(EffectiveEnvironment, Int64?, Int64?, Int64?)] = [
            // (environment, hearthd --default-memory, expected limit, expected request)
            (EffectiveEnvironment(name: "both", image: "i", memoryRequest: 100 * mi, memoryLimit: 300 * mi), 50 * mi, 300 * mi, 100 * mi),
            (EffectiveEnvironment(name: "request", image: "i", memoryRequest: 100 * mi), 50 * mi, 100 * mi, 100 * mi),
            (EffectiveEnvironment(name: "limit", image: "i", memoryLimit: 300 * mi), nil, 300 * mi, nil),
            (EffectiveEnvironment(name: "neither", image: "i"), 50 * mi, 50 * mi, nil),
            (EffectiveEnvironment(name: "nothing", image: "i"), nil, nil, nil),
        ]
        for (e, defaultMemory, limit, request) in cases {
            let c = try config(e, defaultMemory: defaultMemory)
            XCTAssertEqual(c.limits.memoryLimit, limit, e.name)
            XCTAssertEqual(c.limits.memoryRequest, request, e.name)
            // What admission counts per replica is what the cgroup gets.
            XCTAssertEqual(Admission.memory(e, defaultMemory: defaultMemory), limit ?? 0, e.name)
        }
    }

    func testEphemeralStorageAndTheRestOfTheSpec() throws {
        var e = EffectiveEnvironment(name: "env", image: "hearth/python:3.11", environment: ["A": "1"],
                                     cpuRequestMilli: 500, cpuLimitMilli: 2000, ephemeralStorageRequest: 10 * mi,
                                     replicaCount: 3, ttlSeconds: 90, secrets: ["k"], network: .egress,
                                     timeoutSeconds: 1.5, maxTasksPerReplica: 7, maxQueue: 9, packages: ["numpy"])
        var c = try config(e)
        XCTAssertEqual(c.ephemeralStorage, 10 * mi, "a request alone is also the limit")
        XCTAssertEqual(c.limits.cpuRequestMilli, 500)
        XCTAssertEqual(c.limits.cpuLimitMilli, 2000)
        XCTAssertEqual(c.replicaCount, 3)
        XCTAssertEqual(c.ttl, .seconds(90))
        XCTAssertEqual(c.network, .egress)
        XCTAssertEqual(c.timeout, .milliseconds(1500))
        XCTAssertEqual(c.maxTasksPerReplica, 7)
        XCTAssertEqual(c.maxQueue, 9)
        XCTAssertEqual(c.packages, ["numpy"])
        XCTAssertEqual(c.env, ["A": "1"])
        XCTAssertEqual(c.identity, e.identity)
        e.ephemeralStorageLimit = 20 * mi
        c = try config(e)
        XCTAssertEqual(c.ephemeralStorage, 20 * mi)
    }

    func testUserNamespaceDefaultsToTheDaemonsUnlessTheSpecSays() throws {
        var e = EffectiveEnvironment(name: "env", image: "i")
        XCTAssertFalse(try config(e, userns: false).userNamespace)
        XCTAssertTrue(try config(e, userns: true).userNamespace)
        e.userNamespace = false
        XCTAssertFalse(try config(e, userns: true).userNamespace)
    }

    func testAnUnknownCapabilityIsRefusedNamingTheEnvironment() {
        let e = EffectiveEnvironment(name: "caps", image: "i", capabilities: .init(add: ["CAP_NOT_A_THING"]))
        XCTAssertThrowsError(try config(e)) { error in
            let message = HearthError.wrap(error).message
            XCTAssertTrue(message.hasPrefix("environment \"caps\": capabilities: "), message)
            XCTAssertTrue(message.contains("CAP_NOT_A_THING"), message)
        }
    }

    /// The daemon's own cgroup on this host: whatever limit it reports is
    /// one that a memory cgroup file above this process holds.
    func testOwnCgroupMemoryLimitIsPositiveWhenSet() {
        if let limit = OwnCgroup.memoryLimit() { XCTAssertGreaterThan(limit, 0) }
        let capacity = EnvironmentAdmission.measureCapacity()
        XCTAssertGreaterThan(capacity.memoryBytes, 0)
        XCTAssertGreaterThan(capacity.cpuMilli, 0)
    }
}
