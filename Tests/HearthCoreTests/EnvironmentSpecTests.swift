import Foundation
@testable import HearthCore
import XCTest

/// The seed's four examples (seed/actors.md) as a user or the SDK writes
/// them, every validation rule with its message, unknown fields at each
/// depth, and identity.
final class EnvironmentSpecTests: XCTestCase {
    // MARK: Fixtures: the seed's examples

    static let helloWorldYAML = """
        # hello_world.py
        name: my-actor
        replica_count: 1
        ttl_seconds: 30
        requests:
          cpu: "2"
          mem: 300Mi
        container_image: localhost:30000/union:hello
        """
    static let helloWorldJSON = """
        {"name": "my-actor", "replica_count": 1, "ttl_seconds": 30,
         "requests": {"cpu": "2", "mem": "300Mi", "gpu": null, "ephemeral_storage": null},
         "limits": null, "container_image": "localhost:30000\\/union:hello"}
        """
    static let plusOneYAML = """
        name: my-actor
        replica_count: 1
        ttl_seconds: 300
        requests: {cpu: 2, mem: 500Mi}
        container_image: localhost:30000/union:plus-one
        """
    static let plusOneJSON = """
        [{"container_image": "localhost:30000/union:plus-one", "requests": {"mem": "500Mi", "cpu": 2},
          "ttl_seconds": 300, "replica_count": 1, "name": "my-actor"}]
        """
    static let multipleTasksYAML = """
        name: my-actor
        replica_count: 1
        ttl_seconds: 30
        requests:
          cpu: "1"
          mem: "450Mi"
        container_image: localhost:30000/union:multi
        """
    static let multipleTasksJSON = """
        {"name":"my-actor","replica_count":1,"ttl_seconds":30,"requests":{"cpu":"1","mem":"450Mi"},
         "container_image":"localhost:30000/union:multi"}
        """
    static let podTemplateYAML = """
        name: my-actor
        replica_count: 1
        ttl_seconds: 30
        pod_template:
          primary_container_name: primary
          pod_spec:
            containers:
              - name: primary
                image: localhost:30000/union-pod:v1
                resources:
                  requests:
                    cpu: "1"
                    memory: 1Gi
                  limits:
                    cpu: "1"
                    memory: 1Gi
                env:
                  - name: COMP_KEY_EX
                    value: compile_time
        """
    static let podTemplateJSON = """
        {
          "name": "my-actor", "replica_count": 1, "ttl_seconds": 30,
          "pod_template": {
            "primary_container_name": "primary",
            "labels": null,
            "pod_spec": {"containers": [{
              "name": "primary",
              "image": "localhost:30000/union-pod:v1",
              "resources": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": 1, "memory": "1Gi"}},
              "env": [{"name": "COMP_KEY_EX", "value": "compile_time"}]
            }]}
          }
        }
        """

    // MARK: preload

    func testPreloadKeepsItsOrderOnceEachAndChangesTheIdentity() throws {
        let e = try one("name: a\npreload: [numpy, pandas.core, numpy, _private.x1]").effective
        XCTAssertEqual(e.preload, ["numpy", "pandas.core", "_private.x1"])
        XCTAssertNil(try one("name: a").effective.preload)
        XCTAssertNil(try one("name: a\npreload: []").effective.preload)
        XCTAssertNotEqual(e.identity, try one("name: a").effective.identity)
        XCTAssertEqual(try one("name: a\npreload: []").effective.identity, try one("name: a").effective.identity)
        assertRefused("name: a\npreload: [numpy-2]", "env.yaml: preload[0]: \"numpy-2\" is not a module name")
        assertRefused("name: a\npreload: [json, a..b]", "env.yaml: preload[1]: \"a..b\" is not a module name")
        assertRefused("name: a\npreload: [\"1abc\"]", "env.yaml: preload[0]: \"1abc\" is not a module name")
        assertRefused("name: a\npreload: [\"os; import x\"]", "env.yaml: preload[0]:")
        let many = (0..<65).map { "m\($0)" }.joined(separator: ", ")
        assertRefused("name: a\npreload: [\(many)]", "env.yaml: preload: 65 modules; at most 64")
    }

    // MARK: Helpers

    func parse(_ text: String, source: String = "env.yaml") throws -> [EnvironmentSpec] {
        try EnvironmentSpec.parseDocuments(text, source: source)
    }

    func one(_ text: String, file: StaticString = #filePath, line: UInt = #line) throws -> EnvironmentSpec {
        let specs = try parse(text)
        XCTAssertEqual(specs.count, 1, file: file, line: line)
        return try XCTUnwrap(specs.first, file: file, line: line)
    }

    /// The message `text` is refused with (nil when it is accepted).
    func refusal(_ text: String, source: String = "env.yaml") -> String? {
        do {
            _ = try parse(text, source: source)
            return nil
        } catch let error as HearthError {
            XCTAssertEqual(error.code, .invalidArgument, error.message)
            return error.message
        } catch {
            return "not a HearthError: \(error)"
        }
    }

    func assertRefused(_ text: String, _ expected: String, file: StaticString = #filePath, line: UInt = #line) {
        let message = refusal(text)
        XCTAssertNotNil(message, "accepted:\n\(text)", file: file, line: line)
        guard let message else { return }
        XCTAssertTrue(message.hasPrefix(expected), "\n  got:      \(message)\n  expected: \(expected)…", file: file, line: line)
    }

    // MARK: The seed's examples

    func testHelloWorld() throws {
        let yaml = try one(Self.helloWorldYAML)
        let json = try one(Self.helloWorldJSON)
        XCTAssertEqual(yaml, json)
        XCTAssertEqual(yaml.name, "my-actor")
        XCTAssertEqual(yaml.requests, .init(cpu: "2", mem: "300Mi"))
        let e = try yaml.effective
        XCTAssertEqual(e.image, "localhost:30000/union:hello")
        XCTAssertEqual(e.replicaCount, 1)
        XCTAssertEqual(e.ttlSeconds, 30)
        XCTAssertEqual(e.cpuRequestMilli, 2000)
        XCTAssertEqual(e.memoryRequest, 300 << 20)
        // Flyte's rule: given only as requests, they are the limits too.
        XCTAssertEqual(e.cpuLimitMilli, 2000)
        XCTAssertEqual(e.memoryLimit, 300 << 20)
        XCTAssertEqual(try yaml.identity, try json.identity)
    }

    func testPlusOne() throws {
        let yaml = try one(Self.plusOneYAML)
        XCTAssertEqual(yaml, try one(Self.plusOneJSON))
        XCTAssertEqual(yaml.requests, .init(cpu: "2", mem: "500Mi"))
        let e = try yaml.effective
        XCTAssertEqual(e.ttlSeconds, 300)
        XCTAssertEqual(e.cpuLimitMilli, 2000)
        XCTAssertEqual(e.memoryLimit, 500 << 20)
    }

    func testMultipleTasks() throws {
        let yaml = try one(Self.multipleTasksYAML)
        XCTAssertEqual(yaml, try one(Self.multipleTasksJSON))
        let e = try yaml.effective
        XCTAssertEqual(e.cpuRequestMilli, 1000)
        XCTAssertEqual(e.memoryRequest, 450 << 20)
        XCTAssertEqual(e.image, "localhost:30000/union:multi")
    }

    func testPodTemplate() throws {
        let yaml = try one(Self.podTemplateYAML)
        let json = try one(Self.podTemplateJSON)
        XCTAssertEqual(yaml, json)
        XCTAssertNil(yaml.containerImage)
        XCTAssertEqual(yaml.podTemplate?.primaryContainer?.env, [.init(name: "COMP_KEY_EX", value: "compile_time")])
        let e = try yaml.effective
        XCTAssertEqual(e.environment, ["COMP_KEY_EX": "compile_time"])
        XCTAssertEqual(e.image, "localhost:30000/union-pod:v1")
        XCTAssertEqual(e.cpuRequestMilli, 1000)
        XCTAssertEqual(e.cpuLimitMilli, 1000)
        XCTAssertEqual(e.memoryRequest, 1 << 30)
        XCTAssertEqual(e.memoryLimit, 1 << 30)
        XCTAssertEqual(try yaml.identity, try json.identity)
    }

    func testPrimaryContainerOverridesTheEnvironment() throws {
        let spec = try one("""
            name: merged
            container_image: base:1
            environment: {A: top, B: top}
            requests: {cpu: 500m, mem: 256Mi}
            limits: {cpu: 2, mem: 2Gi}
            pod_template:
              labels: {team: ml}
              pod_spec:
                containers:
                  - name: primary
                    env: [{name: B, value: pod}, {name: C}]
                    resources: {requests: {memory: 512Mi}}
            """)
        let e = try spec.effective
        XCTAssertEqual(e.image, "base:1", "no image in the container: container_image stays")
        XCTAssertEqual(e.environment, ["A": "top", "B": "pod", "C": ""])
        XCTAssertEqual(e.cpuRequestMilli, 500)
        XCTAssertEqual(e.memoryRequest, 512 << 20)
        XCTAssertEqual(e.cpuLimitMilli, 2000)
        XCTAssertEqual(e.memoryLimit, 2 << 30)
        XCTAssertEqual(e.labels, ["team": "ml"])
    }

    func testLimitOnlyBecomesTheRequest() throws {
        let e = try one("name: l\nlimits: {cpu: 1, mem: 1Gi}").effective
        XCTAssertEqual(e.cpuRequestMilli, 1000)
        XCTAssertEqual(e.memoryRequest, 1 << 30)
    }

    // MARK: Documents

    func testSeveralYAMLDocuments() throws {
        let text = [
            Self.helloWorldYAML.replacingOccurrences(of: "my-actor", with: "hello"),
            Self.plusOneYAML.replacingOccurrences(of: "my-actor", with: "plus-one"),
            Self.multipleTasksYAML.replacingOccurrences(of: "my-actor", with: "multiple-tasks"),
            Self.podTemplateYAML.replacingOccurrences(of: "my-actor", with: "pod-template"),
        ].joined(separator: "\n---\n")
        let specs = try parse("---\n" + text + "\n---\n# trailing comment only\n")
        XCTAssertEqual(specs.map(\.name), ["hello", "plus-one", "multiple-tasks", "pod-template"])
        XCTAssertEqual(try specs[3].effective.environment, ["COMP_KEY_EX": "compile_time"])
    }

    func testYAMLListDocumentAndJSONArray() throws {
        let yaml = try parse("- name: a\n- name: b\n---\nname: c\n")
        XCTAssertEqual(yaml.map(\.name), ["a", "b", "c"])
        let json = try parse(#"[{"name": "a"}, {"name": "b", "replica_count": 2}]"#, source: "envs.json")
        XCTAssertEqual(json.map(\.name), ["a", "b"])
        XCTAssertEqual(json[1].replicaCount, 2)
        // Flow-style YAML that is not JSON still reads.
        XCTAssertEqual(try parse("{name: flow, replica_count: 3}")[0].replicaCount, 3)
    }

    func testIndexesCountEnvironmentsOverTheFile() {
        assertRefused("- name: a\n- name: b\n---\nname: c\nreplica_count: 0\n",
                      "env.yaml: environments[2].replica_count: 0 is out of range")
        XCTAssertEqual(refusal(#"[{"name": "a"}, {"name": "b", "ttl_seconds": 0}]"#, source: "envs.json"),
                       "envs.json: environments[1].ttl_seconds: 0 is out of range; expected 1 to 86400 seconds (one day)")
    }

    func testDuplicateNamesInOneFile() {
        XCTAssertEqual(refusal("name: a\n---\nname: b\n---\nname: a\n"),
                       "env.yaml: environments[2].name: \"a\" is already the name of environments[0]; names must be unique")
    }

    func testNothingOrGarbage() {
        assertRefused("", "env.yaml: no environments found")
        assertRefused("# only a comment\n---\n", "env.yaml: no environments found")
        assertRefused("name: a\n  bad: indent\n", "env.yaml: invalid YAML:")
        assertRefused(#"{"name": "a", "ttl_seconds": 3"#, "env.yaml: invalid JSON:")
        // Not JSON, but a YAML flow mapping: read as YAML.
        XCTAssertNil(refusal(#"{"name": "a",}"#))
        assertRefused("just a string", "env.yaml: expected a mapping of environment fields, got a string (\"just a string\")")
        assertRefused("- name: a\n- 3\n", "env.yaml: environments[1]: expected a mapping of environment fields, got a number (3)")
    }

    func testDuplicateYAMLKey() {
        XCTAssertEqual(refusal("name: a\nenvironment:\n  X: 1\n  X: 2\n"), "env.yaml: environment.X: duplicate key")
    }

    func testAliasesExpandWithinALimit() throws {
        let spec = try one("name: a\nrequests: &r {cpu: 1}\nlimits: *r\n")
        XCTAssertEqual(spec.limits.cpu, "1")
        // Each level doubles: 2^20 values from a few lines.
        var text = "name: a\nenvironment:\n  l0: &l0 [x, x]\n"
        for i in 1...20 { text += "  l\(i): &l\(i) [*l\(i - 1), *l\(i - 1)]\n" }
        assertRefused(text, "env.yaml: environment.l")
        XCTAssertTrue(refusal(text)?.contains("too many values") ?? false)
    }

    func testYAMLCoreSchemaScalars() throws {
        let spec = try one("""
            name: a
            environment: {DEBUG: yes, PORT: 8080, VERSION: 3.10, ON: on, FLAG: true, EMPTY: ""}
            """)
        // YAML 1.2: yes/on are strings; numbers keep their spelling.
        XCTAssertEqual(spec.environment, ["DEBUG": "yes", "PORT": "8080", "VERSION": "3.10", "ON": "on", "FLAG": "true", "EMPTY": ""])
        assertRefused("name: a\nnetwork: no\n", "env.yaml: network: \"no\" is not supported; expected none (loopback only), egress (HTTP and HTTPS to public hosts through the daemon's proxy) or host")
        assertRefused("name: a\nenvironment: {X: null}\n", "env.yaml: environment[\"X\"]: expected a string, got null")
        XCTAssertEqual(try one("name: a\nreplica_count: !!int \"3\"\n").replicaCount, 3)
        assertRefused("name: a\nreplica_count: !!int three\n", "env.yaml: replica_count: \"three\" does not match its tag")
        assertRefused("name: a\nttl_seconds: !custom 3\n", "env.yaml: ttl_seconds: the YAML tag !custom is not supported")
        assertRefused("name: a\n<<: {ttl_seconds: 3}\n", "env.yaml: merge keys (<<) are not supported")
    }

    // MARK: Defaults and Hearth's own fields

    func testDefaults() throws {
        let spec = try one("name: minimal")
        XCTAssertEqual(spec, EnvironmentSpec(name: "minimal"))
        let e = try spec.effective
        XCTAssertEqual(e.image, "hearth/python:3.11")
        XCTAssertEqual(e.replicaCount, 1)
        XCTAssertEqual(e.ttlSeconds, 100)
        XCTAssertEqual(e.maxQueue, 1000)
        XCTAssertEqual(e.network, .none)
        XCTAssertEqual(e.seccomp, .default)
        XCTAssertEqual(e.capabilities, .init())
        XCTAssertNil(e.timeoutSeconds)
        XCTAssertNil(e.maxTasksPerReplica)
        XCTAssertNil(e.cpuRequestMilli)
        XCTAssertNil(e.memoryLimit)
        XCTAssertEqual(e.secrets, [])
        XCTAssertEqual(e.environment, [:])
    }

    func testHearthFields() throws {
        let spec = try one("""
            name: tuned
            network: host
            seccomp: /etc/hearth/profile.json
            capabilities: {add: [net_admin, CAP_SYS_PTRACE, NET_ADMIN], drop: [all]}
            timeout: 1h30m
            max_tasks_per_replica: 100
            max_queue: 10
            """)
        XCTAssertEqual(spec.network, .host)
        XCTAssertEqual(spec.seccomp, .profile(path: "/etc/hearth/profile.json"))
        XCTAssertEqual(spec.timeout, 5400)
        XCTAssertEqual(spec.maxTasksPerReplica, 100)
        XCTAssertEqual(spec.maxQueue, 10)
        let e = try spec.effective
        XCTAssertEqual(e.capabilities, .init(add: ["CAP_NET_ADMIN", "CAP_SYS_PTRACE"], drop: ["ALL"]))
        XCTAssertEqual(e.timeout, .seconds(5400))
        XCTAssertEqual(try one("name: a\nseccomp: unconfined").seccomp, .unconfined)
    }

    func testTimeoutForms() throws {
        let cases: [(String, Double)] = [("30", 30), ("0.5", 0.5), ("\"45\"", 45), ("30s", 30), ("5m", 300), ("1h", 3600),
                                         ("1.5h", 5400), ("500ms", 0.5), ("2m30s", 150), ("\" 10s \"", 10)]
        for (text, seconds) in cases {
            XCTAssertEqual(try one("name: a\ntimeout: \(text)").timeout, seconds, text)
        }
        XCTAssertEqual(try one(#"{"name": "a", "timeout": 2.5}"#).timeout, 2.5)
        for bad in ["5x", "m", "1h 30m", "-5s", "1.2.3s", "ms"] {
            assertRefused("name: a\ntimeout: \"\(bad)\"", "env.yaml: timeout: \"\(bad)\" is not a duration; expected seconds (30) or a duration such as 30s")
        }
        assertRefused("name: a\ntimeout: 0", "env.yaml: timeout: 0 is not allowed; a timeout must be more than 0 seconds")
        assertRefused("name: a\ntimeout: -1", "env.yaml: timeout: -1 is not allowed")
        assertRefused("name: a\ntimeout: 8d", "env.yaml: timeout: \"8d\" is not a duration")
        assertRefused("name: a\ntimeout: 169h", "env.yaml: timeout: 608400 seconds is too long; the most is 604800 (7 days)")
        assertRefused("name: a\ntimeout: [1]", "env.yaml: timeout: expected seconds or a duration such as \"5m\", got a list")
    }

    func testMemoryAliasesAndNumbers() throws {
        let spec = try one("name: a\nrequests: {memory: 1Gi, cpu: 0.5, ephemeral-storage: 10Gi, nvidia.com/gpu: 0}")
        XCTAssertEqual(spec.requests, .init(cpu: "0.5", mem: "1Gi", gpu: "0", ephemeralStorage: "10Gi"))
        let e = try spec.effective
        XCTAssertEqual(e.cpuRequestMilli, 500)
        XCTAssertEqual(e.ephemeralStorageLimit, 10 << 30)
        XCTAssertEqual(e.gpus, 0)
        XCTAssertEqual(try one(#"{"name": "a", "limits": {"mem": 1073741824, "cpu": 0.25}}"#).limits, .init(cpu: "0.25", mem: "1073741824"))
        assertRefused("name: a\nrequests: {mem: 1Gi, memory: 1Gi}", "env.yaml: requests.memory: mem and memory are the same field; give one of them")
    }

    func testSecretRequests() throws {
        let spec = try one("""
            name: a
            secret_requests:
              - OPENAI_KEY
              - {key: db.password}
              - {group: aws-creds}
              - {key: token, group: github}
              - OPENAI_KEY
            """)
        XCTAssertEqual(spec.secretRequests, ["OPENAI_KEY", "db.password", "aws-creds", "token"])
        XCTAssertEqual(try spec.effective.secrets, ["OPENAI_KEY", "aws-creds", "db.password", "token"])
        assertRefused("name: a\nsecret_requests: [{}]", "env.yaml: secret_requests[0].key: missing; a secret request needs a key")
        assertRefused("name: a\nsecret_requests: [3]", "env.yaml: secret_requests[0]: expected a secret key (a string) or a mapping with key and group, got a number (3)")
        assertRefused("name: a\nsecret_requests: OPENAI_KEY", "env.yaml: secret_requests: expected a list, got a string")
    }

    // MARK: Validation rules

    func testNameRule() {
        for bad in ["My-Actor", "-a", "a-", "a_b", "a.b", String(repeating: "a", count: 64), ""] {
            XCTAssertEqual(refusal("name: \"\(bad)\""),
                           "env.yaml: name: \"\(bad)\" is not a valid environment name; use 1 to 63 lowercase letters, digits and '-', starting and ending with a letter or digit (^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$)")
        }
        for good in ["a", "0", "my-actor", "a1-b2", String(repeating: "a", count: 63)] {
            XCTAssertNil(refusal("name: \"\(good)\""), good)
        }
        assertRefused("replica_count: 1", "env.yaml: name: missing; this field is required")
        assertRefused("name: 123", "env.yaml: name: expected a string, got a number (123)")
    }

    func testRanges() {
        assertRefused("name: a\nreplica_count: 0", "env.yaml: replica_count: 0 is out of range; expected 1 to 64")
        assertRefused("name: a\nreplica_count: 65", "env.yaml: replica_count: 65 is out of range; expected 1 to 64")
        assertRefused("name: a\nreplica_count: 99999999999999999999999", "env.yaml: replica_count: 99999999999999999999999 is out of range")
        assertRefused("name: a\nttl_seconds: 0", "env.yaml: ttl_seconds: 0 is out of range; expected 1 to 86400 seconds (one day)")
        assertRefused("name: a\nttl_seconds: 86401", "env.yaml: ttl_seconds: 86401 is out of range")
        XCTAssertNil(refusal("name: a\nttl_seconds: 86400\nreplica_count: 64"))
        assertRefused("name: a\nmax_tasks_per_replica: 0", "env.yaml: max_tasks_per_replica: 0 is out of range; expected at least 1")
        assertRefused("name: a\nmax_queue: 0", "env.yaml: max_queue: 0 is out of range; expected 1 to 100000")
        assertRefused("name: a\nmax_queue: 100001", "env.yaml: max_queue: 100001 is out of range")
    }

    func testQuantities() {
        assertRefused("name: a\nrequests: {mem: lots}", "env.yaml: requests.mem: \"lots\" is not a memory quantity; expected bytes")
        assertRefused("name: a\nrequests: {memory: lots}", "env.yaml: requests.memory: \"lots\" is not a memory quantity")
        assertRefused("name: a\nlimits: {cpu: two}", "env.yaml: limits.cpu: \"two\" is not a CPU quantity")
        assertRefused("name: a\nlimits: {cpu: 0}", "env.yaml: limits.cpu: \"0\" is not a CPU quantity")
        assertRefused("name: a\nlimits: {gpu: 1.5}", "env.yaml: limits.gpu: \"1.5\" is not a GPU count; expected a whole number such as 1")
        assertRefused("name: a\nlimits: {ephemeral_storage: 1XB}", "env.yaml: limits.ephemeral_storage: \"1XB\" is not a memory quantity")
        assertRefused("name: a\nlimits: {cpu: [1]}", "env.yaml: limits.cpu: expected a quantity (a string such as \"500m\" or \"1Gi\", or a number), got a list")
        assertRefused("""
            name: a
            pod_template:
              pod_spec:
                containers: [{name: primary, resources: {limits: {memory: 1 GB}}}]
            """, "env.yaml: pod_template.pod_spec.containers[0].resources.limits.memory: \"1 GB\" is not a memory quantity")
    }

    func testRequestWithinLimit() {
        XCTAssertEqual(refusal("name: a\nrequests: {mem: 2Gi}\nlimits: {mem: 1Gi}"),
                       "env.yaml: requests.mem: 2Gi is more than limits.mem (1Gi); a request cannot exceed its limit")
        assertRefused("""
            name: a
            limits: {cpu: 1}
            pod_template:
              pod_spec:
                containers: [{name: primary, resources: {requests: {cpu: 2}}}]
            """, "env.yaml: pod_template.pod_spec.containers[0].resources.requests.cpu: 2 is more than limits.cpu (1)")
        assertRefused("name: a\nrequests: {gpu: 1}\nlimits: {gpu: 2}", "env.yaml: requests.gpu: 1 differs from limits.gpu (2); GPUs are whole devices")
        XCTAssertNil(refusal("name: a\nrequests: {mem: 1Gi, cpu: 1}\nlimits: {mem: 1Gi, cpu: 2}"))
    }

    func testEnvironmentVariableNames() {
        for bad in ["1BAD", "A-B", "A B", "A=B", ""] {
            XCTAssertEqual(refusal("name: a\nenvironment: {\"\(bad)\": x}"),
                           "env.yaml: environment[\"\(bad)\"]: \"\(bad)\" is not a valid environment variable name; expected ^[A-Za-z_][A-Za-z0-9_]*$")
        }
        XCTAssertNil(refusal("name: a\nenvironment: {_A1: x, lower: y}"))
        assertRefused("name: a\nenvironment: {A: \"x\\0y\"}", "env.yaml: environment[\"A\"]: the value contains a NUL byte")
        assertRefused("""
            name: a
            pod_template:
              pod_spec:
                containers: [{name: primary, env: [{name: OK, value: 1}, {name: 9X, value: b}]}]
            """, "env.yaml: pod_template.pod_spec.containers[0].env[1].name: \"9X\" is not a valid environment variable name")
        assertRefused("""
            name: a
            pod_template:
              pod_spec:
                containers: [{name: primary, env: [{name: X, value: a}, {name: X, value: b}]}]
            """, "env.yaml: pod_template.pod_spec.containers[0].env[1].name: \"X\" is set twice")
        assertRefused("name: a\nenvironment: [A, B]", "env.yaml: environment: expected a mapping of names to strings, got a list")
    }

    func testNetworkSeccompCapabilities() {
        assertRefused("name: a\nnetwork: bridge", "env.yaml: network: \"bridge\" is not supported; expected none (loopback only), egress (HTTP and HTTPS to public hosts through the daemon's proxy) or host")
        assertRefused("name: a\nseccomp: profile.json",
                      "env.yaml: seccomp: \"profile.json\" is not allowed; expected default, unconfined or an absolute path to an OCI seccomp profile")
        assertRefused("name: a\ncapabilities: {add: [\"NET ADMIN\"]}",
                      "env.yaml: capabilities.add[0]: \"NET ADMIN\" is not a capability name; expected a name such as NET_ADMIN or CAP_NET_ADMIN, or ALL")
        assertRefused("name: a\ncapabilities: {drop: [CAP_]}", "env.yaml: capabilities.drop[0]: \"CAP_\" is not a capability name")
        assertRefused("name: a\ncapabilities: {drop: [1CAP]}", "env.yaml: capabilities.drop[0]: \"1CAP\" is not a capability name")
        assertRefused("name: a\ncapabilities: [NET_ADMIN]", "env.yaml: capabilities: expected a mapping with add and drop, got a list")
    }

    func testSecretKeys() {
        for bad in [".", "..", "a/b", "has space", String(repeating: "k", count: 254)] {
            XCTAssertEqual(refusal("name: a\nsecret_requests: [\"\(bad)\"]"),
                           "env.yaml: secret_requests[0]: \"\(bad)\" is not a valid secret key; use 1 to 253 letters, digits, '_', '.' or '-' (^[A-Za-z0-9_.-]{1,253}$), not \".\" or \"..\"")
        }
        XCTAssertNil(refusal("name: a\nsecret_requests: [a.b-c_D, \"...\"]"))
    }

    /// ImageSpec's packages: checked by the worker, so only what its check
    /// understands (a name and at most one version clause) gets through.
    func testPackages() throws {
        let e = try one("name: a\npackages: [pandas==2.1.4, numpy, numpy, torch>=2, scipy~=1.10, x_y.z-w, a==1.2.*]").effective
        XCTAssertEqual(e.packages, ["a==1.2.*", "numpy", "pandas==2.1.4", "scipy~=1.10", "torch>=2", "x_y.z-w"])
        XCTAssertNil(try one("name: a").effective.packages)
        for bad in ["", "-numpy", "numpy>=", "numpy >=1", "numpy;os", "numpy==1,<2", "numpy[extra]", "a b", "numpy=1"] {
            XCTAssertEqual(refusal("name: a\npackages: [\"\(bad)\"]"),
                           "env.yaml: packages[0]: \"\(bad)\" is not a package requirement; use a distribution name, optionally with one version clause such as numpy>=1.24 or pandas==2.1.4")
        }
        assertRefused("name: a\npackages: numpy", "env.yaml: packages: expected a list")
    }

    func testImages() {
        assertRefused("name: a\ncontainer_image: \"\"", "env.yaml: container_image: empty; name an image such as hearth/python:3.11")
        assertRefused("name: a\ncontainer_image: \"python 3\"", "env.yaml: container_image: \"python 3\" is not an image reference")
        assertRefused("""
            name: a
            pod_template:
              pod_spec: {containers: [{name: primary, image: ""}]}
            """, "env.yaml: pod_template.pod_spec.containers[0].image: empty")
    }

    func testPodTemplateRules() {
        XCTAssertEqual(refusal("""
            name: a
            pod_template:
              primary_container_name: main
              pod_spec: {containers: [{name: primary}]}
            """), "env.yaml: pod_template.primary_container_name: \"main\" names no container in pod_template.pod_spec.containers (\"primary\")")
        assertRefused("name: a\npod_template: {pod_spec: {containers: []}}",
                      "env.yaml: pod_template.primary_container_name: \"primary\" names no container in pod_template.pod_spec.containers (none given)")
        assertRefused("""
            name: a
            pod_template:
              pod_spec: {containers: [{name: primary}, {name: sidecar}]}
            """, "env.yaml: pod_template.pod_spec.containers[1]: \"sidecar\" is not the primary container (\"primary\"); a replica runs only the primary container")
        assertRefused("name: a\npod_template: {pod_spec: {containers: [{image: x}]}}",
                      "env.yaml: pod_template.pod_spec.containers[0].name: missing; this field is required")
        assertRefused("name: a\npod_template: {pod_spec: {containers: {name: primary}}}",
                      "env.yaml: pod_template.pod_spec.containers: expected a list, got a mapping")
        assertRefused("name: a\npod_template: {labels: [a]}", "env.yaml: pod_template.labels: expected a mapping of names to strings, got a list")
        // Labels only, no pod_spec: nothing to merge.
        XCTAssertNil(refusal("name: a\npod_template: {labels: {team: ml}, annotations: {note: x}}"))
    }

    func testTypeErrorsNameTheFieldAndType() {
        assertRefused("name: a\nreplica_count: two", "env.yaml: replica_count: expected a whole number, got a string (\"two\")")
        assertRefused("name: a\nreplica_count: 1.5", "env.yaml: replica_count: expected a whole number, got a number (1.5)")
        assertRefused("name: a\nttl_seconds: true", "env.yaml: ttl_seconds: expected a whole number, got a boolean (true)")
        assertRefused("name: a\nrequests: 5", "env.yaml: requests: expected a mapping of resources (cpu, mem, gpu, ephemeral_storage), got a number (5)")
        assertRefused("name: a\ncontainer_image: {x: 1}", "env.yaml: container_image: expected a string, got a mapping")
        assertRefused(#"{"name": "a", "max_queue": "10"}"#, "env.yaml: max_queue: expected a whole number, got a string (\"10\")")
        assertRefused("name: a\npod_template: x", "env.yaml: pod_template: expected a pod template mapping, got a string")
        // A float from Python that is whole is fine.
        XCTAssertEqual(try one(#"{"name": "a", "ttl_seconds": 30.0}"#).ttlSeconds, 30)
    }

    func testImagePullPolicy() throws {
        XCTAssertNil(try one("name: a").effective.imagePullPolicy)
        XCTAssertEqual(try one("name: a\nimage_pull_policy: Always").effective.imagePullPolicy, .always)
        // The primary container's, in Kubernetes' or snake_case spelling, wins.
        let pod = "name: a\nimage_pull_policy: Always\npod_template: {pod_spec: {containers: [{name: primary, %@: Never}]}}"
        for key in ["imagePullPolicy", "image_pull_policy"] {
            XCTAssertEqual(try one(pod.replacingOccurrences(of: "%@", with: key)).effective.imagePullPolicy, .never)
        }
        assertRefused("name: a\nimage_pull_policy: always",
                      "env.yaml: image_pull_policy: \"always\" is not a pull policy; expected IfNotPresent, Always or Never (as Kubernetes spells them)")
        assertRefused("name: a\npod_template: {pod_spec: {containers: [{name: primary, imagePullPolicy: Sometimes}]}}",
                      "env.yaml: pod_template.pod_spec.containers[0].imagePullPolicy: \"Sometimes\" is not a pull policy; expected IfNotPresent, Always or Never (as Kubernetes spells them)")
        // When the image is fetched is not part of what the replicas run.
        XCTAssertEqual(try one("name: a\nimage_pull_policy: Never").effective.identity, try one("name: a").effective.identity)
        // Saved and read back.
        let spec = try one("name: a\nimage_pull_policy: IfNotPresent")
        XCTAssertEqual(try JSONDecoder().decode(EnvironmentSpec.self, from: JSONEncoder().encode(spec)), spec)
    }

    func testScalingFields() throws {
        let e = try one("name: a\nreplicas: {min: 1, max: 4}\nscaledown_ttl: 5m\nconcurrency: 8\nprewarm: true").effective
        XCTAssertEqual(e.replicaCount, 4, "replica_count is the max")
        XCTAssertEqual(e.leastReplicas, 1)
        XCTAssertEqual(e.scaledownSeconds, 300)
        XCTAssertEqual(e.tasksPerReplica, 8)
        XCTAssertEqual(e.prewarm, true)
        // Flyte 2's tuple, one number, and a max alone (min 0).
        XCTAssertEqual(try one("name: a\nreplicas: [0, 3]").effective.leastReplicas, 0)
        XCTAssertEqual(try one("name: a\nreplicas: [0, 3]").effective.replicaCount, 3)
        XCTAssertEqual(try one("name: a\nreplicas: {max: 2}").effective.leastReplicas, 0)
        XCTAssertEqual(try one("name: a\nreplicas: 3").effective.identity, try one("name: a\nreplica_count: 3").effective.identity,
                       "a fixed number either way is the same environment")
        XCTAssertEqual(try one("name: a\nreplicas: {min: 1, max: 2}\nreplica_count: 2").effective.replicaCount, 2,
                       "both, agreeing (the normalized form writes both)")
        // Defaults leave the identity alone.
        let plain = try one("name: a").effective.identity
        XCTAssertEqual(try one("name: a\nconcurrency: 1\nprewarm: false\nscaledown_ttl: 100").effective.identity, plain)
        XCTAssertNotEqual(try one("name: a\nconcurrency: 2").effective.identity, plain)
        XCTAssertNotEqual(try one("name: a\nreplicas: [0, 1]").effective.identity, plain)
        // Refusals name the field and the rule.
        assertRefused("name: a\nreplicas: {min: 3, max: 2}",
                      "env.yaml: replicas.min: 3 is more than replicas.max (2); the least replicas cannot exceed the most")
        assertRefused("name: a\nreplicas: {min: -1, max: 2}", "env.yaml: replicas.min: -1 is out of range; expected 0 to 64")
        assertRefused("name: a\nreplicas: {min: 0, max: 65}", "env.yaml: replicas.max: 65 is out of range; expected 1 to 64")
        assertRefused("name: a\nreplicas: {min: 0}", "env.yaml: replicas.max: missing; replicas needs a max (the most replicas at once)")
        assertRefused("name: a\nreplicas: {min: 0, max: 2, most: 3}", "env.yaml: replicas.most: unknown field")
        assertRefused("name: a\nreplicas: [1, 2, 3]", "env.yaml: replicas: expected [min, max], got a list of 3")
        assertRefused("name: a\nreplicas: fast", "env.yaml: replicas: expected {min, max}, [min, max] or a number, got a string")
        assertRefused("name: a\nreplicas: [0, 4]\nreplica_count: 2",
                      "env.yaml: replica_count: 2 disagrees with replicas.max (4); give replicas {min, max}, or replica_count alone for a fixed number")
        assertRefused("name: a\nconcurrency: 0", "env.yaml: concurrency: 0 is out of range; expected 1 to 256 tasks at once in one replica")
        assertRefused("name: a\nscaledown_ttl: 1.5", "env.yaml: scaledown_ttl: 1.5 is not whole seconds")
        assertRefused("name: a\nscaledown_ttl: 0", "env.yaml: scaledown_ttl: 0 is out of range; expected 1 to 86400 seconds (one day)")
        assertRefused("name: a\nprewarm: yes please", "env.yaml: prewarm: expected true or false")
        // Saved and read back.
        let spec = try one("name: a\nreplicas: [1, 4]\nconcurrency: 4\nprewarm: true\nscaledown_ttl: 60")
        XCTAssertEqual(try JSONDecoder().decode(EnvironmentSpec.self, from: JSONEncoder().encode(spec)), spec)
        // Built in code: replica_count follows replicas.max.
        XCTAssertEqual(try EnvironmentSpec(name: "a", replicas: .init(min: 0, max: 5)).validated().replicaCount, 5)
    }

    func testMounts() throws {
        let e = try one("name: a\nmounts: [{host_path: /data/z, path: /z}, {host_path: /data/models, path: /models, read_only: false}]").effective
        XCTAssertEqual(e.mounts, [.init(hostPath: "/data/models", path: "/models", readOnly: false),
                                  .init(hostPath: "/data/z", path: "/z", readOnly: true)],
                       "sorted by path, read-only unless said")
        XCTAssertEqual(try one("name: a\nmounts: []").effective.identity, try one("name: a").effective.identity)
        XCTAssertNotEqual(try one("name: a\nmounts: [{host_path: /d, path: /d}]").effective.identity,
                          try one("name: a\nmounts: [{host_path: /d, path: /d, read_only: false}]").effective.identity)
        assertRefused("name: a\nmounts: [{host_path: data, path: /d}]",
                      "env.yaml: mounts[0].host_path: \"data\" is not allowed; expected an absolute path other than /")
        assertRefused("name: a\nmounts: [{host_path: /data/../etc, path: /d}]",
                      "env.yaml: mounts[0].host_path: \"/data/../etc\" is not a normalized path")
        assertRefused("name: a\nmounts: [{host_path: /data//x, path: /d}]", "env.yaml: mounts[0].host_path: \"/data//x\" is not a normalized path")
        assertRefused("name: a\nmounts: [{host_path: /d, path: /proc/x}]", "env.yaml: mounts[0].path: \"/proc/x\" is under /proc")
        assertRefused("name: a\nmounts: [{host_path: /d, path: /.hearth}]", "env.yaml: mounts[0].path: \"/.hearth\" is /.hearth")
        assertRefused("name: a\nmounts: [{host_path: /d, path: /x}, {host_path: /e, path: /x}]",
                      "env.yaml: mounts[1].path: \"/x\" is already the path of mounts[0]")
        assertRefused("name: a\nmounts: [{path: /x}]", "env.yaml: mounts[0].host_path: missing")
        assertRefused("name: a\nmounts: [{host_path: /d, path: /x, readonly: true}]", "env.yaml: mounts[0].readonly: unknown field")
        assertRefused("name: a\nmounts: [{host_path: /d, path: /x, read_only: yes}]", "env.yaml: mounts[0].read_only: expected true or false")
        let spec = try one("name: a\nmounts: [{host_path: /d, path: /x, read_only: false}]")
        XCTAssertEqual(try JSONDecoder().decode(EnvironmentSpec.self, from: JSONEncoder().encode(spec)), spec)
    }

    func testPodTemplateHostPathVolumesBecomeMounts() throws {
        let text = """
        name: a
        mounts: [{host_path: /data/in, path: /in}]
        pod_template:
          pod_spec:
            containers:
              - name: primary
                volumeMounts: [{name: models, mountPath: /models}, {name: out, mountPath: /out, readOnly: false}]
            volumes:
              - {name: models, hostPath: {path: /data/models, type: Directory}}
              - {name: out, hostPath: {path: /data/out}}
        """
        let e = try one(text).effective
        XCTAssertEqual(e.mounts, [.init(hostPath: "/data/in", path: "/in", readOnly: true),
                                  .init(hostPath: "/data/models", path: "/models", readOnly: true),
                                  .init(hostPath: "/data/out", path: "/out", readOnly: false)])
        let spec = try one(text)
        XCTAssertEqual(try JSONDecoder().decode(EnvironmentSpec.self, from: JSONEncoder().encode(spec)), spec)
        assertRefused("name: a\npod_template: {pod_spec: {containers: [{name: primary, volumeMounts: [{name: x, mountPath: /x}]}]}}",
                      "env.yaml: pod_template.pod_spec.containers[0].volumeMounts[0].name: \"x\" names no volume in pod_spec.volumes")
        assertRefused("name: a\npod_template: {pod_spec: {containers: [{name: primary}], volumes: [{name: c, configMap: {name: c}}]}}",
                      "env.yaml: pod_template.pod_spec.volumes[0]: volume \"c\" is not a hostPath volume")
        assertRefused("name: a\npod_template: {pod_spec: {containers: [{name: primary}], volumes: [{name: s, hostPath: {path: /s, type: Socket}}]}}",
                      "env.yaml: pod_template.pod_spec.volumes[0].hostPath.type: \"Socket\" is not supported")
    }

    func testMountPolicyFindsTheLongestAllowedPrefix() throws {
        let e = try one("name: a\nmounts: [{host_path: /data/models/x, path: /x}, {host_path: /srv, path: /s}]").effective
        let policy = MountPolicy(allowed: ["/data", "/data/models", "/srv"])
        XCTAssertEqual(try policy.prefixes(for: e), ["/srv", "/data/models"], "in the effective order (by path: /s, /x)")
        XCTAssertFalse(MountPolicy.isUnder("/database", "/data"), "component-wise, not by characters")
        XCTAssertThrowsError(try MountPolicy(allowed: ["/data"]).prefixes(for: e)) { error in
            let e = error as? HearthError
            XCTAssertEqual(e?.code, .forbidden)
            XCTAssertEqual(e?.message, "environment \"a\": mounts: host_path \"/srv\" (at /s) is not under a directory hearthd lets environments mount (hearthd --allow-mount: /data)")
        }
        XCTAssertThrowsError(try MountPolicy(allowed: []).prefixes(for: e)) { error in
            XCTAssertTrue((error as? HearthError)?.message.contains("hearthd allows none") == true)
        }
    }

    func testUnknownFieldsAtEveryDepth() {
        assertRefused("name: a\nreplica: 2", "env.yaml: replica: unknown field")
        XCTAssertEqual(refusal("name: a\nttl: 2"),
                       "env.yaml: ttl: unknown field; expected one of name, container_image, environment, requests, limits, replica_count, ttl_seconds, secret_requests, pod_template, network, seccomp, capabilities, timeout, max_tasks_per_replica, max_queue, packages, user_namespace, image_pull_policy, replicas, scaledown_ttl, concurrency, prewarm, mounts, devices, preload")
        XCTAssertEqual(refusal("name: a\nreplica_cont: 2"), "env.yaml: replica_cont: unknown field (did you mean replica_count?)")
        assertRefused("name: a\nrequests: {cpus: 1}", "env.yaml: requests.cpus: unknown field (did you mean cpu?)")
        assertRefused("name: a\ncapabilities: {add: [], remove: []}", "env.yaml: capabilities.remove: unknown field")
        assertRefused("name: a\nsecret_requests: [{key: k, mount_requirement: FILE}]", "env.yaml: secret_requests[0].mount_requirement: unknown field")
        assertRefused("name: a\npod_template: {primary: x}", "env.yaml: pod_template.primary: unknown field")
        assertRefused("name: a\npod_template: {pod_spec: {containers: [], initContainers: []}}", "env.yaml: pod_template.pod_spec.initContainers: unknown field")
        assertRefused("name: a\npod_template: {pod_spec: {containers: [{name: primary, command: [sh]}]}}",
                      "env.yaml: pod_template.pod_spec.containers[0].command: unknown field")
        assertRefused("name: a\npod_template: {pod_spec: {containers: [{name: primary, env: [{name: A, valueFrom: {}}]}]}}",
                      "env.yaml: pod_template.pod_spec.containers[0].env[0].valueFrom: unknown field")
        assertRefused("name: a\npod_template: {pod_spec: {containers: [{name: primary, resources: {claims: []}}]}}",
                      "env.yaml: pod_template.pod_spec.containers[0].resources.claims: unknown field")
        assertRefused("name: a\npod_template: {pod_spec: {containers: [{name: primary, resources: {limits: {hugepages-2Mi: 1}}}]}}",
                      "env.yaml: pod_template.pod_spec.containers[0].resources.limits.hugepages-2Mi: unknown field")
        // The brief's example: deep, in the second environment of a file.
        XCTAssertEqual(refusal("""
            name: first
            ---
            name: second
            pod_template:
              pod_spec:
                containers:
                  - name: primary
                    imagee: python:3.12
            """), "env.yaml: environments[1].pod_template.pod_spec.containers[0].imagee: unknown field (did you mean image?)")
        // Unknown even when null: a misspelt field is never silently ignored.
        assertRefused(#"{"name": "a", "ttl_second": null}"#, "env.yaml: ttl_second: unknown field (did you mean ttl_seconds?)")
    }

    // MARK: Identity

    func testIdentityIsStableAcrossSpellings() throws {
        let base = try one(Self.podTemplateYAML).identity
        XCTAssertEqual(base.count, 64)
        XCTAssertTrue(base.allSatisfy { $0.isHexDigit && !$0.isUppercase })
        let reordered = """
            pod_template:
              pod_spec:
                containers:
                  - env: [{value: compile_time, name: COMP_KEY_EX}]
                    resources:
                      limits: {memory: 1024Mi, cpu: 1000m}
                      requests: {mem: 1Gi, cpu: 1}
                    image: localhost:30000/union-pod:v1
                    name: primary
            ttl_seconds: 30    # reformatted, keys reordered, quantities respelt
            name: my-actor
            """
        XCTAssertEqual(try one(reordered).identity, base)
        XCTAssertEqual(try one(Self.podTemplateJSON).identity, base)
        // The same effective environment written without a pod template.
        let flat = """
            name: my-actor
            ttl_seconds: 30
            container_image: localhost:30000/union-pod:v1
            environment: {COMP_KEY_EX: compile_time}
            requests: {cpu: 1, mem: 1Gi}
            """
        XCTAssertEqual(try one(flat).identity, base)
        // Defaults written out change nothing.
        XCTAssertEqual(try one("name: a").identity, try one("name: a\nreplica_count: 1\nttl_seconds: 100\nnetwork: none\nseccomp: default\nmax_queue: 1000\ncapabilities: {add: []}").identity)
        XCTAssertEqual(try one("name: a\nsecret_requests: [x, y]\ncapabilities: {add: [net_admin, SYS_TIME]}").identity,
                       try one("name: a\nsecret_requests: [y, x, y]\ncapabilities: {add: [CAP_SYS_TIME, CAP_NET_ADMIN]}").identity)
        XCTAssertEqual(try one("name: a\ntimeout: 1m").identity, try one("name: a\ntimeout: 60").identity)
    }

    func testIdentityChangesWithAnyChange() throws {
        let base = "name: a\nrequests: {cpu: 1, mem: 1Gi}\n"
        let changes = [
            "name: b\nrequests: {cpu: 1, mem: 1Gi}\n",
            base + "container_image: python:3.12",
            base + "environment: {X: '1'}",
            "name: a\nrequests: {cpu: 2, mem: 1Gi}\n",
            "name: a\nrequests: {cpu: 1, mem: 2Gi}\n",
            base + "limits: {cpu: 2}",
            base + "limits: {mem: 2Gi}",
            base + "limits: {gpu: 1}",
            base + "limits: {ephemeral_storage: 1Gi}",
            base + "replica_count: 2",
            base + "ttl_seconds: 101",
            base + "secret_requests: [k]",
            base + "network: host",
            base + "seccomp: unconfined",
            base + "seccomp: /p.json",
            base + "capabilities: {add: [NET_ADMIN]}",
            base + "capabilities: {drop: [NET_ADMIN]}",
            base + "timeout: 30",
            base + "max_tasks_per_replica: 5",
            base + "max_queue: 5",
            base + "pod_template: {labels: {a: b}}",
            base + "pod_template: {annotations: {a: b}}",
            base + "pod_template: {pod_spec: {containers: [{name: primary, env: [{name: Y, value: '1'}]}]}}",
            base + "pod_template: {pod_spec: {containers: [{name: primary, image: other}]}}",
            base + "packages: [numpy]",
            base + "packages: [numpy>=1.24]",
        ]
        var seen = [try one(base).identity: base]
        for change in changes {
            let identity = try one(change).identity
            XCTAssertNil(seen[identity], "same identity for:\n\(change)\nand:\n\(seen[identity] ?? "")")
            seen[identity] = change
        }
    }

    /// Pinned: if the canonical encoding changes (a new non-optional field,
    /// a Foundation that formats numbers differently), every environment
    /// rolls when the daemon is upgraded. That must be a decision, not an accident.
    func testIdentityIsSHA256OfThePinnedCanonicalEncoding() throws {
        let e = try one("name: a\nrequests: {cpu: 500m, mem: 1Gi}\ntimeout: 1.5\nsecret_requests: [k]").effective
        let canonical = #"{"annotations":{},"capabilities":{"add":[],"drop":[]},"cpu_limit_milli":500,"cpu_request_milli":500,"#
            + #""environment":{},"image":"hearth/python:3.11","labels":{},"max_queue":1000,"memory_limit":1073741824,"#
            + #""memory_request":1073741824,"name":"a","network":"none","replica_count":1,"seccomp":"default","secrets":["k"],"#
            + #""timeout_seconds":1.5,"ttl_seconds":100}"#
        XCTAssertEqual(String(decoding: e.canonicalEncoding, as: UTF8.self), canonical)
        // sha256 of `canonical`, computed independently (Python hashlib).
        XCTAssertEqual(e.identity, "94c781d9ed13b9d7692e0816c09e53a54320c66cf1185a7b5c41f2e5cfb23f3e")
    }

    // MARK: Codable

    func testEncodedSpecReadsBack() throws {
        for text in [Self.helloWorldYAML, Self.podTemplateYAML, "name: x\nnetwork: host\nseccomp: /p.json\ntimeout: 2m\nsecret_requests: [{key: k}]\ncapabilities: {add: [net_admin]}\nmax_tasks_per_replica: 3"] {
            let spec = try one(text)
            let encoder = JSONEncoder()
            encoder.outputFormatting = .sortedKeys
            let data = try encoder.encode(spec)
            XCTAssertEqual(try one(String(decoding: data, as: UTF8.self)), spec)
            XCTAssertEqual(try JSONDecoder().decode(EnvironmentSpec.self, from: data), spec)
        }
        let effective = try one(Self.podTemplateYAML).effective
        XCTAssertEqual(try JSONDecoder().decode(EffectiveEnvironment.self, from: JSONEncoder().encode(effective)), effective)
    }

    func testDecodableUsesTheSameRulesWithTheCodingPath() throws {
        struct Apply: Decodable { var environments: [EnvironmentSpec] }
        let ok = try JSONDecoder().decode(Apply.self, from: Data(#"{"environments": [{"name": "a", "requests": {"memory": "1Gi"}}]}"#.utf8))
        XCTAssertEqual(ok.environments.first?.requests.mem, "1Gi")
        let bad = Data(#"{"environments": [{"name": "a"}, {"name": "b", "pod_template": {"pod_spec": {"containers": [{"name": "primary", "imagee": "x"}]}}}]}"#.utf8)
        XCTAssertThrowsError(try JSONDecoder().decode(Apply.self, from: bad)) { error in
            XCTAssertEqual((error as? HearthError)?.message,
                           "environments[1].pod_template.pod_spec.containers[0].imagee: unknown field (did you mean image?)")
        }
    }

    func testValidatedChecksSpecsBuiltInCode() throws {
        XCTAssertNoThrow(try EnvironmentSpec(name: "ok", requests: .init(cpu: "1")).validated())
        XCTAssertThrowsError(try EnvironmentSpec(name: "ok", replicaCount: 0).validated()) { error in
            XCTAssertEqual((error as? HearthError)?.message, "replica_count: 0 is out of range; expected 1 to 64")
        }
        XCTAssertThrowsError(try EnvironmentSpec(name: "ok", limits: .init(mem: "lots")).effective) { error in
            XCTAssertTrue((error as? HearthError)?.message.hasPrefix("limits.mem: \"lots\" is not a memory quantity") ?? false)
        }
        XCTAssertThrowsError(try EnvironmentSpec(name: "ok", seccomp: .profile(path: "relative.json")).validated())
    }

    func testDurationParser() {
        XCTAssertEqual(EnvironmentSpec.parseDuration("1h2m3s"), 3723)
        XCTAssertEqual(EnvironmentSpec.parseDuration("250ms"), 0.25)
        XCTAssertNil(EnvironmentSpec.parseDuration(""))
        XCTAssertNil(EnvironmentSpec.parseDuration("s"))
        XCTAssertNil(EnvironmentSpec.parseDuration("1d"))
    }

    func testUserNamespaceIsABooleanAndLeftOutOfTheIdentityWhenUnset() throws {
        XCTAssertNil(try one("name: a").userNamespace)
        XCTAssertEqual(try one("name: a\nuser_namespace: true").userNamespace, true)
        XCTAssertEqual(try one(#"{"name": "a", "user_namespace": false}"#).effective.userNamespace, false)
        assertRefused("name: a\nuser_namespace: yes please", "env.yaml: user_namespace: expected true or false")
        assertRefused("name: a\nuser_namespace: 1", "env.yaml: user_namespace: expected true or false")
        // Unset: the identity an environment had before the field existed.
        let plain = try one("name: a").effective
        XCTAssertFalse(String(decoding: plain.canonicalEncoding, as: UTF8.self).contains("user_namespace"))
        XCTAssertNotEqual(plain.identity, try one("name: a\nuser_namespace: true").effective.identity)
    }
}
