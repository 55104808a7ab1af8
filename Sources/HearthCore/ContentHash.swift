/// SHA-256 for callers without swift-crypto (the CLI addresses code
/// bundles by it). Not named SHA256 so it cannot clash with Crypto's.
public enum ContentHash {
    public static func sha256Hex(_ bytes: [UInt8]) -> String { SHA256.hex(bytes) }
}
