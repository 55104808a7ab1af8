#if canImport(Glibc)
import Glibc
#endif
import Foundation
import HearthCore
import HearthPool
import XCTest

final class SecretStoreTests: XCTestCase {
    private var stateRoot = ""

    override func setUpWithError() throws {
        stateRoot = try storeTestTempDirectory("secretstore")
    }

    override func tearDownWithError() throws {
        if !stateRoot.isEmpty { try? FileManager.default.removeItem(atPath: stateRoot) }
    }

    private func read(_ path: String) throws -> [UInt8] {
        try Array(Data(contentsOf: URL(fileURLWithPath: path)))
    }

    func testSetListRemove() throws {
        let secrets = try SecretStore(stateRoot: stateRoot)
        XCTAssertEqual(try secrets.list(), [])
        try secrets.set(key: "db_password", value: Array("hunter2".utf8))
        try secrets.set(key: "API.key-2", value: [0, 255, 10, 13])  // any bytes
        try secrets.set(key: "empty", value: [])
        XCTAssertEqual(try secrets.list(), ["API.key-2", "db_password", "empty"])
        XCTAssertTrue(secrets.exists(key: "db_password"))
        XCTAssertFalse(secrets.exists(key: "nope"))
        XCTAssertFalse(secrets.exists(key: "../secrets"))
        XCTAssertEqual(try read(stateRoot + "/secrets/API.key-2"), [0, 255, 10, 13])

        try secrets.remove(key: "db_password")
        XCTAssertFalse(secrets.exists(key: "db_password"))
        XCTAssertEqual(try secrets.list(), ["API.key-2", "empty"])
        XCTAssertThrowsError(try secrets.remove(key: "db_password")) { error in
            XCTAssertEqual(error as? HearthError, HearthError(.notFound, "secret \"db_password\" is not set"))
        }
        // A second store on the same root sees the same secrets.
        XCTAssertEqual(try SecretStore(stateRoot: stateRoot).list(), ["API.key-2", "empty"])
    }

    func testFileAndDirectoryModes() throws {
        try XCTSkipUnless(geteuid() == 0, "ownership checks need root")
        // A pre-existing, too-open directory is tightened.
        XCTAssertEqual(mkdir(stateRoot + "/secrets", 0o755), 0)
        XCTAssertEqual(chmod(stateRoot + "/secrets", 0o755), 0)
        let old = umask(0)
        defer { umask(old) }
        let secrets = try SecretStore(stateRoot: stateRoot)
        try secrets.set(key: "token", value: Array("abc".utf8))
        let dir = try storeTestLstat(stateRoot + "/secrets")
        XCTAssertEqual(dir.st_mode & 0o7777, 0o700)
        XCTAssertEqual(dir.st_uid, 0)
        let file = try storeTestLstat(stateRoot + "/secrets/token")
        XCTAssertEqual(file.st_mode & S_IFMT, S_IFREG)
        XCTAssertEqual(file.st_mode & 0o7777, 0o600)
        XCTAssertEqual(file.st_uid, 0)
    }

    func testBadKeys() throws {
        let secrets = try SecretStore(stateRoot: stateRoot)
        let long = String(repeating: "k", count: 254)
        for bad in ["", ".", "..", "a/b", "../x", "a b", "ключ", "a+b", "x\n", long] {
            XCTAssertThrowsError(try secrets.set(key: bad, value: [1]), bad.debugDescription) { error in
                let e = error as? HearthError
                XCTAssertEqual(e?.code, .invalidArgument)
                XCTAssertTrue(e?.message.hasPrefix("secret key ") ?? false, e?.message ?? "")
                XCTAssertTrue(e?.message.contains(#"^[A-Za-z0-9_.-]{1,253}$ and are not "." or "..""#) ?? false, e?.message ?? "")
            }
            XCTAssertThrowsError(try secrets.remove(key: bad))
            XCTAssertFalse(secrets.exists(key: bad))
        }
        XCTAssertThrowsError(try secrets.set(key: "a/b", value: [1])) { error in
            XCTAssertEqual((error as? HearthError)?.message,
                           #"secret key "a/b" is invalid: keys match ^[A-Za-z0-9_.-]{1,253}$ and are not "." or "..""#)
        }
        // The longest key and dot-led keys are fine.
        try secrets.set(key: String(repeating: "k", count: 253), value: [1])
        try secrets.set(key: ".hidden", value: [2])
        try secrets.set(key: "...", value: [3])
        XCTAssertEqual(try secrets.list(), ["...", ".hidden", String(repeating: "k", count: 253)])
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: stateRoot).sorted(), ["secrets"])
    }

    func testValueSizeLimit() throws {
        let secrets = try SecretStore(stateRoot: stateRoot)
        let max = [UInt8](repeating: 0x41, count: SecretStore.maxValueBytes)
        try secrets.set(key: "big", value: max)
        XCTAssertEqual(try read(stateRoot + "/secrets/big").count, 1 << 20)
        XCTAssertThrowsError(try secrets.set(key: "toobig", value: max + [0x42])) { error in
            XCTAssertEqual(error as? HearthError, HearthError(.invalidArgument,
                "secret \"toobig\": the value is 1048577 bytes, over the limit of 1048576 bytes (1 MiB)"))
        }
        XCTAssertFalse(secrets.exists(key: "toobig"))
    }

    func testOverwriteIsAtomic() throws {
        let secrets = try SecretStore(stateRoot: stateRoot)
        let a = [UInt8](repeating: UInt8(ascii: "a"), count: 256 * 1024)
        let b = [UInt8](repeating: UInt8(ascii: "b"), count: 200 * 1024)
        try secrets.set(key: "k", value: a)
        let path = stateRoot + "/secrets/k"
        let torn = Counter()
        let done = Counter()
        let reader = Thread {
            while done.value == 0 {
                guard let data = FileManager.default.contents(atPath: path) else { torn.add(); continue }
                if data != Data(a) && data != Data(b) { torn.add() }
            }
        }
        reader.start()
        for i in 0..<200 { try secrets.set(key: "k", value: i % 2 == 0 ? b : a) }
        done.add()
        while !reader.isFinished { usleep(1000) }
        XCTAssertEqual(torn.value, 0, "a reader saw a missing or mixed value")
        XCTAssertEqual(try read(path), a)
        // No temporary files are left, and none would be listed.
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: stateRoot + "/secrets"), ["k"])
    }

    func testLeftoverTemporaryFilesAreIgnoredAndRemoved() throws {
        let secrets = try SecretStore(stateRoot: stateRoot)
        try secrets.set(key: "k", value: [1])
        let stray = stateRoot + "/secrets/.tmp+k+123abc"
        XCTAssertTrue(FileManager.default.createFile(atPath: stray, contents: Data([9])))
        XCTAssertEqual(try secrets.list(), ["k"])
        _ = try SecretStore(stateRoot: stateRoot)
        XCTAssertFalse(FileManager.default.fileExists(atPath: stray))
        XCTAssertEqual(try secrets.list(), ["k"])
    }

    func testMaterializeExactSet() throws {
        let secrets = try SecretStore(stateRoot: stateRoot)
        try secrets.set(key: "a", value: Array("alpha".utf8))
        try secrets.set(key: "b", value: [0, 1, 2])
        try secrets.set(key: "unrelated", value: Array("nope".utf8))
        let dir = stateRoot + "/r1.secrets"
        try secrets.materialize(keys: ["a", "b", "a"], into: dir)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir).sorted(), ["a", "b"])
        XCTAssertEqual(try read(dir + "/a"), Array("alpha".utf8))
        XCTAssertEqual(try read(dir + "/b"), [0, 1, 2])
        let st = try storeTestLstat(dir)
        XCTAssertEqual(st.st_mode & 0o7777, 0o700)
        XCTAssertEqual(try storeTestLstat(dir + "/a").st_mode & 0o7777, 0o444)
        if geteuid() == 0 {
            XCTAssertEqual(st.st_uid, 0)
            XCTAssertEqual(try storeTestLstat(dir + "/a").st_uid, 0)
        }

        // Again into the same directory with fewer keys: replaced whole,
        // with a changed value, and no stale key left behind.
        try secrets.set(key: "a", value: Array("ALPHA".utf8))
        try secrets.materialize(keys: ["a"], into: dir)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir), ["a"])
        XCTAssertEqual(try read(dir + "/a"), Array("ALPHA".utf8))
        // Nothing but the directory itself is left beside it.
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: stateRoot).sorted(), ["r1.secrets", "secrets"])

        try secrets.materialize(keys: [], into: stateRoot + "/r2.secrets")
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: stateRoot + "/r2.secrets"), [])
    }

    func testMaterializeForANonRootReplica() throws {
        try XCTSkipUnless(geteuid() == 0, "chown needs root")
        let secrets = try SecretStore(stateRoot: stateRoot)
        try secrets.set(key: "a", value: [1])
        let dir = stateRoot + "/r.secrets"
        try secrets.materialize(keys: ["a"], into: dir, uid: 1000, gid: 1001)
        let st = try storeTestLstat(dir)
        XCTAssertEqual(st.st_uid, 1000)
        XCTAssertEqual(st.st_gid, 1001)
        XCTAssertEqual(st.st_mode & 0o7777, 0o700)
        XCTAssertEqual(try storeTestLstat(dir + "/a").st_uid, 0)  // the replica can read, not change
    }

    func testMaterializeMissingKey() throws {
        let secrets = try SecretStore(stateRoot: stateRoot)
        try secrets.set(key: "a", value: [1])
        let dir = stateRoot + "/r1.secrets"
        XCTAssertThrowsError(try secrets.materialize(keys: ["a", "MISSING"], into: dir)) { error in
            XCTAssertEqual(error as? HearthError, HearthError(.notFound,
                "secret \"MISSING\" requested by the environment is not set; set it with `hearth secret set MISSING`"))
        }
        XCTAssertThrowsError(try secrets.materialize(keys: ["../etc"], into: dir)) { error in
            let e = error as? HearthError
            XCTAssertEqual(e?.code, .invalidArgument)
            XCTAssertTrue(e?.message.contains(#""../etc" requested by the environment is invalid"#) ?? false, e?.message ?? "")
        }
        // Nothing was created.
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: stateRoot), ["secrets"])
    }

    func testValuesNeverAppearInDescriptionsOrErrors() throws {
        let secrets = try SecretStore(stateRoot: stateRoot)
        let value = "s3cr3t-VALUE-do-not-print"
        try secrets.set(key: "k", value: Array(value.utf8))
        XCTAssertFalse(String(describing: secrets).contains(value))
        XCTAssertFalse(String(reflecting: secrets).contains(value))
        XCTAssertFalse(try secrets.list().joined().contains(value))
        XCTAssertThrowsError(try secrets.set(key: "k", value: Array((value + String(repeating: "x", count: 1 << 20)).utf8))) { error in
            XCTAssertFalse("\(error)".contains(value))
        }
    }
}

private final class Counter: @unchecked Sendable {
    private let lock = NSLock()
    private var count = 0
    func add() { lock.withLock { count += 1 } }
    var value: Int { lock.withLock { count } }
}
