import Foundation
import HearthCore
@testable import HearthPool
import HearthSandbox
import XCTest

/// Which environments may adopt a pre-started spare: the rule is pure.
final class SparePoolTests: XCTestCase {
    private func config(env: [String: String] = [:], secrets: [String] = [], limits: CgroupLimits = CgroupLimits())
        -> PoolConfig {
        PoolConfig(name: "e", identity: "i", image: "hearth/python:3.11", env: env, limits: limits, replicaCount: 1,
                   ttl: .seconds(60), secrets: secrets, network: .none, seccomp: SeccompProfile.default,
                   capabilities: .dockerDefault, timeout: nil, maxTasksPerReplica: nil, maxQueue: 10)
    }

    func testPlainEnvironmentIsEligible() {
        XCTAssertNil(SparePool.ineligibility(config()))
        XCTAssertNil(SparePool.ineligibility(config(env: ["MODEL_DIR": "/m", "X": "1"],
                                                    limits: CgroupLimits(cpuLimitMilli: 500, memoryLimit: 64 << 20))))
    }

    func testSecretsRuleItOut() {
        XCTAssertEqual(SparePool.ineligibility(config(secrets: ["token"])),
                       "it requests secrets, which are mounted when a replica is built")
    }

    func testStartupVariablesRuleItOut() {
        for key in ["PATH", "HOME", "TZ", "LANG", "LANGUAGE", "PYTHONPATH", "PYTHONHASHSEED", "LD_PRELOAD", "LC_ALL",
                    "HEARTH_REPLICA"] {
            let why = SparePool.ineligibility(config(env: ["A": "1", key: "x"]))
            XCTAssertEqual(why, "its env sets \(key), which is read when the interpreter starts", key)
        }
        // Prefixes, not substrings.
        XCTAssertNil(SparePool.ineligibility(config(env: ["MY_PYTHONPATH": "x", "XLD_": "y"])))
    }

    func testLimitsBelowAnIdleWorkerRuleItOut() {
        XCTAssertNotNil(SparePool.ineligibility(config(limits: CgroupLimits(memoryLimit: (64 << 20) - 1))))
        XCTAssertNotNil(SparePool.ineligibility(config(limits: CgroupLimits(memoryRequest: 32 << 20))))
        XCTAssertNotNil(SparePool.ineligibility(config(limits: CgroupLimits(pidsMax: 63))))
        XCTAssertNil(SparePool.ineligibility(config(limits: CgroupLimits(pidsMax: 0))))
    }
}
