import CHearth
import Foundation
import Glibc
import HearthCore
import HearthImage
import HearthSandbox
import Hummingbird
import Logging
import NIOCore
import Synchronization

/// glibc malloc settings that keep the daemon's resident memory small.
public enum MallocTuning {
    /// One arena per thread that ever allocated (glibc's default, up to 8
    /// per CPU) keeps each one's free pages resident; `n` serve a daemon
    /// whose heavy work is a few blocking threads.
    public static func limitArenas(_ n: Int32) { _ = hearth_malloc_arena_max(n) }
    /// Hands freed pages back to the kernel (after an import, say).
    public static func trim() { _ = hearth_malloc_trim() }
}
