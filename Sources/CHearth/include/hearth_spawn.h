/*
 * The spawn path: one C function that turns a plain-data plan into an
 * isolated child process. Swift builds the plan (every string, every fd, the
 * seccomp BPF already compiled); the child runs raw syscalls only (no malloc,
 * no stdio, no locks) from clone3 to execve, and reports a failure as
 * (stage, errno) on a close-on-exec pipe.
 */
#ifndef HEARTH_SPAWN_H
#define HEARTH_SPAWN_H

#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Kinds of filesystem operation, executed in plan order in the child. */
enum hearth_op_kind {
    /* mount(source, target, fstype, flags, data). If flags has MS_BIND and
     * MS_RDONLY, the bind is followed by a MS_REMOUNT|MS_BIND|flags remount
     * so that the bind really is read-only. */
    HEARTH_OP_MOUNT = 1,
    /* mkdir(target, mode); EEXIST is not an error. */
    HEARTH_OP_MKDIR = 2,
    /* mknod(target, mode, dev) where mode includes S_IFCHR etc. EEXIST ok. */
    HEARTH_OP_MKNOD = 3,
    /* symlink(source, target); EEXIST is not an error. */
    HEARTH_OP_SYMLINK = 4,
    /* chdir(target); pivot_root(".", "."); umount2(".", MNT_DETACH);
     * chdir("/"). Every op after this one sees the new root. */
    HEARTH_OP_PIVOT = 5,
    /* Mask target: bind source (normally /dev/null) over it when it is not
     * a directory, an empty read-only tmpfs when it is. ENOENT is skipped. */
    HEARTH_OP_MASK = 6,
    /* Make target read-only: bind it onto itself (MS_REC) and remount
     * MS_BIND|MS_REMOUNT|MS_RDONLY|flags. ENOENT is skipped. */
    HEARTH_OP_READONLY = 7,
    /* Write data (NUL-terminated) into a new file target with mode. */
    HEARTH_OP_WRITE_FILE = 8,
    /* An idmapped copy of source mounted on target: open_tree(CLONE),
     * mount_setattr(MOUNT_ATTR_IDMAP with the plan's userns_fd, plus
     * read-only/nosuid/nodev from flags), move_mount. For the image
     * layers of a replica in a user namespace: the host's uid 0 files
     * appear as the namespace's root, and nothing is chowned on disk. */
    HEARTH_OP_IDMAP_BIND = 9,
    /* Attach the detached mount tree open in the parent at fd `tree_fd`
     * (hearth_detached_tree: its flags already set) on target, resolved in
     * the root: move_mount(tree_fd, "", target). A bind by path could not
     * do it: a path checked in the parent may change before the child
     * binds it, and a bind of the fd's own mount, which lives in the
     * parent's mount namespace, is refused (EINVAL). */
    HEARTH_OP_ATTACH = 10,
};

struct hearth_op {
    int32_t kind;            /* enum hearth_op_kind */
    int32_t optional;        /* nonzero: ENOENT from this op is ignored */
    const char *source;
    const char *target;
    const char *fstype;
    const char *data;
    unsigned long flags;     /* MS_* flags */
    uint32_t mode;
    uint64_t dev;            /* makedev(major, minor) for MKNOD */
    int32_t tree_fd;         /* ATTACH: the detached tree, an fd in the parent (and the child) */
};

struct hearth_fd_map {
    int32_t source;          /* fd in the parent */
    int32_t target;          /* fd number in the child */
};

struct hearth_rlimit {
    int32_t resource;        /* RLIMIT_* */
    uint64_t soft;
    uint64_t hard;
};

struct hearth_spawn_plan {
    /* CLONE_NEW* flags for clone3. CLONE_NEWCGROUP is handled specially:
     * with cgroup_fd >= 0 it goes to clone3 (CLONE_INTO_CGROUP, cgroup v2);
     * otherwise the child unshares it after the parent has written its pid
     * into every cgroup_procs_fds (cgroup v1), so that the namespace is
     * rooted at the replica's cgroup either way. */
    uint64_t clone_flags;
    int32_t cgroup_fd;                 /* v2: O_DIRECTORY fd of the leaf, or -1 */
    const int32_t *cgroup_procs_fds;   /* v1: open cgroup.procs files (O_WRONLY) */
    uint32_t cgroup_procs_count;

    const struct hearth_op *ops;       /* filesystem plan, in order */
    uint32_t op_count;

    const char *hostname;              /* NULL: leave as is */
    int32_t loopback_up;               /* bring `lo` up (new network namespace) */

    const struct hearth_rlimit *rlimits;
    uint32_t rlimit_count;

    /* fds the child keeps, renumbered; every other fd is closed. */
    const struct hearth_fd_map *fds;
    uint32_t fd_count;

    uint32_t uid, gid;
    const uint32_t *groups;            /* supplementary groups */
    uint32_t group_count;

    /* Capabilities as raw bit masks (bit n = capability n). The bounding
     * set is reduced to `bounding`; capset() sets the three others. The
     * ambient set is cleared. */
    uint64_t cap_bounding, cap_effective, cap_permitted, cap_inheritable;
    int32_t last_cap;                  /* highest capability number the kernel knows */

    /* User namespace (opt-in): with use_userns, the child joins userns_fd
     * (a namespace whose uid/gid maps the daemon wrote, see
     * hearth_userns_open) after its mounts, hostname and loopback and
     * before it drops capabilities and sets uid/gid, which are then ids
     * inside that namespace. Every other namespace stays owned by the
     * host's, so root inside holds no capability over any of them. */
    int32_t use_userns;
    int32_t userns_fd;

    /* Network namespace to join (network egress): with use_netns, the
     * child joins netns_fd (hearth_egress_netns_open: lo up, the daemon's
     * proxy already listening inside) first thing, before its mounts, as
     * host root; clone_flags must then not hold CLONE_NEWNET. */
    int32_t use_netns;
    int32_t netns_fd;

    int32_t no_new_privs;
    /* struct sock_filter array; NULL or 0 length: no filter. */
    const void *seccomp_filter;
    uint32_t seccomp_filter_len;       /* number of sock_filter instructions */

    /* createContainer hooks (CDI, under --allow-privileged): with hooks
     * set, the child stops once its root is complete (its mounts,
     * pivot_root and the ops after it, the v1 cgroup sync) and before
     * anything else (hostname, user namespace, capabilities, seccomp,
     * exec), and the parent calls hooks(pid, hooks_ctx) meanwhile, in its
     * own context (not the child's: any code may run there). Nonzero is an
     * errno: the child is killed and the spawn fails at
     * HEARTH_STAGE_HOOKS. Their time counts in HEARTH_MARK_PIVOT's phase. */
    int32_t (*hooks)(int32_t pid, void *hooks_ctx);
    void *hooks_ctx;

    const char *cwd;                   /* after pivot; NULL: "/" */
    const char *path;                  /* executable to execve (inside the new root) */
    char *const *argv;                 /* NULL-terminated */
    char *const *envp;                 /* NULL-terminated */
};

/* Stages reported by the child. Op failures are reported as
 * HEARTH_STAGE_OP_BASE + op index. */
enum hearth_stage {
    HEARTH_STAGE_CLONE = 1,
    HEARTH_STAGE_CGROUP_PROCS = 2,
    HEARTH_STAGE_SYNC = 3,
    HEARTH_STAGE_UNSHARE_CGROUP = 4,
    HEARTH_STAGE_MAKE_PRIVATE = 5,
    HEARTH_STAGE_HOSTNAME = 6,
    HEARTH_STAGE_LOOPBACK = 7,
    HEARTH_STAGE_RLIMIT = 8,
    HEARTH_STAGE_FDS = 9,
    HEARTH_STAGE_SIGNALS = 10,
    HEARTH_STAGE_CAPBSET = 11,
    HEARTH_STAGE_SETGROUPS = 12,
    HEARTH_STAGE_SETGID = 13,
    HEARTH_STAGE_SETUID = 14,
    HEARTH_STAGE_CAPSET = 15,
    HEARTH_STAGE_AMBIENT = 16,
    HEARTH_STAGE_NO_NEW_PRIVS = 17,
    HEARTH_STAGE_SECCOMP = 18,
    HEARTH_STAGE_CHDIR = 19,
    HEARTH_STAGE_EXEC = 20,
    HEARTH_STAGE_SETSID = 21,
    HEARTH_STAGE_USERNS = 22,
    HEARTH_STAGE_NETNS = 23,
    HEARTH_STAGE_HOOKS = 24,
    HEARTH_STAGE_OP_BASE = 1000,
};

/* Where a spawn's time went: CLOCK_MONOTONIC nanoseconds at each point
 * (0 where not reached or not measured). */
enum hearth_spawn_mark {
    HEARTH_MARK_CLONE = 0,      /* parent, just before clone3 */
    HEARTH_MARK_CHILD = 1,      /* child, first thing after clone3 */
    HEARTH_MARK_MOUNTS = 2,     /* child, ops before the pivot done */
    HEARTH_MARK_PIVOT = 3,      /* child, pivot_root, the ops after it and the v1 cgroup sync done */
    HEARTH_MARK_EXEC = 4,       /* child, just before execve (caps, seccomp done) */
    HEARTH_MARK_EXECED = 5,     /* parent, EOF on the error pipe: execve succeeded */
    HEARTH_MARK_COUNT = 6,
};

struct hearth_spawn_result {
    pid_t pid;           /* > 0 when the child was created */
    int32_t pidfd;       /* O_CLOEXEC pidfd of the child, or -1 */
    int32_t stage;       /* 0 on success, else enum hearth_stage / OP_BASE + i */
    int32_t error;       /* errno of the failed stage */
    uint64_t marks[HEARTH_MARK_COUNT];  /* enum hearth_spawn_mark */
};

/*
 * Create the child described by `plan` and wait until it has either called
 * execve successfully (returns 0; result->pid and ->pidfd are set) or failed
 * at some stage (returns -1; result->stage and ->error say where and why;
 * the child has been reaped, result->pid is its former pid or 0).
 * Safe to call from any thread of a multi-threaded process.
 */
int hearth_spawn(const struct hearth_spawn_plan *plan, struct hearth_spawn_result *result);

/*
 * A new user namespace whose ids 0..count-1 are the host's uid_base.. and
 * gid_base..: a short-lived child is cloned into it, the maps are written,
 * and the namespace is kept by an O_CLOEXEC fd, returned (the child is
 * reaped). -1 with *error = errno on failure. Any thread.
 */
int hearth_userns_open(uint32_t uid_base, uint32_t gid_base, uint32_t count, int32_t *error);


#ifdef __cplusplus
}
#endif

#endif
