#define _GNU_SOURCE
#include "hearth_sys.h"

#include <errno.h>
#include <pthread.h>
#include <fcntl.h>
#include <sched.h>
#include <spawn.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <linux/openat2.h>

int hearth_epoll_create(void) { return epoll_create1(EPOLL_CLOEXEC); }

int hearth_epoll_add(int epfd, int fd) {
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.fd = fd};
    return epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
}

int hearth_epoll_del(int epfd, int fd) { return epoll_ctl(epfd, EPOLL_CTL_DEL, fd, NULL); }

int hearth_epoll_wait(int epfd, int32_t *fds, uint32_t *events, int max, int timeout_ms) {
    struct epoll_event evs[64];
    if (max > 64) max = 64;
    int n = epoll_wait(epfd, evs, max, timeout_ms);
    for (int i = 0; i < n; i++) {
        fds[i] = evs[i].data.fd;
        events[i] = evs[i].events;
    }
    return n;
}

int hearth_pipe2(int32_t fds[2], int flags) { return pipe2(fds, flags); }

int hearth_eventfd(void) { return eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK); }

#include <malloc.h>

int hearth_malloc_arena_max(int n) { return mallopt(M_ARENA_MAX, n); }

int hearth_malloc_trim(void) { return malloc_trim(0); }

/* ------------------------------------------------------------------------ */
/* Raw-syscall shims Swift cannot call directly (variadic syscall()).      */

int hearth_pidfd_send_signal(int pidfd, int sig)
{
    return (int)syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0);
}

int hearth_pidfd_wait(int pidfd, int nohang, int *code, int *status)
{
    siginfo_t info;
    int r;
    info.si_pid = 0;
    info.si_code = 0;
    info.si_status = 0;
    do {
        r = waitid((idtype_t)P_PIDFD, (id_t)pidfd, &info, WEXITED | (nohang ? WNOHANG : 0));
    } while (r < 0 && errno == EINTR && !nohang);
    if (r < 0)
        return -1;
    if (nohang && info.si_pid == 0)
        return 1;
    if (code)
        *code = info.si_code;
    if (status)
        *status = info.si_status;
    return 0;
}

int hearth_openat2(int dirfd, const char *path, int flags, int mode, uint64_t resolve)
{
    struct open_how how = {
        .flags = (uint64_t)(unsigned int)flags,
        .mode = (uint64_t)(unsigned int)mode,
        .resolve = resolve,
    };
    int r;
    do {
        r = (int)syscall(SYS_openat2, dirfd, path, &how, sizeof(how));
    } while (r < 0 && errno == EINTR);
    return r;
}

int hearth_memfd_create(const char *name, unsigned int flags)
{
    return (int)syscall(SYS_memfd_create, name, flags);
}

int hearth_memfd_capped(const char *name, int64_t cap)
{
    int fd = (int)syscall(SYS_memfd_create, name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0)
        return -1;
    if (ftruncate(fd, (off_t)cap) != 0 || fcntl(fd, F_ADD_SEALS, F_SEAL_GROW | F_SEAL_SHRINK) != 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

int hearth_pidfd_open(int pid)
{
    return (int)syscall(SYS_pidfd_open, pid, 0);
}

/* posix_spawn with a clean start: stdin from stdin_fd (/dev/null when
 * < 0), stdout and stderr on out_fd, keep_fd (when >= 0) as fd 3, every
 * other fd closed, in dir (NULL: the caller's), with an empty signal mask
 * and every signal at its default (a daemon thread may block signals, or
 * ignore some: the program inherits neither). own_session: a session of
 * its own; else a process group of its own. */
static int spawn_clean(const char *path, char *const argv[], char *const envp[], const char *dir,
                       int stdin_fd, int out_fd, int keep_fd, int own_session, int32_t *pid)
{
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t attr;
    sigset_t none, all;
    pid_t child = 0;
    short flags = POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF;
    int rc;

    if ((rc = posix_spawn_file_actions_init(&fa)) != 0)
        return rc;
    if ((rc = posix_spawnattr_init(&attr)) != 0) {
        posix_spawn_file_actions_destroy(&fa);
        return rc;
    }
    if (stdin_fd >= 0)
        rc = posix_spawn_file_actions_adddup2(&fa, stdin_fd, 0);
    else
        rc = posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    if (rc == 0) rc = posix_spawn_file_actions_adddup2(&fa, out_fd, 1);
    if (rc == 0) rc = posix_spawn_file_actions_adddup2(&fa, out_fd, 2);
    if (rc == 0 && keep_fd >= 0) rc = posix_spawn_file_actions_adddup2(&fa, keep_fd, 3);
    /* The daemon's fds that lack close-on-exec stay out of the program. */
    if (rc == 0) rc = posix_spawn_file_actions_addclosefrom_np(&fa, keep_fd >= 0 ? 4 : 3);
    if (rc == 0 && dir != NULL) rc = posix_spawn_file_actions_addchdir_np(&fa, dir);
    sigemptyset(&none);
    sigfillset(&all);
    if (rc == 0) rc = posix_spawnattr_setsigmask(&attr, &none);
    if (rc == 0) rc = posix_spawnattr_setsigdefault(&attr, &all);
    if (own_session) {
        flags |= POSIX_SPAWN_SETSID;
    } else {
        flags |= POSIX_SPAWN_SETPGROUP;
        if (rc == 0) rc = posix_spawnattr_setpgroup(&attr, 0);
    }
    if (rc == 0) rc = posix_spawnattr_setflags(&attr, flags);
    if (rc == 0) rc = posix_spawn(&child, path, &fa, &attr, argv, envp);
    posix_spawnattr_destroy(&attr);
    posix_spawn_file_actions_destroy(&fa);
    if (rc == 0) *pid = child;
    return rc;
}

int hearth_spawn_host(const char *path, char *const argv[], char *const envp[], const char *dir,
                      int stdin_fd, int out_fd, int32_t *pid)
{
    /* Its own process group, so a timeout kills what it started too. */
    return spawn_clean(path, argv, envp, dir, stdin_fd, out_fd, -1, 0, pid);
}

/* linux/mount.h's struct mount_attr and flags, spelled out (older headers). */
struct hearth_mount_attr {
    uint64_t attr_set, attr_clr, propagation, userns_fd;
};

int hearth_detached_tree(int fd, int read_only)
{
    /* OPEN_TREE_CLONE 1, OPEN_TREE_CLOEXEC = O_CLOEXEC; MOUNT_ATTR_RDONLY 1,
     * NOSUID 2, NODEV 4. */
    struct hearth_mount_attr attr = { .attr_set = 0x2 | 0x4 | (read_only ? 0x1 : 0) };
    int tree = (int)syscall(SYS_open_tree, fd, "", 1 | O_CLOEXEC | AT_EMPTY_PATH);
    if (tree < 0)
        return -1;
    if (syscall(SYS_mount_setattr, tree, "", AT_EMPTY_PATH, &attr, sizeof(attr)) < 0) {
        int e = errno;
        close(tree);
        errno = e;
        return -1;
    }
    return tree;
}

int hearth_spawn_keeper(const char *path, int listen_fd, int log_fd, int32_t *pid)
{
    char *argv[] = {(char *)"hearth-keeper", (char *)"--keeper", NULL};
    char *envp[] = {NULL};

    return spawn_clean(path, argv, envp, "/", -1, log_fd, listen_fd, 1, pid);
}

ssize_t hearth_send_fds(int sock, const void *buf, size_t len, const int32_t *fds, int nfds)
{
    union {
        char buf[CMSG_SPACE(16 * sizeof(int))];
        struct cmsghdr align;
    } control;
    struct iovec iov = {.iov_base = (void *)buf, .iov_len = len};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};

    if (nfds < 0 || nfds > 16) {
        errno = EINVAL;
        return -1;
    }
    if (nfds > 0) {
        struct cmsghdr *c;
        memset(&control, 0, sizeof(control));
        msg.msg_control = control.buf;
        msg.msg_controllen = CMSG_SPACE(nfds * sizeof(int));
        c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(nfds * sizeof(int));
        memcpy(CMSG_DATA(c), fds, nfds * sizeof(int));
    }
    return sendmsg(sock, &msg, MSG_NOSIGNAL);
}

ssize_t hearth_recv_fds(int sock, void *buf, size_t cap, int32_t *fds, int max_fds, int *nfds)
{
    union {
        char buf[CMSG_SPACE(16 * sizeof(int))];
        struct cmsghdr align;
    } control;
    struct iovec iov = {.iov_base = buf, .iov_len = cap};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf,
                         .msg_controllen = sizeof(control.buf)};
    struct cmsghdr *c;
    ssize_t n;
    int got = 0, cut;

    *nfds = 0;
    do {
        n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
    } while (n < 0 && errno == EINTR);
    if (n < 0)
        return -1;
    cut = (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) != 0;
    for (c = CMSG_FIRSTHDR(&msg); c != NULL; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
            continue;
        int count = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
        int *in = (int *)CMSG_DATA(c);
        for (int i = 0; i < count; i++) {
            if (got < max_fds && !cut)
                fds[got++] = in[i];
            else {
                close(in[i]);
                cut = 1;
            }
        }
    }
    if (cut) {
        for (int i = 0; i < got; i++)
            close(fds[i]);
        errno = EMSGSIZE;
        return -1;
    }
    *nfds = got;
    return n;
}

int hearth_reexec(const char *path, char *const argv[], char *const envp[]) {
    sigset_t all, old;
    sigemptyset(&all);
    if (pthread_sigmask(SIG_SETMASK, &all, &old) != 0) return EINVAL;
#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif
    if (syscall(SYS_close_range, 3U, ~0U, CLOSE_RANGE_CLOEXEC) != 0) {
        int err = errno;
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        return err;
    }
    execve(path, argv, envp);
    int err = errno;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return err;
}
