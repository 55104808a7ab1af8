@testable import HearthCore
import XCTest

final class AdmissionTests: XCTestCase {
    let gi: Int64 = 1 << 30

    func env(_ name: String, replicas: Int = 1, memLimit: Int64? = nil, memRequest: Int64? = nil,
             cpu: Int64? = nil, gpus: Int64? = nil) -> EffectiveEnvironment {
        EffectiveEnvironment(name: name, image: "hearth/python:3.11", cpuRequestMilli: cpu, memoryRequest: memRequest,
                             memoryLimit: memLimit, gpus: gpus, replicaCount: replicas)
    }

    /// 23.5Gi and 16 cores.
    var machine: MachineCapacity { MachineCapacity(cpuMilli: 16_000, memoryBytes: 47 * gi / 2) }

    func refusal(_ new: EffectiveEnvironment, replacing: String? = nil, admitted: [EffectiveEnvironment],
                 capacity: MachineCapacity? = nil) -> HearthError? {
        do {
            try Admission.admit(new, replacing: replacing, admitted: admitted, capacity: capacity ?? machine)
            return nil
        } catch {
            return error as? HearthError
        }
    }

    func testTheBriefsExample() {
        let error = refusal(env("big", replicas: 4, memLimit: 8 * gi), admitted: [env("small", replicas: 2, memLimit: gi)])
        XCTAssertEqual(error?.message,
                       "environment \"big\": replica_count 4 × memory limit 8Gi = 32Gi, plus 2Gi already admitted, exceeds the 23.5Gi this machine can give")
    }

    func testFitsExactlyAndJustOver() {
        XCTAssertNil(refusal(env("a", replicas: 2, memLimit: 10 * gi), admitted: [env("b", memLimit: 7 * gi / 2)]))
        let over = refusal(env("a", replicas: 2, memLimit: 10 * gi), admitted: [env("b", memLimit: 7 * gi / 2 + 1)])
        XCTAssertEqual(over?.code, .conflict)
        XCTAssertEqual(over?.message,
                       "environment \"a\": replica_count 2 × memory limit 10Gi = 20Gi, plus 3.5Gi already admitted, exceeds the 23.5Gi this machine can give")
    }

    func testAloneTooBigIsInvalidNotConflict() {
        let error = refusal(env("huge", replicas: 3, memLimit: 8 * gi), admitted: [])
        XCTAssertEqual(error?.code, .invalidArgument)
        XCTAssertEqual(error?.message,
                       "environment \"huge\": replica_count 3 × memory limit 8Gi = 24Gi exceeds the 23.5Gi this machine can give")
    }

    func testMemoryRequestCountsWhenThereIsNoLimit() {
        let error = refusal(env("r", replicas: 3, memRequest: 8 * gi), admitted: [])
        XCTAssertEqual(error?.message,
                       "environment \"r\": replica_count 3 × memory request 8Gi = 24Gi exceeds the 23.5Gi this machine can give")
        // Others' requests count too.
        XCTAssertNotNil(refusal(env("a", memLimit: 20 * gi), admitted: [env("b", memRequest: 4 * gi)]))
    }

    func testCPURequests() {
        let error = refusal(env("c", replicas: 4, cpu: 2000), admitted: [env("d", replicas: 3, cpu: 500), env("e", cpu: 9000)])
        XCTAssertEqual(error?.code, .conflict)
        XCTAssertEqual(error?.message,
                       "environment \"c\": replica_count 4 × cpu request 2 = 8 cpus, plus 10.5 already admitted, exceeds the 16 cpus this machine can give")
        XCTAssertNil(refusal(env("c", replicas: 4, cpu: 1250), admitted: [env("d", replicas: 3, cpu: 500), env("e", cpu: 9000)]))
        XCTAssertNil(refusal(env("f", replicas: 64, cpu: 250), admitted: []), "exactly the machine fits")
        XCTAssertEqual(refusal(env("f", replicas: 64, cpu: 251), admitted: [])?.message,
                       "environment \"f\": replica_count 64 × cpu request 0.251 = 16.064 cpus exceeds the 16 cpus this machine can give")
    }

    func testMemoryFormatting() {
        XCTAssertEqual(Admission.formatMemory(8 * gi), "8Gi")
        XCTAssertEqual(Admission.formatMemory(47 * gi / 2), "23.5Gi")
        XCTAssertEqual(Admission.formatMemory(300 << 20), "300Mi")
        XCTAssertEqual(Admission.formatMemory(1_000_000_000), "953.67Mi")
        XCTAssertEqual(Admission.formatMemory(512), "512")
        XCTAssertEqual(Admission.formatCores(7500), "7.5")
        XCTAssertEqual(Admission.formatCores(1), "0.001")
    }

    func testReplacementLeavesTheOldVersionOut() {
        let old = env("big", replicas: 2, memLimit: 8 * gi)
        let others = [old, env("other", memLimit: 4 * gi)]
        // 3 × 6Gi = 18Gi + 4Gi = 22Gi fits only if the old 16Gi is not counted.
        XCTAssertNil(refusal(env("big", replicas: 3, memLimit: 6 * gi), replacing: "big", admitted: others))
        XCTAssertNil(refusal(env("big", replicas: 3, memLimit: 6 * gi), admitted: others), "same name is a replacement")
        // A rename: the new name replaces the old one.
        XCTAssertNil(refusal(env("bigger", replicas: 3, memLimit: 6 * gi), replacing: "big", admitted: others))
        XCTAssertEqual(refusal(env("bigger", replicas: 3, memLimit: 6 * gi), admitted: others)?.message,
                       "environment \"bigger\": replica_count 3 × memory limit 6Gi = 18Gi, plus 20Gi already admitted, exceeds the 23.5Gi this machine can give")
    }

    func testAReplacementThatDoesNotGrowIsLetThroughOnAnOverfullMachine() {
        // Admitted when the machine was bigger; now 23.5Gi holds 30Gi.
        let admitted = [env("a", replicas: 2, memLimit: 10 * gi), env("b", memLimit: 10 * gi)]
        XCTAssertNil(refusal(env("a", replicas: 2, memLimit: 10 * gi), admitted: admitted), "same size")
        XCTAssertNil(refusal(env("a", replicas: 1, memLimit: 10 * gi), admitted: admitted), "smaller")
        XCTAssertNil(refusal(env("c"), admitted: admitted), "takes nothing")
        XCTAssertEqual(refusal(env("a", replicas: 2, memLimit: 11 * gi), admitted: admitted)?.message,
                       "environment \"a\": replica_count 2 × memory limit 11Gi = 22Gi, plus 10Gi already admitted, exceeds the 23.5Gi this machine can give")
    }

    func testEnvironmentsWithoutResourcesCountAsZero() {
        let free = (0..<10).map { env("free\($0)", replicas: 64) }
        XCTAssertNil(refusal(env("n", replicas: 64), admitted: free, capacity: MachineCapacity(cpuMilli: 0, memoryBytes: 0)))
        XCTAssertEqual(Admission.memoryReservation(env("m", replicas: 3, memLimit: gi, memRequest: gi / 2)), 3 * gi)
        XCTAssertEqual(Admission.cpuReservation(env("m", replicas: 3, cpu: 100)), 300)
    }

    func testGPUsNeedCapacity() {
        XCTAssertEqual(refusal(env("g", gpus: 1), admitted: [])?.message,
                       "environment \"g\": replica_count 1 × gpu 1 = 1 GPUs exceeds the 0 GPUs this machine can give")
        XCTAssertNil(refusal(env("g", replicas: 2, gpus: 1), admitted: [], capacity: MachineCapacity(cpuMilli: 1000, memoryBytes: gi, gpus: 2)))
        XCTAssertNil(refusal(env("g", gpus: 0), admitted: []))
    }

    func testOverflowSaturates() {
        let error = refusal(env("o", replicas: 64, memLimit: Int64.max / 2), admitted: [env("p", memLimit: Int64.max / 2)])
        XCTAssertEqual(error?.code, .invalidArgument)
        XCTAssertTrue(error?.message.hasPrefix("environment \"o\": replica_count 64 × memory limit") ?? false)
    }

    func testFromParsedSpecs() throws {
        let specs = try EnvironmentSpec.parseDocuments("""
            name: a
            replica_count: 2
            requests: {cpu: 2, mem: 4Gi}
            ---
            name: b
            replica_count: 4
            pod_template:
              pod_spec:
                containers: [{name: primary, resources: {requests: {cpu: 1, memory: 2Gi}, limits: {memory: 4Gi}}}]
            """, source: "two.yaml")
        let a = try specs[0].effective, b = try specs[1].effective
        XCTAssertNil(refusal(a, admitted: []))
        XCTAssertEqual(refusal(b, admitted: [a])?.message,
                       "environment \"b\": replica_count 4 × memory limit 4Gi = 16Gi, plus 8Gi already admitted, exceeds the 23.5Gi this machine can give")
        XCTAssertNil(refusal(b, admitted: [a], capacity: MachineCapacity(cpuMilli: 8000, memoryBytes: 24 * gi)))
        XCTAssertEqual(refusal(b, admitted: [a], capacity: MachineCapacity(cpuMilli: 7999, memoryBytes: 24 * gi))?.message,
                       "environment \"b\": replica_count 4 × cpu request 1 = 4 cpus, plus 4 already admitted, exceeds the 7.999 cpus this machine can give")
    }

    func testSparesAndTheDefaultMemoryCount() {
        let spares = SpareReservation(count: 2, each: gi)
        // 20Gi + 2 spares × 1Gi = 22Gi fits 23.5Gi; 21Gi + 2Gi + 1Gi admitted does not.
        XCTAssertNoThrow(try Admission.admit(env("a", memLimit: 20 * gi), replacing: nil, admitted: [], capacity: machine,
                                             spares: spares))
        do {
            try Admission.admit(env("a", memLimit: 21 * gi), replacing: nil, admitted: [env("b", memLimit: gi)],
                                capacity: machine, spares: spares)
            XCTFail("admitted past the spares")
        } catch let e as HearthError {
            XCTAssertEqual(e.code, .conflict)
            XCTAssertEqual(e.message, "environment \"a\": replica_count 1 × memory limit 21Gi = 21Gi, plus 1Gi already admitted, plus 2 spare replicas × 1Gi = 2Gi, exceeds the 23.5Gi this machine can give (hearthd --spares 0 keeps no spares)")
        } catch { XCTFail("\(error)") }
        // Without a memory limit or request, the default counts.
        do {
            try Admission.admit(env("d", replicas: 24), replacing: nil, admitted: [], capacity: machine, defaultMemory: gi)
            XCTFail("admitted 24 × the default")
        } catch let e as HearthError {
            XCTAssertEqual(e.message, "environment \"d\": replica_count 24 × default memory limit 1Gi = 24Gi exceeds the 23.5Gi this machine can give")
        } catch { XCTFail("\(error)") }
        XCTAssertEqual(Admission.memoryReservation(env("d", replicas: 3), defaultMemory: gi), 3 * gi)
        XCTAssertEqual(Admission.memoryReservation(env("d", replicas: 3, memLimit: 2 * gi), defaultMemory: gi), 6 * gi)
    }
}
