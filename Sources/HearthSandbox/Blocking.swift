import CHearth
import Foundation
import Glibc
import HearthCore
import Synchronization

/// Where blocking work (mounts, cgroup files, spawning, unpacking) runs:
/// Dispatch's own threads, never the cooperative pool.
public enum Blocking {
    public static let queue = DispatchQueue(label: "hearth.blocking", qos: .userInitiated, attributes: .concurrent)

    public static func run<T: Sendable>(_ work: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { cont in
            queue.async {
                do { cont.resume(returning: try work()) } catch { cont.resume(throwing: error) }
            }
        }
    }
}
