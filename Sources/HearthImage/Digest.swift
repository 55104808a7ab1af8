import Crypto
import HearthCore

/// A content digest as OCI writes it, `sha256:<64 lowercase hex>`.
///
/// Digests from image metadata become file names (`blobs/sha256/<hex>`,
/// `layers/<hex>`), so parsing is strict: only sha256, exactly 64 lowercase
/// hex digits. Anything else could name a path outside the directory it is
/// looked up in.
struct Digest: Hashable, Sendable, CustomStringConvertible {
    /// 64 lowercase hex digits.
    let hex: String

    init(hex: String) throws {
        guard Digest.isSHA256Hex(hex) else {
            throw HearthError(.invalidImage, "\"\(hex)\" is not a sha256 digest (64 lowercase hex digits)")
        }
        self.hex = hex
    }

    /// Parses `sha256:<hex>`; `what` names the field in the error.
    init(parsing text: String, what: String) throws {
        guard let colon = text.firstIndex(of: ":") else {
            throw HearthError(.invalidImage, "\(what): \"\(text)\" is not a digest (expected sha256:<64 hex digits>)")
        }
        let algorithm = text[..<colon]
        let hex = String(text[text.index(after: colon)...])
        guard algorithm == "sha256" else {
            throw HearthError(.invalidImage, "\(what): digest algorithm \"\(algorithm)\" in \"\(text)\" is not supported (only sha256)")
        }
        guard Digest.isSHA256Hex(hex) else {
            throw HearthError(.invalidImage, "\(what): \"\(text)\" is not a valid sha256 digest (expected 64 lowercase hex digits)")
        }
        self.hex = hex
    }

    var description: String { "sha256:\(hex)" }

    /// `sha256:0123456789ab` — enough to tell layers apart in messages.
    var short: String { "sha256:\(hex.prefix(12))" }

    static func isSHA256Hex(_ s: String) -> Bool {
        s.utf8.count == 64 && s.utf8.allSatisfy { (0x30...0x39).contains($0) || (0x61...0x66).contains($0) }
    }

    static func of<Bytes: Sequence>(_ bytes: Bytes) -> Digest where Bytes.Element == UInt8 {
        var hasher = SHA256()
        hasher.update(data: Array(bytes))
        return Digest(finalized: hasher.finalize())
    }

    init(finalized: SHA256.Digest) {
        hex = Hex.string(finalized)
    }
}
