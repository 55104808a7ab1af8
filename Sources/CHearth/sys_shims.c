#define _GNU_SOURCE
#include "hearth_sys.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/stat.h>
#include <stdio.h>
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
