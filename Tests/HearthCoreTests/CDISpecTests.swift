@testable import HearthCore
import XCTest

/// CDI spec files: what is read, and what is refused with its field.
final class CDISpecTests: XCTestCase {
    func testReadsJSONWithSpecAndDeviceEdits() throws {
        let text = #"""
        {"cdiVersion": "0.6.0", "kind": "nvidia.com/gpu",
         "containerEdits": {"env": ["NVIDIA_VISIBLE_DEVICES=void"], "hooks": [{"hookName": "createContainer", "path": "/usr/bin/nvidia-ctk", "args": ["nvidia-ctk", "hook", "update-ldcache"]}],
                            "mounts": [{"hostPath": "/usr/lib/libcuda.so.1", "containerPath": "/usr/lib/libcuda.so.1", "options": ["ro", "nosuid", "nodev", "bind"]}]},
         "devices": [{"name": "0", "containerEdits": {"deviceNodes": [{"path": "/dev/nvidia0", "major": 195, "minor": 0}]}},
                     {"name": "all", "containerEdits": {"deviceNodes": [{"path": "/dev/nvidia0"}, {"path": "/dev/nvidia1", "hostPath": "/dev/nvidia1", "type": "c", "permissions": "rw"}]}}]}
        """#
        let spec = try CDISpec(text: text, file: "/etc/cdi/nvidia.json")
        XCTAssertEqual(spec.qualifiedNames, ["nvidia.com/gpu=0", "nvidia.com/gpu=all"])
        let edits = spec.edits(for: spec.devices[0])
        XCTAssertEqual(edits.env, ["NVIDIA_VISIBLE_DEVICES=void"])
        XCTAssertEqual(edits.deviceNodes.map(\.path), ["/dev/nvidia0"])
        XCTAssertEqual(edits.deviceNodes.first?.major, 195)
        XCTAssertEqual(edits.mounts.first?.options, ["ro", "nosuid", "nodev", "bind"])
        XCTAssertEqual(edits.hooks.first?.args, ["nvidia-ctk", "hook", "update-ldcache"])
        XCTAssertEqual(spec.edits(for: spec.devices[1]).deviceNodes[1].permissions, "rw")
    }

    func testReadsYAML() throws {
        let spec = try CDISpec(text: "cdiVersion: 0.8.0\nkind: example.com/net\ndevices:\n  - name: tun\n    containerEdits:\n      deviceNodes: [{path: /dev/net/tun}]\n", file: "x.yaml")
        XCTAssertEqual(spec.qualifiedNames, ["example.com/net=tun"])
    }

    func testRefusalsNameTheFileAndTheField() {
        func refusal(_ text: String) -> String? {
            do { _ = try CDISpec(text: text, file: "/etc/cdi/f.json"); return nil } catch { return (error as? HearthError)?.message }
        }
        XCTAssertEqual(refusal(#"{"cdiVersion": "9.0.0", "kind": "a.com/b", "devices": [{"name": "x"}]}"#),
                       "/etc/cdi/f.json: cdiVersion: \"9.0.0\" is not a CDI version Hearth reads; expected one of 0.3.0, 0.4.0, 0.5.0, 0.6.0, 0.7.0, 0.8.0")
        XCTAssertEqual(refusal(#"{"cdiVersion": "0.6.0", "kind": "nokind", "devices": [{"name": "x"}]}"#),
                       "/etc/cdi/f.json: kind: \"nokind\" is not a CDI kind; expected vendor.com/class")
        XCTAssertEqual(refusal(#"{"cdiVersion": "0.6.0", "kind": "a.com/b", "devices": []}"#),
                       "/etc/cdi/f.json: devices: expected a non-empty list of devices")
        XCTAssertEqual(refusal(#"{"cdiVersion": "0.6.0", "kind": "a.com/b", "devices": [{"name": "x"}, {"name": "x"}]}"#),
                       "/etc/cdi/f.json: devices[1].name: \"x\" appears twice")
        XCTAssertEqual(refusal(#"{"cdiVersion": "0.6.0", "kind": "a.com/b", "devices": [{"name": "x", "containerEdits": {"deviceNodes": [{"path": "/dev/../etc/shadow"}]}}]}"#),
                       "/etc/cdi/f.json: devices[0].containerEdits.deviceNodes[0].path: \"/dev/../etc/shadow\" is not a path under /dev")
        XCTAssertEqual(refusal(#"{"cdiVersion": "0.6.0", "kind": "a.com/b", "devices": [{"name": "x", "containerEdits": {"env": ["NOEQUALS"]}}]}"#),
                       "/etc/cdi/f.json: devices[0].containerEdits.env[0]: \"NOEQUALS\" is not NAME=value")
        XCTAssertEqual(refusal(#"{"cdiVersion": "0.6.0", "kind": "a.com/b", "devices": [{"name": "x", "containerEdits": {"deviceNodes": [{"path": "/dev/x", "permissions": "rx"}]}}]}"#),
                       "/etc/cdi/f.json: devices[0].containerEdits.deviceNodes[0].permissions: \"rx\" is not a permission set; expected letters from r, w and m")
        XCTAssertEqual(refusal(#"{"cdiVersion": "0.6.0", "kind": "a.com/b", "devices": [{"name": "x", "containerEdits": {"hooks": [{"hookName": "createContainer", "path": "hook"}]}}]}"#),
                       "/etc/cdi/f.json: devices[0].containerEdits.hooks[0].path: \"hook\" is not an absolute path")
        XCTAssertEqual(refusal(#"{"cdiVersion": "0.6.0", "kind": "a.com/b", "devices": [{"name": "x", "containerEdits": {"hooks": [{"hookName": "createContainer", "path": "/h", "timeout": 0}]}}]}"#),
                       "/etc/cdi/f.json: devices[0].containerEdits.hooks[0].timeout: 0 is not allowed; a hook's timeout is at least 1 second")
        XCTAssertNotNil(refusal("{not json"))
    }

    func testQualifiedNames() {
        XCTAssertEqual(CDISpec.parseQualified("nvidia.com/gpu=0")?.kind, "nvidia.com/gpu")
        XCTAssertEqual(CDISpec.parseQualified("nvidia.com/gpu=GPU-1234:0")?.name, "GPU-1234:0")
        XCTAssertNil(CDISpec.parseQualified("nvidia.com/gpu"))
        XCTAssertNil(CDISpec.parseQualified("gpu=0"))
        XCTAssertNil(CDISpec.parseQualified("nvidia.com/gpu=/etc"))
    }
}
