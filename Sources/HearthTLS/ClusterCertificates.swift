import Crypto
import Foundation
import HearthCore
import SwiftASN1
import X509

/// The certificates of a small Hearth cluster (`hearth certs`): one CA,
/// a server certificate per node (its names and addresses as subject
/// alternative names) and a client certificate per caller (its name is
/// the subject's common name, which hearthd takes as the caller's
/// identity). P-256 keys, PKCS#8 PEM; every certificate says what it is
/// for (CA: keyCertSign only; server: serverAuth; client: clientAuth), so
/// a client certificate cannot serve as a node's or sign another.
public enum ClusterCertificates {
    public struct Issued: Sendable {
        public var certificatePEM: String
        public var keyPEM: String
        public init(certificatePEM: String, keyPEM: String) { self.certificatePEM = certificatePEM; self.keyPEM = keyPEM }
    }

    public struct Validity: Sendable {
        public var notBefore: Date
        public var notAfter: Date
        public init(notBefore: Date, notAfter: Date) { self.notBefore = notBefore; self.notAfter = notAfter }
        /// From an hour ago (clocks of a cluster differ a little) for `days`.
        public static func days(_ days: Int, from now: Date = Date()) -> Validity {
            Validity(notBefore: now.addingTimeInterval(-3600), notAfter: now.addingTimeInterval(Double(days) * 86400))
        }
    }

    public static func makeCA(name: String, validity: Validity) throws -> Issued {
        let key = P256.Signing.PrivateKey()
        let subject = try DistinguishedName {
            OrganizationName("hearth")
            CommonName(name)
        }
        let extensions = try Certificate.Extensions {
            Critical(BasicConstraints.isCertificateAuthority(maxPathLength: 0))
            Critical(KeyUsage(keyCertSign: true, cRLSign: true))
            SubjectKeyIdentifier(hash: Certificate.PublicKey(key.publicKey))
        }
        let cert = try Certificate(version: .v3, serialNumber: .init(), publicKey: .init(key.publicKey),
                                   notValidBefore: validity.notBefore, notValidAfter: validity.notAfter,
                                   issuer: subject, subject: subject, signatureAlgorithm: .ecdsaWithSHA256,
                                   extensions: extensions, issuerPrivateKey: .init(key))
        return Issued(certificatePEM: try cert.serializeAsPEM().pemString,
                      keyPEM: try Certificate.PrivateKey(key).serializeAsPEM().pemString)
    }

    /// A node's certificate: `hosts` are DNS names or IP addresses a
    /// client may dial (each becomes a subject alternative name).
    public static func makeServer(ca: Issued, name: String, hosts: [String], validity: Validity) throws -> Issued {
        guard !hosts.isEmpty else {
            throw HearthError.invalid("a server certificate needs at least one --host (a DNS name or IP address clients dial)")
        }
        var names: [GeneralName] = []
        for h in hosts {
            if let ip = IPAddressBytes.parse(h) {
                names.append(.ipAddress(ASN1OctetString(contentBytes: ArraySlice(ip))))
            } else {
                guard DNSName.isValid(h) else {
                    throw HearthError.invalid("--host \(h.debugDescription): neither an IP address nor a DNS name (letters, digits, '-', '.')")
                }
                names.append(.dnsName(h))
            }
        }
        return try issue(ca: ca, commonName: name, usage: .serverAuth, altNames: names, validity: validity)
    }

    /// A caller's certificate; `name` is its identity on every daemon.
    public static func makeClient(ca: Issued, name: String, validity: Validity) throws -> Issued {
        try issue(ca: ca, commonName: name, usage: .clientAuth, altNames: [], validity: validity)
    }

    private static func issue(ca: Issued, commonName: String, usage: ExtendedKeyUsage.Usage,
                              altNames: [GeneralName], validity: Validity) throws -> Issued {
        guard !commonName.isEmpty, commonName.utf8.count <= 64 else {
            throw HearthError.invalid("name \(commonName.debugDescription): 1 to 64 bytes (X.509's limit on a common name)")
        }
        let caCert: Certificate
        let caKey: Certificate.PrivateKey
        do {
            caCert = try Certificate(pemEncoded: ca.certificatePEM)
            caKey = try Certificate.PrivateKey(pemEncoded: ca.keyPEM)
        } catch {
            throw HearthError.invalid("the CA's certificate or key is not PEM this tool can read: \(error)")
        }
        guard caKey.publicKey == caCert.publicKey else {
            throw HearthError.invalid("the CA's key does not belong to its certificate (\(caCert.subject))")
        }
        if validity.notAfter > caCert.notValidAfter {
            throw HearthError.invalid("the certificate would outlive its CA (valid until \(caCert.notValidAfter)): ask for fewer --days")
        }
        let key = P256.Signing.PrivateKey()
        let subject = try DistinguishedName {
            OrganizationName("hearth")
            CommonName(commonName)
        }
        let extensions = try Certificate.Extensions {
            Critical(BasicConstraints.notCertificateAuthority)
            Critical(KeyUsage(digitalSignature: true))
            try ExtendedKeyUsage([usage])
            SubjectKeyIdentifier(hash: Certificate.PublicKey(key.publicKey))
            if let aki = try? caCert.extensions.subjectKeyIdentifier {
                AuthorityKeyIdentifier(keyIdentifier: aki.keyIdentifier)
            }
            if !altNames.isEmpty { SubjectAlternativeNames(altNames) }
        }
        let cert = try Certificate(version: .v3, serialNumber: .init(), publicKey: .init(key.publicKey),
                                   notValidBefore: validity.notBefore, notValidAfter: validity.notAfter,
                                   issuer: caCert.subject, subject: subject, signatureAlgorithm: .ecdsaWithSHA256,
                                   extensions: extensions, issuerPrivateKey: caKey)
        return Issued(certificatePEM: try cert.serializeAsPEM().pemString,
                      keyPEM: try Certificate.PrivateKey(key).serializeAsPEM().pemString)
    }

    /// The caller identity hearthd derives from a client certificate: its
    /// subject, as RFC 4514 writes it (`CN=alice,O=hearth`).
    public static func identity(ofDER der: [UInt8]) -> String? {
        guard let cert = try? Certificate(derEncoded: der) else { return nil }
        return cert.subject.description
    }
}

extension SubjectKeyIdentifier {
    /// RFC 5280's method 1: the SHA-1 of the public key's bits.
    init(hash key: Certificate.PublicKey) {
        let digest = Insecure.SHA1.hash(data: key.subjectPublicKeyInfoBytes)
        self.init(keyIdentifier: ArraySlice(digest))
    }
}

/// Literal IPv4 and IPv6 addresses, as the bytes of a SAN's iPAddress.
enum IPAddressBytes {
    static func parse(_ text: String) -> [UInt8]? {
        var v4 = in_addr()
        if inet_pton(AF_INET, text, &v4) == 1 { return withUnsafeBytes(of: &v4) { Array($0) } }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, text, &v6) == 1 { return withUnsafeBytes(of: &v6) { Array($0) } }
        return nil
    }
}

enum DNSName {
    static func isValid(_ s: String) -> Bool {
        guard !s.isEmpty, s.utf8.count <= 253 else { return false }
        return s.split(separator: ".", omittingEmptySubsequences: false).allSatisfy { label in
            !label.isEmpty && label.utf8.count <= 63 && !label.hasPrefix("-") && !label.hasSuffix("-")
                && label.unicodeScalars.allSatisfy { $0.isASCII && ($0.properties.isAlphabetic || ("0"..."9").contains($0) || $0 == "-") }
        }
    }
}
