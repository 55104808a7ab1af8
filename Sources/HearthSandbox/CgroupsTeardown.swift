import Foundation
import Glibc
import HearthCore

/// Killing every process of a cgroup tree and removing its directories;
/// shared by replica teardown and the start-up sweep of stale cgroups.
enum CgroupTeardown {
    /// Longest a kill waits for the cgroups to empty.
    static let killTimeout = 3.0

    /// v2: one write to cgroup.kill (kernel ≥ 5.14) kills the whole subtree,
    /// including processes forked meanwhile. Without it, the v1 loop.
    /// Then waits (bounded) until no process is left.
    static func killV2(_ dir: String) {
        let killFile = dir + "/cgroup.kill"
        if CgroupFiles.exists(killFile), (try? CgroupFiles.write(killFile, "1")) != nil {
            waitEmpty([dir] + descendants(of: dir))
        } else {
            killLoop([dir] + descendants(of: dir))
        }
    }

    /// v1 has no cgroup.kill: SIGKILL every pid listed in the cgroup.procs of
    /// `dirs`, again and again, until all are empty — a process may fork
    /// between the read and the kill. Bounded, since pids.max bounds a fork
    /// loop and an unkillable (D-state) task must not hang the daemon.
    /// Plain kill(2) on a pid just read from cgroup.procs: for it to hit
    /// another process, the pid would have to be freed and reused in
    /// between, which the kernel's pid allocation makes practically
    /// impossible within microseconds.
    static func killLoop(_ dirs: [String]) {
        let deadline = Date().addingTimeInterval(killTimeout)
        while true {
            var found = false
            for dir in dirs {
                for pid in CgroupFiles.procs(dir) where pid > 0 {
                    found = true
                    kill(pid, SIGKILL)
                }
            }
            if !found || Date() >= deadline { return }
            usleep(5_000)
        }
    }

    /// Waits until the cgroup.procs of every dir is empty, or the timeout.
    static func waitEmpty(_ dirs: [String]) {
        let deadline = Date().addingTimeInterval(killTimeout)
        while dirs.contains(where: { !CgroupFiles.procs($0).isEmpty }) && Date() < deadline {
            usleep(5_000)
        }
    }

    /// Every cgroup below `dir`, deepest first (the order rmdir needs).
    static func descendants(of dir: String) -> [String] {
        var result = [String]()
        for name in CgroupFiles.childDirectories(dir) {
            let child = dir + "/" + name
            result.append(contentsOf: descendants(of: child))
            result.append(child)
        }
        return result
    }

    /// Removes every cgroup below `dir` (not `dir` itself); throws the first
    /// failure after trying them all.
    static func removeDescendants(of dir: String) throws {
        var firstError: (any Error)?
        for child in descendants(of: dir) {
            do { try CgroupFiles.rmdir(child) } catch { firstError = firstError ?? error }
        }
        if let firstError { throw firstError }
    }

    /// After a leaf is removed, removes its now empty parents up to (not
    /// including) `stop`. A parent that still has children or is being
    /// used by a concurrent create stays; that is not an error.
    static func pruneParents(of leaf: String, stop: String) {
        var dir = (leaf as NSString).deletingLastPathComponent
        while dir.hasPrefix(stop + "/") {
            if Glibc.rmdir(dir) != 0 { return }
            dir = (dir as NSString).deletingLastPathComponent
        }
    }
}
