/*
 * Daemon-side shims for calls the Swift Glibc module does not export
 * (epoll, pipe2). Not used by the spawn path's child.
 */
#ifndef HEARTH_SYS_H
#define HEARTH_SYS_H

#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

int hearth_epoll_create(void);
/* Watches fd for EPOLLIN|EPOLLRDHUP (level-triggered); data is the fd. */
int hearth_epoll_add(int epfd, int fd);
int hearth_epoll_del(int epfd, int fd);
/* Waits; fills fds[i]/events[i] for up to max ready fds; returns the count. */
int hearth_epoll_wait(int epfd, int32_t *fds, uint32_t *events, int max, int timeout_ms);
int hearth_pipe2(int32_t fds[2], int flags);
/* eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK): wakes an epoll wait (shutdown). */
int hearth_eventfd(void);
/* glibc's mallopt(M_ARENA_MAX, n) and malloc_trim(0): <malloc.h> is not in
 * the Glibc module. */
int hearth_malloc_arena_max(int n);
int hearth_malloc_trim(void);

/* Raw-syscall shims Swift cannot call directly (variadic syscall()). */
int hearth_pidfd_send_signal(int pidfd, int sig);
/* waitid(P_PIDFD, ...): returns 0 and fills status/code (CLD_EXITED: exit
 * status; CLD_KILLED/CLD_DUMPED: signal number), or -1 with errno. With
 * nohang, returns 1 when the child has not exited yet. */
int hearth_pidfd_wait(int pidfd, int nohang, int *code, int *status);
int hearth_openat2(int dirfd, const char *path, int flags, int mode, uint64_t resolve);
int hearth_memfd_create(const char *name, unsigned int flags);
/* A close-on-exec memfd of `cap` bytes (sparse: nothing is allocated until
 * written) that cannot grow or shrink: a writer past the end gets EPERM,
 * and the shared file offset says how much was written. -1 with errno. */
int hearth_memfd_capped(const char *name, int64_t cap);
/* pidfd_open(pid, 0): a pidfd (close-on-exec), or -1 with errno. */
int hearth_pidfd_open(int pid);
/* posix_spawn of a host program (HostCommand): fd 0 from stdin_fd (or
 * /dev/null when it is -1), fds 1 and 2 to out_fd, every other fd closed,
 * an empty signal mask and every signal at its default, in a process group
 * of its own, in dir (NULL: the caller's). 0 and *pid, or an errno. */
int hearth_spawn_host(const char *path, char *const argv[], char *const envp[], const char *dir,
                      int stdin_fd, int out_fd, int32_t *pid);
/* A detached copy of the mount at fd (open_tree(fd, "", OPEN_TREE_CLONE |
 * OPEN_TREE_CLOEXEC | AT_EMPTY_PATH), not recursive), with read-only (if
 * read_only), nosuid and nodev set on it (mount_setattr). Returns the
 * tree's fd or -1 with errno. A spawn attaches it (HEARTH_OP_ATTACH). */
int hearth_detached_tree(int fd, int read_only);

/* struct ucred (SO_PEERCRED), which <sys/socket.h> shows only with
 * _GNU_SOURCE; same layout, for getsockopt through SwiftNIO. */
struct hearth_ucred {
    int32_t pid;
    uint32_t uid;
    uint32_t gid;
};
#define HEARTH_SO_PEERCRED 17

/* The replica keeper (hearth-init --keeper): started with listen_fd as its
 * fd 3, /dev/null as 0, log_fd as 1 and 2, nothing else open, in a session
 * of its own (so a terminal's or a service's signals to hearthd's group do
 * not reach it). 0 and *pid, or an errno. */
int hearth_spawn_keeper(const char *path, int listen_fd, int log_fd, int32_t *pid);
/* One SEQPACKET message with up to 16 fds in SCM_RIGHTS. Bytes sent or -1
 * with errno (MSG_NOSIGNAL: a closed peer is EPIPE, not a signal). */
ssize_t hearth_send_fds(int sock, const void *buf, size_t len, const int32_t *fds, int nfds);
/* One message into buf (cap bytes) and up to max_fds fds (close-on-exec)
 * into fds, their count in *nfds. The length, 0 at EOF, or -1 with errno;
 * a message or fd list cut short is EMSGSIZE (fds received are closed). */
ssize_t hearth_recv_fds(int sock, void *buf, size_t cap, int32_t *fds, int max_fds, int *nfds);

/* Replaces the process with path (an upgrade): every fd but 0-2 is marked
 * close-on-exec first, so no replica pipe or pidfd leaks into the new
 * image (the keeper holds those), and the calling thread's signal mask is
 * emptied. Returns only on failure: the errno (the mask is restored; fds
 * stay open, only their close-on-exec flag changed). */
int hearth_reexec(const char *path, char *const argv[], char *const envp[]);

#ifdef __cplusplus
}
#endif

#endif
