import Foundation
@testable import HearthCore
import XCTest

/// The image build request: its canonical JSON and tag (fixed vectors an SDK
/// replicates with Python's json.dumps), parsing with nulls kept and unknown
/// fields named, the checks, and the ImageSpec YAML file the CLI reads.
final class ImageBuildSpecTests: XCTestCase {
    static let defaultImage = "hearth/python:3.11"

    /// `ImageSpec(packages=["pandas"])` as the SDK sends it. Python:
    /// json.dumps(spec, ensure_ascii=True, sort_keys=True, separators=(",", ":"))
    /// → sha256 → [:16] → urlsafe_b64encode, "=" stripped, "-" → "_".
    func testCanonicalJSONAndTagVector() throws {
        let spec = ImageBuildSpec(packages: ["pandas"])
        XCTAssertEqual(spec.canonicalJSON(defaultBaseImage: Self.defaultImage),
                       #"{"apt_packages":[],"base_image":"hearth/python:3.11","commands":[],"copy":null,"env":{},"name":"flytekit","packages":["pandas"],"pip_extra_args":null,"pip_extra_index_url":[],"pip_index":null,"python_version":null,"registry":null,"requirements":null}"#)
        XCTAssertEqual(spec.computedTag(defaultBaseImage: Self.defaultImage), "4086UmQbtb_4e6YxM_aOQQ")
        XCTAssertEqual(spec.imageName(defaultBaseImage: Self.defaultImage), "flytekit:4086UmQbtb_4e6YxM_aOQQ")
        // The base image as given counts, not what it resolves to.
        var explicit = spec
        explicit.baseImage = Self.defaultImage
        XCTAssertEqual(explicit.computedTag(defaultBaseImage: "other:1"), "4086UmQbtb_4e6YxM_aOQQ")
        // A given tag is used as it is and is not part of the hash.
        var tagged = spec
        tagged.tag = "v1"
        XCTAssertEqual(tagged.imageName(defaultBaseImage: Self.defaultImage), "flytekit:v1")
        XCTAssertEqual(tagged.computedTag(defaultBaseImage: Self.defaultImage), "4086UmQbtb_4e6YxM_aOQQ")
    }

    /// Non-ASCII as \uXXXX (astral characters as surrogate pairs), DEL
    /// escaped, `/` not, null lists kept as null, nested keys sorted.
    func testCanonicalJSONEscapesAsPythonDoes() throws {
        let spec = ImageBuildSpec(registry: "localhost:5000/team", packages: nil,
                                  env: ["GREETING": "h\u{e9}llo \u{1F600}\n\"x\"\u{7f}\\", "A_B": "1"],
                                  commands: ["echo \u{fc}\t/"])
        XCTAssertEqual(spec.canonicalJSON(defaultBaseImage: Self.defaultImage),
                       #"{"apt_packages":[],"base_image":"hearth/python:3.11","commands":["echo \u00fc\t/"],"copy":null,"env":{"A_B":"1","GREETING":"h\u00e9llo \ud83d\ude00\n\"x\"\u007f\\"},"name":"flytekit","packages":null,"pip_extra_args":null,"pip_extra_index_url":[],"pip_index":null,"python_version":null,"registry":"localhost:5000/team","requirements":null}"#)
        XCTAssertEqual(spec.computedTag(defaultBaseImage: Self.defaultImage), "IeaxXLdEgycQU9V4tZMnEA")
        XCTAssertEqual(spec.imageName(defaultBaseImage: Self.defaultImage), "localhost:5000/team/flytekit:IeaxXLdEgycQU9V4tZMnEA")
    }

    func testBase64URL() {
        XCTAssertEqual(ImageBuildSpec.base64URL([]), "")
        XCTAssertEqual(ImageBuildSpec.base64URL([0xfb]), "-w")
        XCTAssertEqual(ImageBuildSpec.base64URL([0xfb, 0xff]), "-_8")
        XCTAssertEqual(ImageBuildSpec.base64URL([0xfb, 0xff, 0xbf]), "-_-_")
    }

    func testRequestParsingKeepsNullsAndDefaults() throws {
        let req = try ImageBuildRequest.parse(json: """
            {"spec": {"name": "app", "packages": null, "apt_packages": ["jq"], "env": {"A": 1},
                      "copy": {"bundle": "\(String(repeating: "ab", count: 32))"}},
             "verbose": true}
            """)
        XCTAssertTrue(req.verbose)
        XCTAssertEqual(req.spec.name, "app")
        XCTAssertNil(req.spec.packages)
        XCTAssertEqual(req.spec.aptPackages, ["jq"])
        XCTAssertEqual(req.spec.commands, [])
        XCTAssertEqual(req.spec.env, ["A": "1"])
        XCTAssertEqual(req.spec.copy, ImageBuildSpec.Copy(bundle: String(repeating: "ab", count: 32), dest: "/root"))
        // What the CLI sends reads back as the same spec.
        XCTAssertEqual(try ImageBuildRequest.parse(json: req.json()), req)
        let empty = try ImageBuildRequest.parse(json: #"{"spec": {}}"#)
        XCTAssertEqual(empty.spec, ImageBuildSpec())
        XCTAssertFalse(empty.verbose)
    }

    func testRequestErrorsNameTheField() {
        let cases: [(String, String)] = [
            (#"{"spec": {"pakages": ["x"]}}"#, "spec.pakages: unknown field (did you mean packages?)"),
            (#"{"spec": {}, "verbos": true}"#, "verbos: unknown field"),
            (#"{"spec": {"builder": "docker"}}"#, "spec.builder: unknown field; expected one of name,"),
            (#"{}"#, "spec: missing"),
            (#"{"spec": {"packages": "pandas"}}"#, "spec.packages: expected a list"),
            (#"{"spec": {"packages": ["--index-url=x"]}}"#, "spec.packages[0]: \"--index-url=x\" is not a package requirement"),
            (#"{"spec": {"apt_packages": ["jq", "Bad Name"]}}"#, "spec.apt_packages[1]: \"Bad Name\" is not a Debian package name"),
            (#"{"spec": {"env": {"1A": "x"}}}"#, "spec.env[\"1A\"]: \"1A\" is not a variable name"),
            (#"{"spec": {"python_version": "three"}}"#, "spec.python_version: \"three\" is not a Python version"),
            (#"{"spec": {"copy": {"bundle": "nothex"}}}"#, "spec.copy.bundle: \"nothex\" is not a bundle's SHA-256"),
            (#"{"spec": {"copy": {"bundle": "\#(String(repeating: "a", count: 64))", "dest": "rel"}}}"#, "spec.copy.dest: \"rel\" is not an absolute path"),
            (#"{"spec": {"copy": {"bundle": "\#(String(repeating: "a", count: 64))", "mode": 1}}}"#, "spec.copy.mode: unknown field"),
            (#"{"spec": {"name": null}}"#, "spec.name: null"),
            (#"{"spec": {"commands": [""]}}"#, "spec.commands[0]: empty"),
            (#"{"spec": {"pip_extra_index_url": ["https://x/simple", "has space"]}}"#, "spec.pip_extra_index_url[1]: \"has space\" is not an index URL"),
            ("not json", "image build request: not valid JSON"),
        ]
        for (body, expected) in cases {
            XCTAssertThrowsError(try ImageBuildRequest.parse(json: body), body) { error in
                let message = HearthError.wrap(error).message
                XCTAssertTrue(message.hasPrefix(expected), "\(body): \(message)")
                XCTAssertEqual(HearthError.wrap(error).code, .invalidArgument)
            }
        }
    }

    func testAptPackageNames() {
        for ok in ["jq", "libssl3", "g++", "python3.11-venv", "jq=1.6-2.1", "curl/bookworm-backports"] {
            XCTAssertTrue(ImageBuildSpec.isAptPackage(ok), ok)
        }
        for bad in ["", "j", "-jq", "Jq", "jq;rm", "jq=", "a b", "jq=1 2"] {
            XCTAssertFalse(ImageBuildSpec.isAptPackage(bad), bad)
        }
    }

    /// The CLI's file: flytekit's field names, requirements a path, copy a
    /// list of paths; YAML's `python_version: 3.10` keeps its spelling.
    func testImageSpecFile() throws {
        let file = try ImageSpecFile.parse("""
            name: app
            python_version: 3.10
            packages: [pandas==2.2.3, union]
            requirements: reqs/requirements.txt
            copy: [src, setup.cfg]
            env: {MODE: prod}
            """, source: "imagespec.yaml")
        XCTAssertEqual(file.spec.pythonVersion, "3.10")
        XCTAssertEqual(file.spec.packages, ["pandas==2.2.3", "union"])
        XCTAssertEqual(file.requirementsPath, "reqs/requirements.txt")
        XCTAssertEqual(file.copyPaths, ["src", "setup.cfg"])
        XCTAssertNil(file.spec.requirements)
        XCTAssertNil(file.spec.copy)
        XCTAssertThrowsError(try ImageSpecFile.parse("name: app\nconda_packages: [x]\n", source: "s.yaml")) { error in
            XCTAssertTrue(HearthError.wrap(error).message.hasPrefix("s.yaml: conda_packages: unknown field"), "\(error)")
        }
    }

    func testDurations() throws {
        XCTAssertEqual(try DurationText.parse("30m", field: "f"), .seconds(1800))
        XCTAssertEqual(try DurationText.parse("1h30m", field: "f"), .seconds(5400))
        XCTAssertEqual(try DurationText.parse("90", field: "f"), .seconds(90))
        XCTAssertEqual(try DurationText.parse("45s", field: "f"), .seconds(45))
        for bad in ["", "0", "m", "5x", "1h5", "-3m"] {
            XCTAssertThrowsError(try DurationText.parse(bad, field: "--build-timeout"), bad) { error in
                XCTAssertTrue(HearthError.wrap(error).message.hasPrefix("--build-timeout: \"\(bad)\""), "\(error)")
            }
        }
    }
}
