/*
 * The spawn path: clone3 -> (cgroup sync) -> mounts -> pivot_root -> caps ->
 * seccomp -> execve, driven by a plain-data plan (see hearth_spawn.h).
 *
 * The caller is a multi-threaded Swift process. The child is created with
 * fork semantics (its own copy of the address space, one thread), so it may
 * not take any lock another thread could have held at clone time: between
 * clone3 and execve it uses raw syscalls only: no malloc, no stdio, and no
 * glibc wrapper that does more than trap into the kernel (notably not
 * glibc's setuid/setgid/setgroups, which broadcast to all threads).
 */
#define _GNU_SOURCE
#include "hearth_spawn.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <net/if.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/statvfs.h> /* ST_* flag values only; statvfs() is not called */
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/openat2.h>
#include <linux/sched.h>
#include <linux/seccomp.h>

#ifndef CLONE_INTO_CGROUP
#define CLONE_INTO_CGROUP 0x200000000ULL
#endif
#ifndef CLONE_NEWTIME
#define CLONE_NEWTIME 0x00000080
#endif
#ifndef PR_CAP_AMBIENT
#define PR_CAP_AMBIENT 47
#define PR_CAP_AMBIENT_CLEAR_ALL 4
#endif
#ifndef AT_RECURSIVE
#define AT_RECURSIVE 0x8000
#endif
#ifndef MOUNT_ATTR_RDONLY
#define MOUNT_ATTR_RDONLY 0x00000001
#endif
#ifndef MOUNT_ATTR_NOSUID
#define MOUNT_ATTR_NOSUID 0x00000002
#define MOUNT_ATTR_NODEV 0x00000004
#endif
#ifndef MOUNT_ATTR_IDMAP
#define MOUNT_ATTR_IDMAP 0x00100000
#endif
#ifndef MOVE_MOUNT_T_EMPTY_PATH
#define MOVE_MOUNT_T_EMPTY_PATH 0x00000040
#endif
#ifndef OPEN_TREE_CLONE
#define OPEN_TREE_CLONE 1
#endif
#ifndef MOVE_MOUNT_F_EMPTY_PATH
#define MOVE_MOUNT_F_EMPTY_PATH 0x00000004
#endif
#ifndef SYS_open_tree
#define SYS_open_tree 428
#endif
#ifndef SYS_move_mount
#define SYS_move_mount 429
#endif

/* Most fds a plan may map; bounds the child's on-stack scratch array. */
#define HEARTH_SPAWN_MAX_FDS 256
/* BPF_MAXINSNS: the kernel refuses longer filters anyway. */
#define HEARTH_SECCOMP_MAX_INSNS 4096

/* clone3's argument block (CLONE_ARGS_SIZE_VER2), spelled out so that we do
 * not depend on the installed kernel headers' version of it. */
struct hs_clone_args {
    uint64_t flags;
    uint64_t pidfd;
    uint64_t child_tid;
    uint64_t parent_tid;
    uint64_t exit_signal;
    uint64_t stack;
    uint64_t stack_size;
    uint64_t tls;
    uint64_t set_tid;
    uint64_t set_tid_size;
    uint64_t cgroup;
};

/* mount_setattr's argument; <linux/mount.h> clashes with glibc 2.36's
 * <sys/mount.h>, so it is declared here. */
struct hs_mount_attr {
    uint64_t attr_set;
    uint64_t attr_clr;
    uint64_t propagation;
    uint64_t userns_fd;
};

/* The kernel's struct sigaction. All-zero means SIG_DFL, no flags, empty
 * mask on every architecture's layout; 4 words cover the largest one. */
struct hs_ksigaction {
    unsigned long words[4];
};

/* Namespaces the plan may ask for. Anything else (CLONE_VM, CLONE_FILES,
 * CLONE_NEWUSER without id maps, ...) would break the model below. */
#define HS_ALLOWED_NS (CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWUTS | CLONE_NEWIPC | \
                       CLONE_NEWNET | CLONE_NEWCGROUP | CLONE_NEWTIME)

/* ------------------------------------------------------------------------ */
/* Helpers usable in the child: no allocation, no locks, no stdio.           */

/* Raw syscall returning the result, or -errno. errno here is the calling
 * thread's (in the child: the only thread's, in its own memory). */
#define RAW(...) hs_ret(syscall(__VA_ARGS__))
static inline long hs_ret(long r) { return r < 0 ? -(long)errno : r; }

static size_t hs_strlen(const char *s)
{
    size_t n = 0;
    while (s[n])
        n++;
    return n;
}

static int hs_streq(const char *a, const char *b)
{
    while (*a && *a == *b) {
        a++;
        b++;
    }
    return *a == *b;
}

static void hs_close(int fd)
{
    /* close() must not be retried on EINTR on Linux: the fd is gone. */
    if (fd >= 0)
        (void)syscall(SYS_close, fd);
}

/* Write all of buf. Returns 0 or -errno (-EIO for a zero-length write). */
static int hs_write_all(int fd, const void *buf, size_t len)
{
    const char *p = (const char *)buf;
    while (len > 0) {
        long n = RAW(SYS_write, fd, p, len);
        if (n == -EINTR)
            continue;
        if (n < 0)
            return (int)n;
        if (n == 0)
            return -EIO;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Decimal of a non-negative int into buf (>= 12 bytes); returns length. */
static size_t hs_utoa(char *buf, unsigned int v)
{
    char tmp[12];
    size_t n = 0, i;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    for (i = 0; i < n; i++)
        buf[i] = tmp[n - 1 - i];
    buf[n] = 0;
    return n;
}

/* "/proc/self/fd/N": lets mount(2) act on exactly the inode an O_PATH fd
 * names, whatever symlinks lead to it. */
static void hs_fd_path(char buf[32], int fd)
{
    static const char prefix[] = "/proc/self/fd/";
    size_t i;
    for (i = 0; i < sizeof(prefix) - 1; i++)
        buf[i] = prefix[i];
    hs_utoa(buf + i, (unsigned int)fd);
}

/* ------------------------------------------------------------------------ */
/* The child.                                                                */

struct hs_child {
    const struct hearth_spawn_plan *plan;
    int err_fd;      /* write end of the error pipe, close-on-exec */
    int err_peer;    /* parent's read end of the error pipe */
    int sync_fd;     /* child's end of the sync socket (v1, hooks), or -1 */
    int sync_peer;   /* parent's end of the sync socket, or -1 */
    uint64_t *marks; /* shared page for enum hearth_spawn_mark, or NULL */
};

/* CLOCK_MONOTONIC in ns, by raw syscall (the child uses no libc). */
static uint64_t hs_now(void)
{
    struct timespec ts;
    if (syscall(SYS_clock_gettime, CLOCK_MONOTONIC, &ts) < 0)
        return 0;
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static void hs_mark(const struct hs_child *c, int mark)
{
    if (c->marks != NULL)
        c->marks[mark] = hs_now();
}

static void __attribute__((noreturn)) child_fail(const struct hs_child *c, int stage, int err)
{
    int32_t msg[2] = { stage, err };
    /* 8 bytes < PIPE_BUF: atomic. Nothing useful can be done if it fails. */
    (void)hs_write_all(c->err_fd, msg, sizeof(msg));
    for (;;)
        syscall(SYS_exit_group, 127);
}

/* If `path` lies strictly inside `root` (the directory that is about to
 * become /), the part after root with leading slashes removed; else NULL. */
static const char *rel_under(const char *root, const char *path)
{
    size_t n, i;
    const char *r;
    if (root == NULL || path == NULL)
        return NULL;
    n = hs_strlen(root);
    while (n > 1 && root[n - 1] == '/')
        n--;
    if (n <= 1)
        return NULL;
    for (i = 0; i < n; i++)
        if (path[i] != root[i])
            return NULL;
    if (path[n] != '/')
        return NULL;
    r = path + n;
    while (*r == '/')
        r++;
    return *r ? r : NULL;
}

/* openat2(RESOLVE_IN_ROOT) of rel below root: symlinks and ".." in the image
 * resolve inside the new root, never into the host's filesystem.
 * Returns an fd or -errno. */
static int open_in_root(const char *root, const char *rel, uint64_t flags)
{
    struct open_how how = {
        .flags = flags | O_CLOEXEC,
        .mode = 0,
        .resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
    };
    int rfd, fd;
    rfd = (int)RAW(SYS_openat, AT_FDCWD, root, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (rfd < 0)
        return rfd;
    fd = (int)RAW(SYS_openat2, rfd, rel, &how, sizeof(how));
    hs_close(rfd);
    return fd;
}

/* A path for mount(2)/stat(2): before the pivot, a path inside the future
 * root is opened with open_in_root and named through /proc/self/fd (the
 * host's procfs), so an image cannot redirect the mount with a symlink.
 * Otherwise the path is used as is. *fd is the fd to close, or -1. */
static int mount_path(const char *root, const char *path, char buf[32], const char **out, int *fd)
{
    const char *rel = rel_under(root, path);
    *fd = -1;
    *out = path;
    if (rel == NULL)
        return 0;
    *fd = open_in_root(root, rel, O_PATH);
    if (*fd < 0)
        return *fd;
    hs_fd_path(buf, *fd);
    *out = buf;
    return 0;
}

/* For operations that create target: opens the directory that holds it
 * (scoped to root before the pivot) and points *name at its last
 * component inside buf. Returns the directory fd or -errno. */
static int open_parent(const char *root, const char *target, char buf[PATH_MAX], const char **name)
{
    const char *rel = rel_under(root, target);
    const char *src = rel ? rel : target;
    const char *dir;
    size_t n = hs_strlen(src), i, slash = (size_t)-1;
    if (n == 0)
        return -ENOENT;
    if (n >= PATH_MAX)
        return -ENAMETOOLONG;
    for (i = 0; i <= n; i++)
        buf[i] = src[i];
    while (n > 1 && buf[n - 1] == '/')
        buf[--n] = 0;
    for (i = 0; i < n; i++)
        if (buf[i] == '/')
            slash = i;
    if (slash == (size_t)-1) {
        dir = ".";
        *name = buf;
    } else {
        buf[slash] = 0;
        dir = slash == 0 ? "/" : buf;
        *name = buf + slash + 1;
    }
    /* "." or ".." as the created name would step outside the scoped dir. */
    if (**name == 0 || hs_streq(*name, ".") || hs_streq(*name, ".."))
        return -EINVAL;
    if (rel)
        return open_in_root(root, dir, O_PATH | O_DIRECTORY);
    return (int)RAW(SYS_openat, AT_FDCWD, dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
}

/* Mount flags a bind remount must carry over from the mount it changes:
 * a remount never loosens (and where flags are locked, must not try to). */
static unsigned long kept_flags(const char *path, unsigned long requested, int *err)
{
    struct statfs sfs;
    unsigned long keep = 0;
    long r = RAW(SYS_statfs, path, &sfs);
    if (r < 0) {
        *err = (int)-r;
        return 0;
    }
    *err = 0;
    if (sfs.f_flags & ST_RDONLY)
        keep |= MS_RDONLY;
    if (sfs.f_flags & ST_NOSUID)
        keep |= MS_NOSUID;
    if (sfs.f_flags & ST_NODEV)
        keep |= MS_NODEV;
    if (sfs.f_flags & ST_NOEXEC)
        keep |= MS_NOEXEC;
    /* Atime: keep the existing policy unless the plan names one. */
    if (!(requested & (MS_NOATIME | MS_RELATIME | MS_STRICTATIME))) {
        if (sfs.f_flags & ST_NOATIME)
            keep |= MS_NOATIME;
        else if (sfs.f_flags & ST_RELATIME)
            keep |= MS_RELATIME;
        else
            keep |= MS_STRICTATIME;
        if (sfs.f_flags & ST_NODIRATIME)
            keep |= MS_NODIRATIME;
    }
    return keep;
}

/* Flags that only take effect on a bind mount through a second, remount
 * call (mount(2) ignores them on the initial MS_BIND). */
#define HS_BIND_REMOUNT_FLAGS (MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_NOATIME | \
                               MS_NODIRATIME | MS_RELATIME | MS_STRICTATIME)

/* Apply flags to the bind mount at target with MS_REMOUNT|MS_BIND; with
 * recursive, read-only also reaches every submount (mount_setattr). */
static int remount_bind(const char *root, const char *target, unsigned long flags, int recursive)
{
    char buf[32];
    const char *path;
    int fd, e;
    unsigned long keep;
    long r;
    /* Resolve again: the earlier fd names the covered mountpoint, not the
     * new mount on top of it. */
    e = mount_path(root, target, buf, &path, &fd);
    if (e < 0)
        return e;
    flags &= HS_BIND_REMOUNT_FLAGS;
    keep = kept_flags(path, flags, &e);
    if (e) {
        hs_close(fd);
        return -e;
    }
    r = RAW(SYS_mount, NULL, path, NULL, MS_REMOUNT | MS_BIND | flags | keep, NULL);
    if (r == 0 && recursive && (flags & MS_RDONLY)) {
        struct hs_mount_attr attr = { .attr_set = MOUNT_ATTR_RDONLY };
        r = RAW(SYS_mount_setattr, AT_FDCWD, path, AT_RECURSIVE, &attr, sizeof(attr));
    }
    hs_close(fd);
    return (int)r;
}

static int op_mount(const char *root, const struct hearth_op *op)
{
    char tbuf[32], sbuf[32];
    const char *target, *source = op->source;
    int tfd = -1, sfd = -1, e;
    unsigned long flags = op->flags;
    int bind = (flags & MS_BIND) && !(flags & MS_REMOUNT);
    long r;

    e = mount_path(root, op->target, tbuf, &target, &tfd);
    if (e < 0)
        return e;
    if (bind && source != NULL) {
        e = mount_path(root, op->source, sbuf, &source, &sfd);
        if (e < 0) {
            hs_close(tfd);
            return e;
        }
    }
    r = RAW(SYS_mount, source, target, op->fstype,
            bind ? (flags & (MS_BIND | MS_REC)) : flags, op->data);
    hs_close(tfd);
    hs_close(sfd);
    if (r < 0)
        return (int)r;
    if (bind && (flags & HS_BIND_REMOUNT_FLAGS))
        return remount_bind(root, op->target, flags, (flags & MS_REC) != 0);
    return 0;
}

static int op_mkdir(const char *root, const struct hearth_op *op)
{
    char buf[PATH_MAX];
    const char *name;
    int dfd = open_parent(root, op->target, buf, &name);
    long r;
    if (dfd < 0)
        return dfd;
    r = RAW(SYS_mkdirat, dfd, name, op->mode);
    hs_close(dfd);
    return r == -EEXIST ? 0 : (int)r;
}

static int op_mknod(const char *root, const struct hearth_op *op)
{
    char buf[PATH_MAX];
    const char *name;
    int dfd;
    long r;
    /* The kernel's dev_t is 32 bits, encoded as glibc's makedev does for
     * every number that fits. */
    if (op->dev > UINT32_MAX)
        return -EINVAL;
    dfd = open_parent(root, op->target, buf, &name);
    if (dfd < 0)
        return dfd;
    r = RAW(SYS_mknodat, dfd, name, op->mode, (unsigned int)op->dev);
    hs_close(dfd);
    return r == -EEXIST ? 0 : (int)r;
}

static int op_symlink(const char *root, const struct hearth_op *op)
{
    char buf[PATH_MAX];
    const char *name;
    int dfd;
    long r;
    if (op->source == NULL)
        return -EINVAL;
    dfd = open_parent(root, op->target, buf, &name);
    if (dfd < 0)
        return dfd;
    r = RAW(SYS_symlinkat, op->source, dfd, name);
    hs_close(dfd);
    return r == -EEXIST ? 0 : (int)r;
}

/* pivot_root(".", ".") stacks the old root on top of the new one; the
 * lazy unmount of "." then drops it, so no host path stays reachable. */
static int op_pivot(const struct hearth_op *op)
{
    long r;
    if ((r = RAW(SYS_chdir, op->target)) < 0)
        return (int)r;
    if ((r = RAW(SYS_pivot_root, ".", ".")) < 0)
        return (int)r;
    if ((r = RAW(SYS_umount2, ".", MNT_DETACH)) < 0)
        return (int)r;
    return (int)RAW(SYS_chdir, "/");
}

static int op_mask(const char *root, const struct hearth_op *op)
{
    char buf[32];
    const char *path;
    struct stat st;
    int fd, e;
    long r;
    e = mount_path(root, op->target, buf, &path, &fd);
    if (e < 0)
        return e == -ENOENT ? 0 : e;
    r = RAW(SYS_newfstatat, AT_FDCWD, path, &st, 0);
    if (r == 0) {
        if (S_ISDIR(st.st_mode))
            r = RAW(SYS_mount, "tmpfs", path, "tmpfs",
                    MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
        else
            r = RAW(SYS_mount, op->source ? op->source : "/dev/null", path, NULL, MS_BIND, NULL);
    }
    hs_close(fd);
    return r == -ENOENT ? 0 : (int)r;
}

static int op_readonly(const char *root, const struct hearth_op *op)
{
    char buf[32];
    const char *path;
    int fd, e;
    long r;
    e = mount_path(root, op->target, buf, &path, &fd);
    if (e < 0)
        return e == -ENOENT ? 0 : e;
    r = RAW(SYS_mount, path, path, NULL, MS_BIND | MS_REC, NULL);
    hs_close(fd);
    if (r < 0)
        return r == -ENOENT ? 0 : (int)r;
    return remount_bind(root, op->target, MS_RDONLY | op->flags, 1);
}

/* A new regular file: whatever the image has at that name (a symlink, a
 * FIFO, a device) is removed first and never opened or followed. */
static int op_write_file(const char *root, const struct hearth_op *op)
{
    char buf[PATH_MAX];
    const char *name;
    int dfd, fd, e = 0;
    long r;
    dfd = open_parent(root, op->target, buf, &name);
    if (dfd < 0)
        return dfd;
    r = RAW(SYS_unlinkat, dfd, name, 0);
    if (r < 0 && r != -ENOENT) {
        hs_close(dfd);
        return (int)r;
    }
    fd = (int)RAW(SYS_openat, dfd, name,
                  O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_NOCTTY | O_CLOEXEC, op->mode);
    hs_close(dfd);
    if (fd < 0)
        return fd;
    if (op->data != NULL)
        e = hs_write_all(fd, op->data, hs_strlen(op->data));
    hs_close(fd);
    return e;
}

/* The target of the next PIVOT at or after op i: while one is pending,
 * paths inside it are resolved as if it were already /. */
static int op_idmap_bind(const struct hearth_spawn_plan *p, const char *root, const struct hearth_op *op)
{
    struct hs_mount_attr attr = { .attr_set = MOUNT_ATTR_IDMAP, .userns_fd = (uint64_t)p->userns_fd };
    char tbuf[32];
    const char *target;
    int tfd = -1, e;
    long fd, r;
    if (!p->use_userns || op->source == NULL)
        return -EINVAL;
    if (op->flags & MS_RDONLY)
        attr.attr_set |= MOUNT_ATTR_RDONLY;
    if (op->flags & MS_NOSUID)
        attr.attr_set |= MOUNT_ATTR_NOSUID;
    if (op->flags & MS_NODEV)
        attr.attr_set |= MOUNT_ATTR_NODEV;
    fd = RAW(SYS_open_tree, AT_FDCWD, op->source, OPEN_TREE_CLONE | O_CLOEXEC);
    if (fd < 0)
        return (int)fd;
    /* Only a detached mount may be idmapped: before move_mount. */
    r = RAW(SYS_mount_setattr, (int)fd, "", AT_EMPTY_PATH, &attr, sizeof(attr));
    if (r < 0) {
        hs_close((int)fd);
        return (int)r;
    }
    e = mount_path(root, op->target, tbuf, &target, &tfd);
    if (e < 0) {
        hs_close((int)fd);
        return e;
    }
    r = RAW(SYS_move_mount, (int)fd, "", AT_FDCWD, target, MOVE_MOUNT_F_EMPTY_PATH);
    hs_close(tfd);
    hs_close((int)fd);
    return (int)r;
}

static int op_attach(const char *root, const struct hearth_op *op)
{
    char tbuf[32];
    const char *target;
    int tfd = -1, e;
    long r;
    if (op->tree_fd < 0)
        return -EBADF;
    e = mount_path(root, op->target, tbuf, &target, &tfd);
    if (e < 0)
        return e;
    /* By the target's fd: a detached tree attached through a
     * /proc/self/fd path is refused (EINVAL). */
    if (tfd >= 0)
        r = RAW(SYS_move_mount, op->tree_fd, "", tfd, "", MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH);
    else
        r = RAW(SYS_move_mount, op->tree_fd, "", AT_FDCWD, target, MOVE_MOUNT_F_EMPTY_PATH);
    hs_close(tfd);
    return (int)r;
}

static const char *next_pivot(const struct hearth_spawn_plan *p, uint32_t i)
{
    for (; i < p->op_count; i++)
        if (p->ops[i].kind == HEARTH_OP_PIVOT)
            return p->ops[i].target;
    return NULL;
}

static void child_ops(const struct hs_child *c)
{
    const struct hearth_spawn_plan *p = c->plan;
    const char *root = next_pivot(p, 0);
    uint32_t i;
    for (i = 0; i < p->op_count; i++) {
        const struct hearth_op *op = &p->ops[i];
        int e;
        if (op->target == NULL)
            child_fail(c, HEARTH_STAGE_OP_BASE + (int)i, EINVAL);
        if (op->kind == HEARTH_OP_PIVOT)
            hs_mark(c, HEARTH_MARK_MOUNTS);
        switch (op->kind) {
        case HEARTH_OP_MOUNT:
            e = op_mount(root, op);
            break;
        case HEARTH_OP_MKDIR:
            e = op_mkdir(root, op);
            break;
        case HEARTH_OP_MKNOD:
            e = op_mknod(root, op);
            break;
        case HEARTH_OP_SYMLINK:
            e = op_symlink(root, op);
            break;
        case HEARTH_OP_PIVOT:
            e = op_pivot(op);
            if (e == 0)
                root = next_pivot(p, i + 1);
            break;
        case HEARTH_OP_MASK:
            e = op_mask(root, op);
            break;
        case HEARTH_OP_READONLY:
            e = op_readonly(root, op);
            break;
        case HEARTH_OP_WRITE_FILE:
            e = op_write_file(root, op);
            break;
        case HEARTH_OP_IDMAP_BIND:
            e = op_idmap_bind(p, root, op);
            break;
        case HEARTH_OP_ATTACH:
            e = op_attach(root, op);
            break;
        default:
            e = -EINVAL;
            break;
        }
        if (e == -ENOENT && op->optional)
            e = 0;
        if (e < 0)
            child_fail(c, HEARTH_STAGE_OP_BASE + (int)i, -e);
    }
}

static int child_loopback(void)
{
    struct ifreq ifr;
    int s, e = 0;
    size_t i;
    for (i = 0; i < sizeof(ifr); i++)
        ((char *)&ifr)[i] = 0;
    ifr.ifr_name[0] = 'l';
    ifr.ifr_name[1] = 'o';
    s = (int)RAW(SYS_socket, AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0)
        return s;
    if ((e = (int)RAW(SYS_ioctl, s, SIOCGIFFLAGS, &ifr)) == 0) {
        ifr.ifr_flags |= IFF_UP;
        e = (int)RAW(SYS_ioctl, s, SIOCSIFFLAGS, &ifr);
    }
    hs_close(s);
    return e;
}

/* Renumber the plan's fds and close everything else. Sources are first
 * dup'ed above every target so that no dup3 clobbers a source not yet
 * placed (e.g. a swap 3<->4). The error pipe ends just above the highest
 * target, still close-on-exec. Returns 0 or -errno. */
static int child_fds(struct hs_child *c)
{
    const struct hearth_spawn_plan *p = c->plan;
    int tmp[HEARTH_SPAWN_MAX_FDS];
    int maxt = -1, ep, lo;
    uint32_t i;
    long r;

    for (i = 0; i < p->fd_count; i++)
        if (p->fds[i].target > maxt)
            maxt = p->fds[i].target;

    ep = (int)RAW(SYS_fcntl, c->err_fd, F_DUPFD_CLOEXEC, maxt + 1);
    if (ep < 0)
        return ep;
    c->err_fd = ep;
    for (i = 0; i < p->fd_count; i++) {
        tmp[i] = (int)RAW(SYS_fcntl, p->fds[i].source, F_DUPFD_CLOEXEC, maxt + 1);
        if (tmp[i] < 0)
            return tmp[i];
    }
    for (i = 0; i < p->fd_count; i++) {
        /* dup3 without O_CLOEXEC: the target survives execve. (dup3 does
         * not sleep interruptibly; EBUSY needs a second thread.) */
        if ((r = RAW(SYS_dup3, tmp[i], p->fds[i].target, 0)) < 0)
            return (int)r;
    }
    if (ep != maxt + 1) {
        if ((r = RAW(SYS_dup3, ep, maxt + 1, O_CLOEXEC)) < 0)
            return (int)r;
        ep = maxt + 1;
        c->err_fd = ep;
    }
    /* Close the gaps between targets, then everything above the pipe. */
    lo = 0;
    for (;;) {
        int next = -1;
        for (i = 0; i < p->fd_count; i++) {
            int t = p->fds[i].target;
            if (t >= lo && (next < 0 || t < next))
                next = t;
        }
        if (next < 0)
            break;
        if (next > lo && (r = RAW(SYS_close_range, (unsigned)lo, (unsigned)next - 1, 0)) < 0)
            return (int)r;
        lo = next + 1;
    }
    if ((r = RAW(SYS_close_range, (unsigned)ep + 1, ~0U, 0)) < 0)
        return (int)r;
    return 0;
}

static void child_caps(const struct hs_child *c)
{
    const struct hearth_spawn_plan *p = c->plan;
    struct __user_cap_header_struct hdr = { .version = _LINUX_CAPABILITY_VERSION_3, .pid = 0 };
    struct __user_cap_data_struct data[2];
    long r;
    int cap;

    /* Every capability the kernel knows and the plan does not allow goes.
     * The loop ends at the kernel's own limit (EINVAL) rather than at
     * plan->last_cap, so a stale last_cap cannot leave a newer cap in. */
    for (cap = 0; cap < 64; cap++) {
        if (p->cap_bounding & (1ULL << cap))
            continue;
        r = RAW(SYS_prctl, PR_CAPBSET_DROP, cap, 0, 0, 0);
        if (r == -EINVAL)
            break;
        if (r < 0)
            child_fail(c, HEARTH_STAGE_CAPBSET, (int)-r);
    }

    /* Changing uid away from 0 clears the permitted set unless KEEPCAPS is
     * on; capset below then sets exactly the plan's sets. */
    if (p->uid != 0 && (r = RAW(SYS_prctl, PR_SET_KEEPCAPS, 1, 0, 0, 0)) < 0)
        child_fail(c, HEARTH_STAGE_SETUID, (int)-r);
    /* Raw syscalls: glibc's wrappers would signal the parent's threads. */
    if ((r = RAW(SYS_setgroups, (size_t)p->group_count, p->groups)) < 0)
        child_fail(c, HEARTH_STAGE_SETGROUPS, (int)-r);
    if ((r = RAW(SYS_setresgid, p->gid, p->gid, p->gid)) < 0)
        child_fail(c, HEARTH_STAGE_SETGID, (int)-r);
    if ((r = RAW(SYS_setresuid, p->uid, p->uid, p->uid)) < 0)
        child_fail(c, HEARTH_STAGE_SETUID, (int)-r);

    data[0].effective = (uint32_t)p->cap_effective;
    data[0].permitted = (uint32_t)p->cap_permitted;
    data[0].inheritable = (uint32_t)p->cap_inheritable;
    data[1].effective = (uint32_t)(p->cap_effective >> 32);
    data[1].permitted = (uint32_t)(p->cap_permitted >> 32);
    data[1].inheritable = (uint32_t)(p->cap_inheritable >> 32);
    if ((r = RAW(SYS_capset, &hdr, data)) < 0)
        child_fail(c, HEARTH_STAGE_CAPSET, (int)-r);
    if (p->uid != 0 && (r = RAW(SYS_prctl, PR_SET_KEEPCAPS, 0, 0, 0, 0)) < 0)
        child_fail(c, HEARTH_STAGE_CAPSET, (int)-r);
    if ((r = RAW(SYS_prctl, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)) < 0)
        child_fail(c, HEARTH_STAGE_AMBIENT, (int)-r);
}

static void __attribute__((noreturn)) child_main(struct hs_child *c)
{
    const struct hearth_spawn_plan *p = c->plan;
    struct hs_ksigaction dfl;
    uint64_t none = 0;
    long r;
    unsigned int old_umask;
    uint32_t i;
    int sig;

    hs_mark(c, HEARTH_MARK_CHILD);
    /* Not a single handler of the daemon may run here, and neither its
     * handlers nor its SIG_IGNs (SIGPIPE!) may leak through execve. The
     * parent blocked everything across clone3, so nothing has run yet. */
    for (i = 0; i < sizeof(dfl.words) / sizeof(dfl.words[0]); i++)
        dfl.words[i] = 0;
    for (sig = 1; sig <= 64; sig++)
        if (sig != SIGKILL && sig != SIGSTOP)
            (void)syscall(SYS_rt_sigaction, sig, &dfl, NULL, sizeof(uint64_t));
    if ((r = RAW(SYS_rt_sigprocmask, SIG_SETMASK, &none, NULL, sizeof(uint64_t))) < 0)
        child_fail(c, HEARTH_STAGE_SIGNALS, (int)-r);

    /* The parent's ends: holding them would hide the parent's death. */
    hs_close(c->err_peer);
    hs_close(c->sync_peer);

    if ((r = RAW(SYS_setsid)) < 0)
        child_fail(c, HEARTH_STAGE_SETSID, (int)-r);

    /* network egress: the daemon's namespace, before the mounts so that
     * sysfs (mounted below) shows its interfaces, as a cloned one would;
     * and before the user namespace, which could not join it (the host's
     * user namespace owns it). */
    if (p->use_netns && (r = RAW(SYS_setns, p->netns_fd, CLONE_NEWNET)) < 0)
        child_fail(c, HEARTH_STAGE_NETNS, (int)-r);

    /* Modes in the plan are exact (a 0666 /dev/null must not become 0644). */
    old_umask = (unsigned int)syscall(SYS_umask, 0);

    if ((p->clone_flags & CLONE_NEWNS) &&
        (r = RAW(SYS_mount, NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL)) < 0)
        child_fail(c, HEARTH_STAGE_MAKE_PRIVATE, (int)-r);
    /* The mounts run while the parent moves us into the v1 cgroups: the
     * first cgroup.procs write waits for an RCU grace period (milliseconds),
     * and nothing here needs the cgroup yet; only our own code runs. */
    child_ops(c);
    (void)syscall(SYS_umask, old_umask);

    /* cgroup v1: wait until the parent has put us into every hierarchy. */
    if (p->cgroup_procs_count > 0) {
        char b;
        while ((r = RAW(SYS_read, c->sync_fd, &b, 1)) == -EINTR)
            ;
        if (r != 1)
            child_fail(c, HEARTH_STAGE_SYNC, r < 0 ? (int)-r : EPIPE);
    }
    /* v1 (or no cgroup): unshared only now, once we sit in the replica's
     * cgroups, so the namespace is rooted there. v2 did it in clone3. */
    if ((p->clone_flags & CLONE_NEWCGROUP) && p->cgroup_fd < 0 &&
        (r = RAW(SYS_unshare, CLONE_NEWCGROUP)) < 0)
        child_fail(c, HEARTH_STAGE_UNSHARE_CGROUP, (int)-r);
    /* Hooks: the root is complete; tell the parent, wait for its word. */
    if (p->hooks != NULL) {
        char b = 'h';
        while ((r = RAW(SYS_sendto, c->sync_fd, &b, 1, MSG_NOSIGNAL, NULL, 0)) == -EINTR)
            ;
        if (r != 1)
            child_fail(c, HEARTH_STAGE_HOOKS, r < 0 ? (int)-r : EPIPE);
        while ((r = RAW(SYS_read, c->sync_fd, &b, 1)) == -EINTR)
            ;
        if (r != 1)
            child_fail(c, HEARTH_STAGE_HOOKS, r < 0 ? (int)-r : EPIPE);
    }
    if (c->sync_fd >= 0) {
        hs_close(c->sync_fd);
        c->sync_fd = -1;
    }
    hs_mark(c, HEARTH_MARK_PIVOT);

    if (p->hostname != NULL &&
        (r = RAW(SYS_sethostname, p->hostname, hs_strlen(p->hostname))) < 0)
        child_fail(c, HEARTH_STAGE_HOSTNAME, (int)-r);
    if (p->loopback_up && (r = child_loopback()) < 0)
        child_fail(c, HEARTH_STAGE_LOOPBACK, (int)-r);

    /* Into the user namespace: last of what needs the host's root (the
     * mounts, hostname and lo above act on namespaces the host's user
     * namespace owns), before the fd map closes userns_fd. From here on
     * uid 0 is the namespace's root, an unprivileged host uid. */
    if (p->use_userns && (r = RAW(SYS_setns, p->userns_fd, CLONE_NEWUSER)) < 0)
        child_fail(c, HEARTH_STAGE_USERNS, (int)-r);

    /* fds before rlimits: a lower RLIMIT_NOFILE must not make the
     * temporary high dups fail. */
    if ((r = child_fds(c)) < 0)
        child_fail(c, HEARTH_STAGE_FDS, (int)-r);
    for (i = 0; i < p->rlimit_count; i++) {
        uint64_t lim[2] = { p->rlimits[i].soft, p->rlimits[i].hard };
        if ((r = RAW(SYS_prlimit64, 0, p->rlimits[i].resource, lim, NULL)) < 0)
            child_fail(c, HEARTH_STAGE_RLIMIT, (int)-r);
    }

    child_caps(c);

    if (p->no_new_privs && (r = RAW(SYS_prctl, PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)) < 0)
        child_fail(c, HEARTH_STAGE_NO_NEW_PRIVS, (int)-r);
    /* Last: after it only chdir, execve and (on failure) write/exit_group
     * run, which every filter the daemon builds allows. */
    if (p->seccomp_filter != NULL && p->seccomp_filter_len > 0) {
        struct sock_fprog prog = {
            .len = (unsigned short)p->seccomp_filter_len,
            .filter = (struct sock_filter *)(uintptr_t)p->seccomp_filter,
        };
        if ((r = RAW(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog)) < 0)
            child_fail(c, HEARTH_STAGE_SECCOMP, (int)-r);
    }
    if ((r = RAW(SYS_chdir, p->cwd ? p->cwd : "/")) < 0)
        child_fail(c, HEARTH_STAGE_CHDIR, (int)-r);
    hs_mark(c, HEARTH_MARK_EXEC);
    r = RAW(SYS_execve, p->path, p->argv, p->envp);
    child_fail(c, HEARTH_STAGE_EXEC, (int)-r);
}

/* ------------------------------------------------------------------------ */
/* The parent.                                                               */

static int fail_result(struct hearth_spawn_result *res, int stage, int err)
{
    res->stage = stage;
    res->error = err;
    return -1;
}

/* Checks that would otherwise surface as odd failures in the child. */
static int validate(const struct hearth_spawn_plan *p, int *stage)
{
    uint32_t i;
    if (p->clone_flags & ~(uint64_t)HS_ALLOWED_NS) {
        *stage = HEARTH_STAGE_CLONE;
        return EINVAL;
    }
    if (p->cgroup_procs_count > 0 && (p->cgroup_procs_fds == NULL || p->cgroup_fd >= 0)) {
        *stage = HEARTH_STAGE_CGROUP_PROCS;
        return EINVAL;
    }
    /* Without a mount namespace the ops would change the host's mounts. */
    if ((p->op_count > 0 && (p->ops == NULL || !(p->clone_flags & CLONE_NEWNS)))) {
        *stage = HEARTH_STAGE_MAKE_PRIVATE;
        return EINVAL;
    }
    if (p->rlimit_count > 0 && p->rlimits == NULL) {
        *stage = HEARTH_STAGE_RLIMIT;
        return EINVAL;
    }
    if (p->fd_count > HEARTH_SPAWN_MAX_FDS || (p->fd_count > 0 && p->fds == NULL)) {
        *stage = HEARTH_STAGE_FDS;
        return p->fd_count > HEARTH_SPAWN_MAX_FDS ? E2BIG : EINVAL;
    }
    for (i = 0; i < p->fd_count; i++) {
        /* The error pipe is parked at max(target)+1; keep that in range. */
        if (p->fds[i].source < 0 || p->fds[i].target < 0 || p->fds[i].target >= INT_MAX - 1) {
            *stage = HEARTH_STAGE_FDS;
            return EINVAL;
        }
    }
    /* The namespace is joined with setns: never cloned, and its fd must be real. */
    if ((p->clone_flags & CLONE_NEWUSER) || (p->use_userns && p->userns_fd < 0)) {
        *stage = HEARTH_STAGE_USERNS;
        return EINVAL;
    }
    /* Joined, never cloned as well: either one namespace or the other. */
    if (p->use_netns && (p->netns_fd < 0 || (p->clone_flags & CLONE_NEWNET))) {
        *stage = HEARTH_STAGE_NETNS;
        return EINVAL;
    }
    if (p->group_count > 0 && p->groups == NULL) {
        *stage = HEARTH_STAGE_SETGROUPS;
        return EINVAL;
    }
    if (p->seccomp_filter_len > HEARTH_SECCOMP_MAX_INSNS ||
        (p->seccomp_filter_len > 0 && p->seccomp_filter == NULL)) {
        *stage = HEARTH_STAGE_SECCOMP;
        return EINVAL;
    }
    if (p->path == NULL || p->argv == NULL || p->envp == NULL) {
        *stage = HEARTH_STAGE_EXEC;
        return EINVAL;
    }
    return 0;
}

/* Reap the child through its pidfd. ECHILD means someone else already did
 * (e.g. a waitpid(-1) elsewhere in the process); it is gone either way. */
static void reap(int pidfd)
{
    siginfo_t info;
    while (waitid((idtype_t)P_PIDFD, (id_t)pidfd, &info, WEXITED) < 0 && errno == EINTR)
        ;
}

static void kill_and_reap(int pidfd)
{
    (void)syscall(SYS_pidfd_send_signal, pidfd, SIGKILL, NULL, 0);
    reap(pidfd);
}

/* Parent: waits for the child to reach its hook point, runs the hooks,
 * releases it. 0, or the failed stage with *err set. */
static int run_hooks(const struct hearth_spawn_plan *plan, int sock, pid_t pid, int *err)
{
    char b;
    ssize_t n;
    int32_t r;
    while ((n = read(sock, &b, 1)) < 0 && errno == EINTR)
        ;
    if (n != 1) {
        /* The child died before its root was complete; its report says why. */
        *err = n < 0 ? errno : EPIPE;
        return HEARTH_STAGE_HOOKS;
    }
    if ((r = plan->hooks((int32_t)pid, plan->hooks_ctx)) != 0) {
        *err = r;
        return HEARTH_STAGE_HOOKS;
    }
    while ((n = send(sock, "x", 1, MSG_NOSIGNAL)) < 0 && errno == EINTR)
        ;
    if (n != 1) {
        *err = n < 0 ? errno : EIO;
        return HEARTH_STAGE_HOOKS;
    }
    return 0;
}

int hearth_spawn(const struct hearth_spawn_plan *plan, struct hearth_spawn_result *result)
{
    int errp[2] = { -1, -1 }, syncp[2] = { -1, -1 };
    int pidfd = -1, stage = 0, err, saved_errno = errno;
    struct hs_clone_args args;
    uint64_t all = ~0ULL, oldmask = 0;
    long pid;
    int32_t msg[2];
    size_t got = 0;
    uint32_t i;
    uint64_t *marks;

    result->pid = 0;
    result->pidfd = -1;
    result->stage = 0;
    result->error = 0;
    for (i = 0; i < HEARTH_MARK_COUNT; i++)
        result->marks[i] = 0;

    if ((err = validate(plan, &stage)) != 0)
        return fail_result(result, stage, err);

    if (pipe2(errp, O_CLOEXEC) < 0)
        return fail_result(result, HEARTH_STAGE_CLONE, errno);
    /* A socket rather than a pipe: send(MSG_NOSIGNAL) cannot raise SIGPIPE
     * in the daemon if the child has died meanwhile. */
    if ((plan->cgroup_procs_count > 0 || plan->hooks != NULL) &&
        socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, syncp) < 0) {
        err = errno;
        close(errp[0]);
        close(errp[1]);
        return fail_result(result, HEARTH_STAGE_SYNC, err);
    }

    for (i = 0; i < sizeof(args); i++)
        ((char *)&args)[i] = 0;
    /* With CLONE_INTO_CGROUP the kernel roots a new cgroup namespace at the
     * target cgroup (cgroup_post_fork). Without it (v1, or no cgroup) the
     * namespace would be rooted at the daemon's cgroup, so the child
     * unshares it itself once it has been moved. */
    args.flags = CLONE_PIDFD | (plan->clone_flags & ~(uint64_t)CLONE_NEWCGROUP);
    args.pidfd = (uint64_t)(uintptr_t)&pidfd;
    args.exit_signal = SIGCHLD;
    if (plan->cgroup_fd >= 0) {
        args.flags |= CLONE_INTO_CGROUP | (plan->clone_flags & CLONE_NEWCGROUP);
        args.cgroup = (uint64_t)plan->cgroup_fd;
    }

    /* The child's timestamps come back through a shared page (the child
     * is a fork, not a thread); without one, the marks simply stay 0. */
    marks = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (marks == MAP_FAILED)
        marks = NULL;
    if (marks != NULL)
        marks[HEARTH_MARK_CLONE] = hs_now();

    /* No signal handler of the daemon may run in the child before it has
     * reset them; the child inherits this mask and clears it. */
    (void)syscall(SYS_rt_sigprocmask, SIG_SETMASK, &all, &oldmask, sizeof(uint64_t));
    pid = syscall(SYS_clone3, &args, sizeof(args));
    if (pid == 0) {
        struct hs_child c = {
            .plan = plan,
            .err_fd = errp[1],
            .err_peer = errp[0],
            .sync_fd = syncp[1],
            .sync_peer = syncp[0],
            .marks = marks,
        };
        child_main(&c);
    }
    err = errno;
    (void)syscall(SYS_rt_sigprocmask, SIG_SETMASK, &oldmask, NULL, sizeof(uint64_t));

    close(errp[1]);
    if (syncp[1] >= 0)
        close(syncp[1]);
    if (pid < 0) {
        if (marks != NULL)
            munmap(marks, 4096);
        close(errp[0]);
        if (syncp[0] >= 0)
            close(syncp[0]);
        errno = saved_errno;
        return fail_result(result, HEARTH_STAGE_CLONE, err);
    }
    result->pid = (pid_t)pid;
    err = 0;

    /* cgroup v1: one hierarchy at a time, then release the child; then
     * the hooks, while the child waits at its root. */
    if (syncp[0] >= 0) {
        char num[16];
        size_t len = hs_utoa(num, (unsigned int)pid);
        stage = 0;
        for (i = 0; i < plan->cgroup_procs_count; i++) {
            ssize_t n;
            /* cgroup.procs takes one pid per write(2). */
            while ((n = write(plan->cgroup_procs_fds[i], num, len)) < 0 && errno == EINTR)
                ;
            if (n != (ssize_t)len) {
                stage = HEARTH_STAGE_CGROUP_PROCS;
                err = n < 0 ? errno : EIO;
                break;
            }
        }
        if (stage == 0 && plan->cgroup_procs_count > 0) {
            ssize_t n;
            while ((n = send(syncp[0], "x", 1, MSG_NOSIGNAL)) < 0 && errno == EINTR)
                ;
            if (n != 1) {
                stage = HEARTH_STAGE_SYNC;
                err = n < 0 ? errno : EIO;
            }
        }
        if (stage == 0 && plan->hooks != NULL)
            stage = run_hooks(plan, syncp[0], (pid_t)pid, &err);
        if (stage != 0) {
            if (marks != NULL)
                munmap(marks, 4096);
            /* Killed before its socket closes: a child still waiting must
             * not wake to EOF and report that instead of our reason. */
            kill_and_reap(pidfd);
            close(pidfd);
            close(syncp[0]);
            /* The child runs its mounts meanwhile: if one of them failed, it
             * has exited (hence ESRCH or EPIPE here) and its report, the
             * real reason, is waiting on the pipe. */
            while (got < sizeof(msg)) {
                ssize_t n = read(errp[0], (char *)msg + got, sizeof(msg) - got);
                if (n < 0 && errno == EINTR)
                    continue;
                if (n <= 0)
                    break;
                got += (size_t)n;
            }
            if (got == sizeof(msg)) {
                stage = msg[0];
                err = msg[1];
            }
            close(errp[0]);
            errno = saved_errno;
            return fail_result(result, stage, err);
        }
        close(syncp[0]);
    }

    /* EOF with nothing read: execve succeeded and closed the pipe. */
    while (got < sizeof(msg)) {
        ssize_t n = read(errp[0], (char *)msg + got, sizeof(msg) - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            err = errno;
            break;
        }
        if (n == 0)
            break;
        got += (size_t)n;
    }
    close(errp[0]);
    if (marks != NULL) {
        marks[HEARTH_MARK_EXECED] = hs_now();
        for (i = 0; i < HEARTH_MARK_COUNT; i++)
            result->marks[i] = marks[i];
        munmap(marks, 4096);
    }
    errno = saved_errno;

    if (got == 0 && err == 0) {
        result->pidfd = pidfd;
        return 0;
    }
    if (got == sizeof(msg)) {
        stage = msg[0];
        err = msg[1];
        reap(pidfd);
    } else {
        /* A torn report (or a read error): the child's state is unknown. */
        stage = HEARTH_STAGE_SYNC;
        err = err ? err : EPROTO;
        kill_and_reap(pidfd);
    }
    close(pidfd);
    return fail_result(result, stage, err);
}


/* "0 <base> <count>\n" into /proc/<pid>/<file>. */
static int write_id_map(long pid, const char *file, uint32_t base, uint32_t count)
{
    char path[64], line[48];
    size_t n = 0, i;
    const char *pre = "/proc/";
    int fd, e = 0;
    for (i = 0; pre[i]; i++)
        path[n++] = pre[i];
    n += hs_utoa(path + n, (unsigned int)pid);
    path[n++] = '/';
    for (i = 0; file[i]; i++)
        path[n++] = file[i];
    path[n] = 0;
    n = 0;
    line[n++] = '0';
    line[n++] = ' ';
    n += hs_utoa(line + n, base);
    line[n++] = ' ';
    n += hs_utoa(line + n, count);
    line[n++] = '\n';
    fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return errno;
    if (write(fd, line, n) != (ssize_t)n)
        e = errno ? errno : EIO;
    close(fd);
    return e;
}

int hearth_userns_open(uint32_t uid_base, uint32_t gid_base, uint32_t count, int32_t *error)
{
    struct hs_clone_args args;
    uint64_t all = ~0ULL, oldmask = 0;
    int hold[2] = { -1, -1 }, pidfd = -1, nsfd = -1, e = 0, saved_errno = errno;
    char path[48];
    size_t n = 0, i;
    long pid;
    const char *pre = "/proc/", *post = "/ns/user";

    if (count == 0 || (uint64_t)uid_base + count > 0xFFFFFFFFULL || (uint64_t)gid_base + count > 0xFFFFFFFFULL) {
        *error = EINVAL;
        return -1;
    }
    if (pipe2(hold, O_CLOEXEC) < 0) {
        *error = errno;
        return -1;
    }
    for (i = 0; i < sizeof(args); i++)
        ((char *)&args)[i] = 0;
    args.flags = CLONE_NEWUSER | CLONE_PIDFD;
    args.pidfd = (uint64_t)(uintptr_t)&pidfd;
    args.exit_signal = SIGCHLD;
    (void)syscall(SYS_rt_sigprocmask, SIG_SETMASK, &all, &oldmask, sizeof(uint64_t));
    pid = syscall(SYS_clone3, &args, sizeof(args));
    if (pid == 0) {
        /* Holds the namespace until the parent has its fd: EOF on the pipe. */
        char b;
        (void)syscall(SYS_close, hold[1]);
        while (syscall(SYS_read, hold[0], &b, 1) > 0)
            ;
        for (;;)
            syscall(SYS_exit_group, 0);
    }
    e = errno;
    (void)syscall(SYS_rt_sigprocmask, SIG_SETMASK, &oldmask, NULL, sizeof(uint64_t));
    close(hold[0]);
    if (pid < 0) {
        close(hold[1]);
        *error = e;
        errno = saved_errno;
        return -1;
    }
    /* setgroups stays "allow": the maps are written by the host's root. */
    e = write_id_map(pid, "uid_map", uid_base, count);
    if (e == 0)
        e = write_id_map(pid, "gid_map", gid_base, count);
    if (e == 0) {
        for (i = 0; pre[i]; i++)
            path[n++] = pre[i];
        n += hs_utoa(path + n, (unsigned int)pid);
        for (i = 0; post[i]; i++)
            path[n++] = post[i];
        path[n] = 0;
        nsfd = open(path, O_RDONLY | O_CLOEXEC);
        if (nsfd < 0)
            e = errno;
    }
    close(hold[1]);
    reap(pidfd);
    close(pidfd);
    errno = saved_errno;
    if (e != 0) {
        *error = e;
        return -1;
    }
    return nsfd;
}
