#if canImport(Glibc)
import Glibc
#endif
import Crypto
import Foundation
import HearthCore
import HearthPool
import XCTest

final class CodeStoreTests: XCTestCase {
    private var stateRoot = ""

    override func setUpWithError() throws {
        try XCTSkipUnless(geteuid() == 0, "code bundles are unpacked as root (chown to root:root)")
        stateRoot = try storeTestTempDirectory("codestore")
    }

    override func tearDownWithError() throws {
        if !stateRoot.isEmpty { try? FileManager.default.removeItem(atPath: stateRoot) }
    }

    private func store(_ limits: CodeStore.Limits = .default) throws -> CodeStore {
        try CodeStore(stateRoot: stateRoot, limits: limits)
    }

    /// A small Python project: packages, a subpackage, an executable script,
    /// a data file and a relative symlink that stays inside.
    private func project() -> [UInt8] {
        var tar = BundleTar()
        tar.dir("./")
        tar.dir("./app")
        tar.file("./app/__init__.py", "")
        tar.file("./app/main.py", "def run(x):\n    return x + 1\n")
        tar.dir("./app/util")
        tar.file("./app/util/__init__.py", "from .helpers import *\n")
        tar.file("./app/util/helpers.py", "def helper():\n    return 42\n")
        tar.file("./bin/tool.sh", "#!/bin/sh\necho hi\n", mode: 0o750)
        tar.symlink("./app/current.py", "main.py")
        tar.symlink("./app/util/up.py", "../main.py")
        tar.hardLink("./app/main_again.py", "./app/main.py")
        return tar.finished()
    }

    // MARK: good bundles

    func testStoresTarWithPackages() throws {
        let codes = try store()
        let tar = project()
        let sha = sha256(tar)
        let bundle = try codes.store(sha256: sha, tarball: tar)

        XCTAssertEqual(bundle.sha256, sha)
        XCTAssertEqual(bundle.path, stateRoot + "/code/" + sha)
        XCTAssertEqual(bundle.files, 6)  // 5 files + the hard link's second name
        let expectedBytes = ["", "def run(x):\n    return x + 1\n", "from .helpers import *\n",
                             "def helper():\n    return 42\n", "#!/bin/sh\necho hi\n"].reduce(0) { $0 + $1.utf8.count }
        XCTAssertEqual(bundle.bytes, Int64(expectedBytes))
        XCTAssertTrue(codes.exists(sha))
        XCTAssertEqual(try codes.path(of: sha), bundle.path)
        XCTAssertEqual(try codes.list(), [sha])
        XCTAssertEqual(try codes.bundle(sha), bundle)

        let p = bundle.path
        XCTAssertEqual(try String(contentsOfFile: p + "/app/util/helpers.py", encoding: .utf8), "def helper():\n    return 42\n")
        XCTAssertEqual(try String(contentsOfFile: p + "/app/current.py", encoding: .utf8), "def run(x):\n    return x + 1\n")
        XCTAssertEqual(try FileManager.default.destinationOfSymbolicLink(atPath: p + "/app/util/up.py"), "../main.py")

        // Normalised modes and owners, the missing parent `bin` included.
        for (path, mode) in [("", 0o755), ("/app", 0o755), ("/app/util", 0o755), ("/bin", 0o755),
                             ("/app/main.py", 0o644), ("/app/__init__.py", 0o644), ("/bin/tool.sh", 0o755)] {
            let st = try storeTestLstat(p + path)
            XCTAssertEqual(st.st_mode & 0o7777, mode_t(mode), "mode of \(path)")
            XCTAssertEqual(st.st_uid, 0, "owner of \(path)")
            XCTAssertEqual(st.st_gid, 0, "group of \(path)")
        }
        // Nothing is left in the staging directory.
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: stateRoot + "/code.staging"), [])
        XCTAssertEqual(try storeTestLstat(stateRoot + "/code.staging").st_mode & 0o7777, 0o700)
    }

    func testStoresTarGz() throws {
        let codes = try store()
        let gz = try gzip(project())
        XCTAssertEqual(Array(gz.prefix(2)), [0x1f, 0x8b])
        let sha = sha256(gz)
        let bundle = try codes.store(sha256: sha, tarball: gz)
        XCTAssertEqual(bundle.files, 6)
        XCTAssertEqual(try String(contentsOfFile: bundle.path + "/app/main.py", encoding: .utf8), "def run(x):\n    return x + 1\n")
    }

    /// An archive written by Python's tarfile, as the SDK will produce, read
    /// from a file the way the HTTP layer hands it over.
    func testStoresPythonTarfileArchiveFromFile() throws {
        try XCTSkipIf(which("python3") == nil, "no python3")
        let src = stateRoot + "/src"
        try FileManager.default.createDirectory(atPath: src + "/pkg/sub", withIntermediateDirectories: true)
        try "VALUE = 1\n".write(toFile: src + "/pkg/__init__.py", atomically: false, encoding: .utf8)
        try "def f():\n    return 'sub'\n".write(toFile: src + "/pkg/sub/__init__.py", atomically: false, encoding: .utf8)
        try "import pkg\n".write(toFile: src + "/main.py", atomically: false, encoding: .utf8)
        let out = stateRoot + "/upload.tar.gz"
        // Owned by a non-root user with odd modes, as a laptop checkout might be.
        let script = """
        import tarfile, sys
        def fix(ti):
            ti.uid, ti.gid, ti.uname, ti.gname = 501, 20, "dev", "staff"
            if ti.isfile(): ti.mode = 0o664
            return ti
        with tarfile.open(sys.argv[2], "w:gz", format=tarfile.PAX_FORMAT) as t:
            t.add(sys.argv[1], arcname=".", filter=fix)
        """
        try runTool("python3", ["-c", script, src, out])

        let codes = try store()
        let bytes = try Array(Data(contentsOf: URL(fileURLWithPath: out)))
        let bundle = try codes.store(sha256: sha256(bytes), tarballAt: out)
        XCTAssertEqual(bundle.files, 3)
        XCTAssertEqual(try String(contentsOfFile: bundle.path + "/pkg/sub/__init__.py", encoding: .utf8), "def f():\n    return 'sub'\n")
        let st = try storeTestLstat(bundle.path + "/pkg/__init__.py")
        XCTAssertEqual(st.st_uid, 0)
        XCTAssertEqual(st.st_gid, 0)
        XCTAssertEqual(st.st_mode & 0o7777, 0o644)
        // The upload file is left where it was.
        XCTAssertTrue(FileManager.default.fileExists(atPath: out))

        // The tree imports.
        try runTool("python3", ["-c", "import sys; sys.path.insert(0, sys.argv[1]); sys.dont_write_bytecode = True; "
                                    + "import pkg.sub; assert pkg.sub.f() == 'sub'", bundle.path])
    }

    // MARK: refusals

    func testSHAMismatch() throws {
        let codes = try store()
        let tar = project()
        let wrong = String(repeating: "a", count: 64)
        XCTAssertThrowsError(try codes.store(sha256: wrong, tarball: tar)) { error in
            XCTAssertEqual(error as? HearthError, HearthError(.invalidArgument,
                "code bundle: sha256 mismatch: the upload hashes to \(self.sha256(tar)), the URL names \(wrong)"))
        }
        XCTAssertFalse(codes.exists(wrong))
        XCTAssertEqual(try codes.list(), [])
    }

    func testInvalidSHA() throws {
        let codes = try store()
        for bad in ["", "abc", String(repeating: "A", count: 64), String(repeating: "g", count: 64),
                    String(repeating: "a", count: 65), "../" + String(repeating: "a", count: 61)] {
            XCTAssertThrowsError(try codes.store(sha256: bad, tarball: project()), bad) { error in
                let e = error as? HearthError
                XCTAssertEqual(e?.code, .invalidArgument)
                XCTAssertTrue(e?.message.contains("is not a sha256 (64 lowercase hex digits)") ?? false, e?.message ?? "")
            }
            XCTAssertFalse(codes.exists(bad))
            XCTAssertThrowsError(try codes.path(of: bad))
        }
    }

    func testPathOfMissingBundle() throws {
        let codes = try store()
        let sha = String(repeating: "0", count: 64)
        XCTAssertThrowsError(try codes.path(of: sha)) { error in
            XCTAssertEqual(error as? HearthError,
                           HearthError(.notFound, "code bundle \(sha) is not uploaded; PUT /v1/code/\(sha) first"))
        }
    }

    func testRefusesUnsafeEntriesNamingThem() throws {
        let codes = try store()
        let cases: [(String, (inout BundleTar) -> Void, String)] = [
            ("dotdot", { $0.file("app/../../evil.py", "x") }, #"entry "app/../../evil.py": path leaves the bundle (".." component)"#),
            ("absolute", { $0.file("/etc/evil.py", "x") }, #"entry "/etc/evil.py": absolute path"#),
            ("escaping symlink", { $0.symlink("app/link", "../../etc") }, #"entry "app/link": symlink target "../../etc" leaves the bundle"#),
            ("absolute symlink", { $0.symlink("passwd.py", "/etc/passwd") }, #"entry "passwd.py": symlink target "/etc/passwd" is absolute"#),
            ("char device", { $0.add("null", .characterDevice(1, 3)) }, #"entry "null": device nodes are not allowed in a code bundle"#),
            ("block device", { $0.add("sda", .blockDevice(8, 0)) }, #"entry "sda": device nodes are not allowed in a code bundle"#),
            ("fifo", { $0.add("pipe", .fifo) }, #"entry "pipe": FIFOs are not allowed in a code bundle"#),
            ("escaping hard link", { $0.hardLink("shadow", "../etc/shadow") }, #"entry "shadow": hard link target "../etc/shadow" leaves the bundle"#),
            ("whiteout", { $0.file("app/.wh.main.py", "") }, #"entry "app/.wh.main.py": ".wh." names are overlay whiteouts"#),
            ("file capability", { $0.file("tool", "x", xattrs: [("security.capability", [1, 2, 3])]) },
             #"entry "tool": file capabilities (security.capability) are not allowed"#),
        ]
        for (name, build, expected) in cases {
            var tar = BundleTar()
            tar.dir("app")
            tar.file("app/ok.py", "pass\n")
            build(&tar)
            let bytes = tar.finished()
            let sha = sha256(bytes)
            XCTAssertThrowsError(try codes.store(sha256: sha, tarball: bytes), name) { error in
                let e = error as? HearthError
                XCTAssertEqual(e?.code, .invalidArgument, name)
                XCTAssertTrue(e?.message.contains(expected) ?? false, "\(name): \(e?.message ?? "\(error)")")
                XCTAssertTrue(e?.message.hasPrefix("code bundle \(sha.prefix(12)): ") ?? false, "\(name): \(e?.message ?? "")")
            }
            XCTAssertFalse(codes.exists(sha), name)
        }
        XCTAssertEqual(try codes.list(), [])
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: stateRoot + "/code.staging"), [])
    }

    /// The unpacker's own rule, reached after the checks: a path through a
    /// symlink inside the bundle is never followed.
    func testRefusesPathThroughSymlink() throws {
        let codes = try store()
        var tar = BundleTar()
        tar.dir("app")
        tar.symlink("link", "app")
        tar.file("link/x.py", "x")
        let bytes = tar.finished()
        XCTAssertThrowsError(try codes.store(sha256: sha256(bytes), tarball: bytes)) { error in
            let e = error as? HearthError
            XCTAssertEqual(e?.code, .invalidArgument)
            XCTAssertTrue(e?.message.contains(#"entry "link/x.py""#) ?? false, e?.message ?? "\(error)")
            XCTAssertTrue(e?.message.contains("symlink") ?? false, e?.message ?? "\(error)")
        }
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: stateRoot + "/code.staging"), [])
    }

    func testRefusesOtherFormatsAndGarbage() throws {
        let codes = try store()
        let zstd: [UInt8] = [0x28, 0xb5, 0x2f, 0xfd] + [UInt8](repeating: 7, count: 100)
        XCTAssertThrowsError(try codes.store(sha256: sha256(zstd), tarball: zstd)) { error in
            XCTAssertTrue((error as? HearthError)?.message.contains("the upload is a zstd archive; only tar and tar.gz are accepted") ?? false, "\(error)")
        }
        let garbage = Array(repeating: UInt8(ascii: "x"), count: 1024)
        XCTAssertThrowsError(try codes.store(sha256: sha256(garbage), tarball: garbage)) { error in
            let e = error as? HearthError
            XCTAssertEqual(e?.code, .invalidArgument)
            XCTAssertTrue(e?.message.contains("invalid tar archive") ?? false, e?.message ?? "\(error)")
        }
        let gz = try gzip(project())
        let truncated = Array(gz.prefix(gz.count / 2))
        XCTAssertThrowsError(try codes.store(sha256: sha256(truncated), tarball: truncated)) { error in
            let e = error as? HearthError
            XCTAssertEqual(e?.code, .invalidArgument)
            XCTAssertTrue(e?.message.contains("gzip stream is truncated") ?? false, e?.message ?? "\(error)")
        }
        XCTAssertThrowsError(try codes.store(sha256: sha256([]), tarball: [])) { error in
            XCTAssertEqual((error as? HearthError)?.message, "code bundle: the upload is empty; expected a tar or tar.gz archive")
        }
    }

    func testSetuidStrippedAndOwnershipForced() throws {
        let codes = try store()
        var tar = BundleTar()
        tar.dir("app", mode: 0o3777, uid: 1234, gid: 5678)
        tar.file("app/suid", "#!/bin/sh\n", mode: 0o4755, uid: 1000, gid: 1000)
        tar.file("app/sgid.py", "", mode: 0o2644, uid: 1000, gid: 1000)
        tar.file("app/private.py", "", mode: 0o600, uid: 1000, gid: 1000)
        tar.file("app/user-xattr.py", "", xattrs: [("user.note", Array("hi".utf8))])
        tar.add("app/link", .symlink("suid"), mode: 0o777, uid: 4321, gid: 4321)
        let bytes = tar.finished()
        let bundle = try codes.store(sha256: sha256(bytes), tarball: bytes)
        let p = bundle.path
        for (path, mode) in [("/app", 0o755), ("/app/suid", 0o755), ("/app/sgid.py", 0o644), ("/app/private.py", 0o644)] {
            let st = try storeTestLstat(p + path)
            XCTAssertEqual(st.st_mode & 0o7777, mode_t(mode), path)
            XCTAssertEqual(st.st_uid, 0, path)
            XCTAssertEqual(st.st_gid, 0, path)
        }
        let link = try storeTestLstat(p + "/app/link")
        XCTAssertEqual(link.st_mode & S_IFMT, S_IFLNK)
        XCTAssertEqual(link.st_uid, 0)
        XCTAssertEqual(link.st_gid, 0)
    }

    func testStoreIsIdempotent() throws {
        let codes = try store()
        let tar = project()
        let sha = sha256(tar)
        let first = try codes.store(sha256: sha, tarball: tar)
        let inode = try storeTestLstat(first.path).st_ino
        // Age the bundle, then re-store: same tree (not unpacked again), and
        // marked as stored now so the collector spares it.
        var old = [timespec(tv_sec: 1_000_000, tv_nsec: 0), timespec(tv_sec: 1_000_000, tv_nsec: 0)]
        XCTAssertEqual(utimensat(AT_FDCWD, first.path, &old, 0), 0)
        let second = try codes.store(sha256: sha, tarball: tar)
        XCTAssertEqual(first, second)
        XCTAssertEqual(try storeTestLstat(second.path).st_ino, inode)
        XCTAssertGreaterThan(try storeTestLstat(second.path).st_mtim.tv_sec, 1_000_000)
        XCTAssertEqual(try codes.list(), [sha])

        // Concurrent stores of a new bundle: every caller gets it, one tree.
        let gz = try gzip(tar)
        let gzSHA = sha256(gz)
        let results = Results()
        DispatchQueue.concurrentPerform(iterations: 8) { _ in
            do { results.append(.success(try codes.store(sha256: gzSHA, tarball: gz))) } catch { results.append(.failure(error)) }
        }
        let all = results.all
        XCTAssertEqual(all.count, 8)
        for r in all {
            switch r {
            case .success(let b): XCTAssertEqual(b.files, 6); XCTAssertEqual(b.sha256, gzSHA)
            case .failure(let e): XCTFail("concurrent store failed: \(e)")
            }
        }
        XCTAssertEqual(try codes.list(), [gzSHA, sha].sorted())
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: stateRoot + "/code.staging"), [])
    }

    // MARK: limits

    func testUploadLimit() throws {
        let codes = try store(CodeStore.Limits(maxUploadBytes: 4096, maxUnpackedBytes: 1 << 20, maxEntries: 100))
        let tar = project()  // 10 KiB: tar pads to a 10240-byte record
        XCTAssertThrowsError(try codes.store(sha256: sha256(tar), tarball: tar)) { error in
            XCTAssertEqual(error as? HearthError, HearthError(.invalidArgument,
                "code bundle: the upload is \(tar.count) bytes, over the limit of 4 KiB (4096 bytes) (compressed)"))
        }
        // The same limit for the file path.
        let path = stateRoot + "/upload.tar"
        try Data(tar).write(to: URL(fileURLWithPath: path))
        XCTAssertThrowsError(try codes.store(sha256: sha256(tar), tarballAt: path)) { error in
            XCTAssertTrue((error as? HearthError)?.message.contains("over the limit of 4 KiB") ?? false, "\(error)")
        }
    }

    func testUnpackedSizeLimit() throws {
        let codes = try store(CodeStore.Limits(maxUploadBytes: 1 << 20, maxUnpackedBytes: 1000, maxEntries: 100))
        var tar = BundleTar()
        tar.file("a.py", String(repeating: "a", count: 600))
        tar.file("b.py", String(repeating: "b", count: 600))
        let bytes = tar.finished()
        XCTAssertThrowsError(try codes.store(sha256: sha256(bytes), tarball: bytes)) { error in
            XCTAssertEqual((error as? HearthError)?.message,
                           "code bundle \(self.sha256(bytes).prefix(12)): unpacked content is larger than the limit of 1000 bytes at entry \"b.py\"")
        }
        XCTAssertEqual(try codes.list(), [])
    }

    func testEntryLimit() throws {
        let codes = try store(CodeStore.Limits(maxUploadBytes: 1 << 20, maxUnpackedBytes: 1 << 20, maxEntries: 5))
        var tar = BundleTar()
        for i in 0..<6 { tar.file("m\(i).py", "") }
        let bytes = tar.finished()
        XCTAssertThrowsError(try codes.store(sha256: sha256(bytes), tarball: bytes)) { error in
            XCTAssertEqual((error as? HearthError)?.message,
                           "code bundle \(self.sha256(bytes).prefix(12)): more than 5 entries (the limit) at entry \"m5.py\"")
        }
        // Exactly at the limit is fine.
        var ok = BundleTar()
        for i in 0..<5 { ok.file("m\(i).py", "") }
        let okBytes = ok.finished()
        XCTAssertEqual(try codes.store(sha256: sha256(okBytes), tarball: okBytes).files, 5)
    }

    /// A small gzip that expands to a lot of tar data without declaring a
    /// large entry (zero blocks after the end marker are never read, so the
    /// padding is carried by PAX headers of unknown records).
    func testDecompressedStreamIsBounded() throws {
        let limits = CodeStore.Limits(maxUploadBytes: 1 << 20, maxUnpackedBytes: 4096, maxEntries: 2)
        let codes = try store(limits)
        var tar = BundleTar()
        // Ignored PAX records (comment) make headers big; no file is large.
        // Each stays under the reader's 1 MiB header bound; together they
        // pass the stream bound (4 KiB + 2 × 8 KiB + 1 MiB).
        let comment = [UInt8](repeating: UInt8(ascii: "z"), count: 900_000)
        tar.add("a.py", .file([]), paxRecords: [("comment", comment)])
        tar.add("b.py", .file([]), paxRecords: [("comment", comment)])
        let gz = try gzip(tar.finished())
        XCTAssertLessThan(gz.count, 10_000)
        XCTAssertThrowsError(try codes.store(sha256: sha256(gz), tarball: gz)) { error in
            let message = (error as? HearthError)?.message ?? "\(error)"
            XCTAssertTrue(message.contains("the archive expands to more than"), message)
        }
    }

    // MARK: list, remove, collect

    func testListRemoveAndGarbageCollect() throws {
        let codes = try store()
        var shas: [String] = []
        for i in 0..<3 {
            var tar = BundleTar()
            tar.file("v.py", "VERSION = \(i)\n")
            let bytes = tar.finished()
            shas.append(try codes.store(sha256: sha256(bytes), tarball: bytes).sha256)
        }
        XCTAssertEqual(try codes.list(), shas.sorted())
        // Stray names in code/ are not bundles.
        XCTAssertEqual(mkdir(stateRoot + "/code/not-a-bundle", 0o755), 0)
        XCTAssertEqual(try codes.list(), shas.sorted())

        try codes.remove(shas[0])
        XCTAssertFalse(codes.exists(shas[0]))
        XCTAssertFalse(FileManager.default.fileExists(atPath: stateRoot + "/code/" + shas[0]))
        XCTAssertThrowsError(try codes.remove(shas[0])) { error in
            XCTAssertEqual((error as? HearthError)?.code, .notFound)
        }
        XCTAssertEqual(try codes.list(), Array(shas[1...]).sorted())

        // Within the grace period nothing goes, even unused.
        XCTAssertEqual(try codes.garbageCollect(keep: [], olderThan: .seconds(3600)), [])
        XCTAssertEqual(try codes.list().count, 2)
        // Past it, only the kept one stays.
        XCTAssertEqual(try codes.garbageCollect(keep: [shas[2]], olderThan: .zero), [shas[1]])
        XCTAssertEqual(try codes.list(), [shas[2]])
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: stateRoot + "/code.staging"), [])
    }

    func testOpeningCleansStaging() throws {
        _ = try store()
        let leftover = stateRoot + "/code.staging/" + String(repeating: "a", count: 64) + ".Xy12Zq"
        try FileManager.default.createDirectory(atPath: leftover + "/pkg", withIntermediateDirectories: true)
        _ = try store()
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: stateRoot + "/code.staging"), [])
    }

    // MARK: helpers

    private func sha256(_ bytes: [UInt8]) -> String {
        SHA256.hash(data: bytes).map { String(format: "%02x", $0) }.joined()
    }
}

// MARK: shared test support (this file and SecretStoreTests)

func storeTestTempDirectory(_ name: String) throws -> String {
    var template = Array((NSTemporaryDirectory() + "/hearth-\(name)-XXXXXX").utf8CString)
    guard let made = template.withUnsafeMutableBufferPointer({ buf in buf.baseAddress.flatMap { mkdtemp($0) } }) else {
        throw SystemError.current("mkdtemp", name)
    }
    return String(cString: made)
}

func storeTestLstat(_ path: String) throws -> stat {
    var st = stat()
    guard lstat(path, &st) == 0 else { throw SystemError.current("lstat", path) }
    return st
}

private func which(_ tool: String) -> String? {
    for dir in (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":") {
        let p = "\(dir)/\(tool)"
        if access(p, X_OK) == 0 { return p }
    }
    return nil
}

/// Runs a tool from PATH, failing on a non-zero exit; returns stdout.
@discardableResult
private func runTool(_ tool: String, _ args: [String], input: [UInt8]? = nil) throws -> [UInt8] {
    guard let path = which(tool) else { throw XCTSkip("\(tool) not found") }
    let p = Process()
    p.executableURL = URL(fileURLWithPath: path)
    p.arguments = args
    let out = Pipe()
    let inPipe = Pipe()
    p.standardOutput = out
    p.standardInput = inPipe
    try p.run()
    if let input { inPipe.fileHandleForWriting.write(Data(input)) }
    try inPipe.fileHandleForWriting.close()
    let data = out.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    guard p.terminationStatus == 0 else { throw SystemError("\(tool) exited with \(p.terminationStatus)", "", errno: 0) }
    return Array(data)
}

private func gzip(_ bytes: [UInt8]) throws -> [UInt8] {
    try runTool("gzip", ["-c", "-n"], input: bytes)
}

private final class Results: @unchecked Sendable {
    private let lock = NSLock()
    private var items: [Result<CodeBundle, any Error>] = []
    func append(_ r: Result<CodeBundle, any Error>) { lock.withLock { items.append(r) } }
    var all: [Result<CodeBundle, any Error>] { lock.withLock { items } }
}

/// A minimal tar writer (ustar + PAX) so tests build hostile archives that
/// tar(1) would refuse to write.
private struct BundleTar {
    enum Kind {
        case file([UInt8])
        case directory
        case symlink(String)
        case hardLink(String)
        case characterDevice(UInt32, UInt32)
        case blockDevice(UInt32, UInt32)
        case fifo
    }

    private(set) var bytes: [UInt8] = []

    mutating func file(_ path: String, _ content: String, mode: UInt32 = 0o644, uid: UInt32 = 0, gid: UInt32 = 0,
                       xattrs: [(String, [UInt8])] = []) {
        add(path, .file(Array(content.utf8)), mode: mode, uid: uid, gid: gid, xattrs: xattrs)
    }

    mutating func dir(_ path: String, mode: UInt32 = 0o755, uid: UInt32 = 0, gid: UInt32 = 0) {
        add(path, .directory, mode: mode, uid: uid, gid: gid)
    }

    mutating func symlink(_ path: String, _ target: String) { add(path, .symlink(target), mode: 0o777) }
    mutating func hardLink(_ path: String, _ target: String) { add(path, .hardLink(target)) }

    mutating func add(_ path: String, _ kind: Kind, mode: UInt32 = 0o644, uid: UInt32 = 0, gid: UInt32 = 0,
                      xattrs: [(String, [UInt8])] = [], paxRecords: [(String, [UInt8])] = []) {
        var link: [UInt8] = []
        var content: [UInt8] = []
        let type: UInt8
        var major: UInt32 = 0
        var minor: UInt32 = 0
        switch kind {
        case .file(let c): type = UInt8(ascii: "0"); content = c
        case .directory: type = UInt8(ascii: "5")
        case .symlink(let t): type = UInt8(ascii: "2"); link = Array(t.utf8)
        case .hardLink(let t): type = UInt8(ascii: "1"); link = Array(t.utf8)
        case .characterDevice(let a, let b): type = UInt8(ascii: "3"); major = a; minor = b
        case .blockDevice(let a, let b): type = UInt8(ascii: "4"); major = a; minor = b
        case .fifo: type = UInt8(ascii: "6")
        }
        var pax = paxRecords
        for (k, v) in xattrs { pax.append(("SCHILY.xattr." + k, v)) }
        if !pax.isEmpty {
            var data: [UInt8] = []
            for (k, v) in pax { data += BundleTar.paxRecord(k, v) }
            append(header(name: Array("PaxHeaders/x".utf8), type: UInt8(ascii: "x"), size: data.count), data)
        }
        append(header(name: Array(path.utf8), type: type, size: content.count, mode: mode, uid: uid, gid: gid,
                      link: link, major: major, minor: minor), content)
    }

    static func paxRecord(_ key: String, _ value: [UInt8]) -> [UInt8] {
        let body = Array(" \(key)=".utf8) + value + [10]
        var length = body.count + 1
        while String(length).utf8.count + body.count != length { length = String(length).utf8.count + body.count }
        return Array(String(length).utf8) + body
    }

    private mutating func append(_ header: [UInt8], _ content: [UInt8]) {
        bytes += header
        bytes += content
        bytes += [UInt8](repeating: 0, count: (512 - content.count % 512) % 512)
    }

    private func header(name: [UInt8], type: UInt8, size: Int, mode: UInt32 = 0o644, uid: UInt32 = 0, gid: UInt32 = 0,
                        link: [UInt8] = [], major: UInt32 = 0, minor: UInt32 = 0) -> [UInt8] {
        var h = [UInt8](repeating: 0, count: 512)
        func put(_ offset: Int, _ value: [UInt8]) { for (i, b) in value.enumerated() { h[offset + i] = b } }
        func octal(_ offset: Int, _ width: Int, _ value: Int) {
            let s = String(value, radix: 8)
            put(offset, Array((String(repeating: "0", count: max(0, width - 1 - s.count)) + s).utf8))
        }
        put(0, Array(name.prefix(100)))
        octal(100, 8, Int(mode))
        octal(108, 8, Int(uid))
        octal(116, 8, Int(gid))
        octal(124, 12, size)
        octal(136, 12, 1_600_000_000)
        h[156] = type
        put(157, Array(link.prefix(100)))
        put(257, Array("ustar\u{0}00".utf8))
        octal(329, 8, Int(major))
        octal(337, 8, Int(minor))
        put(148, Array("        ".utf8))
        let sum = h.reduce(0) { $0 + Int($1) }
        let s = String(sum, radix: 8)
        put(148, Array((String(repeating: "0", count: 6 - s.count) + s).utf8) + [0, 32])
        return h
    }

    /// With the end marker, padded to a 10 KiB record as tar(1) does.
    func finished() -> [UInt8] {
        var out = bytes + [UInt8](repeating: 0, count: 1024)
        out += [UInt8](repeating: 0, count: (10240 - out.count % 10240) % 10240)
        return out
    }
}
