/*
 * hearth-init --keeper: holds duplicates of running replicas' file
 * descriptors so that they outlive a crash of hearthd, and hands them back
 * to the restarted hearthd.
 *
 * fd 3 is a bound, listening AF_UNIX SOCK_SEQPACKET socket (hearthd made
 * it). One client at a time, uid 0 only; a new connection replaces the
 * current one. Every message is one datagram of at most 256 KiB; its first
 * byte is the operation:
 *
 *   P NAME \n RECORD   + 1..8 fds (the first a pidfd): store; replaces NAME
 *   D NAME             drop NAME (its fds closed)
 *   L                  reply R NAME \n RECORD + fds per record, then E<count>
 *   Q                  close everything, exit 0
 *
 * A record is dropped when its pidfd turns readable (the replica exited).
 * The keeper exits 0 when it has no records and no client.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <unistd.h>

#ifndef SYS_pidfd_send_signal
#define SYS_pidfd_send_signal 424
#endif
#ifndef SYS_close_range
#define SYS_close_range 436
#endif

int hearth_keeper_main(void);

#define LISTEN_FD 3
#define MAX_MSG (256 * 1024)
#define MAX_NAME 200
#define MAX_FDS 8
#define MAX_RECORDS 4096
/* The most fds one message can carry (the kernel's SCM_MAX_FD). Room for
 * all of them, so that a message with too many is counted and refused by
 * name rather than cut short by the kernel. */
#define RECV_FDS 253
/* A client that stops reading our replies is dropped after this long,
 * so that it cannot wedge the keeper against the next daemon. */
#define SEND_TIMEOUT_S 10

struct record {
    char name[MAX_NAME];
    size_t namelen;
    unsigned char *data;
    size_t len;
    int fds[MAX_FDS];
    int nfds;
};

/* Allocated at start, not static: every replica's PID 1 is this binary,
 * and its image should not grow by what only the keeper uses. */
static struct record *recs; /* in the order they were stored */
static int nrecs;
static int client = -1;
static int reserve = -1; /* spare fd, given up to refuse a connection at EMFILE */
static unsigned char *msgbuf;

static void say(const char *fmt, ...)
{
    char line[512];
    va_list ap;
    int n;

    n = snprintf(line, sizeof(line), "hearth-keeper: ");
    va_start(ap, fmt);
    n += vsnprintf(line + n, sizeof(line) - n - 1, fmt, ap);
    va_end(ap);
    if (n > (int)sizeof(line) - 2)
        n = sizeof(line) - 2;
    line[n++] = '\n';
    /* One write per line: the log may be shared with hearthd's. */
    if (write(2, line, n) < 0) {
        /* Nowhere else to say it. */
    }
}

/* A name for the log: control bytes as '?', so a line stays one line. */
static const char *shown(const char *name, size_t len)
{
    static char out[MAX_NAME + 1];
    size_t i;

    for (i = 0; i < len && i < MAX_NAME; i++) {
        unsigned char c = name[i];
        out[i] = c < 0x20 || c == 0x7f ? '?' : c;
    }
    out[i] = '\0';
    return out;
}

static void close_all(const int *fds, int n)
{
    for (int i = 0; i < n; i++)
        close(fds[i]);
}

static void drop(int i)
{
    close_all(recs[i].fds, recs[i].nfds);
    free(recs[i].data);
    memmove(&recs[i], &recs[i + 1], (nrecs - i - 1) * sizeof(recs[0]));
    nrecs--;
}

static int find(const char *name, size_t len)
{
    for (int i = 0; i < nrecs; i++)
        if (recs[i].namelen == len && memcmp(recs[i].name, name, len) == 0)
            return i;
    return -1;
}

/* NULL when the name is valid, else the rule it breaks. */
static const char *bad_name(const unsigned char *name, size_t len)
{
    if (len == 0)
        return "empty name";
    if (len > MAX_NAME)
        return "name longer than 200 bytes";
    if (memchr(name, '\0', len) || memchr(name, '/', len) ||
        memchr(name, '\n', len))
        return "name contains NUL, '/' or newline";
    return NULL;
}

/* Exits when there is no client and nothing to keep, unless a connection
 * is already waiting (a restarted daemon that beat the old one's EOF). */
static void exit_if_idle(void)
{
    struct pollfd p = { .fd = LISTEN_FD, .events = POLLIN };

    if (client >= 0 || nrecs > 0)
        return;
    if (poll(&p, 1, 0) > 0 && (p.revents & POLLIN))
        return;
    say("no client and no records: exiting");
    exit(0);
}

static void put(const unsigned char *msg, size_t n, int *fds, int nfds)
{
    const unsigned char *name = msg + 1, *nl;
    const char *rule = NULL;
    size_t namelen = 0;
    int old = -1;
    unsigned char *data = NULL;
    struct record *r;

    nl = memchr(name, '\n', n - 1);
    if (!nl) {
        rule = "no newline after the name";
        goto refuse;
    }
    namelen = nl - name;
    if ((rule = bad_name(name, namelen)))
        goto refuse;
    if (nfds == 0) {
        rule = "no fds";
        goto refuse;
    }
    if (nfds > MAX_FDS) {
        rule = "more than 8 fds";
        goto refuse;
    }
    /* Signal 0 only checks: EBADF/EINVAL mean the first fd is not a pidfd
     * (ESRCH, already exited, is fine: the next poll drops it). */
    if (syscall(SYS_pidfd_send_signal, fds[0], 0, NULL, 0) < 0 &&
        (errno == EBADF || errno == EINVAL)) {
        rule = "first fd is not a pidfd";
        goto refuse;
    }
    old = find((const char *)name, namelen);
    if (old < 0 && nrecs == MAX_RECORDS) {
        rule = "too many records (4096)";
        goto refuse;
    }
    data = malloc(n - namelen - 2 ? n - namelen - 2 : 1);
    if (!data) {
        rule = "out of memory";
        goto refuse;
    }
    /* A replaced record is stored anew: its old fds go, it moves last. */
    if (old >= 0)
        drop(old);
    r = &recs[nrecs++];
    memcpy(r->name, name, namelen);
    r->namelen = namelen;
    r->len = n - namelen - 2;
    memcpy(data, nl + 1, r->len);
    r->data = data;
    memcpy(r->fds, fds, nfds * sizeof(int));
    r->nfds = nfds;
    say("%s %s (%d fds, %zu bytes)", old >= 0 ? "replaced" : "stored",
        shown(r->name, namelen), nfds, r->len);
    return;

refuse:
    close_all(fds, nfds);
    if (nl && !bad_name(name, namelen))
        say("refused put of %s: %s", shown((const char *)name, namelen), rule);
    else
        say("refused put: %s", rule);
}

static int send_all(int fd, struct iovec *iov, int niov, const int *fds,
                    int nfds)
{
    union {
        struct cmsghdr h;
        char b[CMSG_SPACE(MAX_FDS * sizeof(int))];
    } cbuf;
    struct msghdr mh = { .msg_iov = iov, .msg_iovlen = niov };
    ssize_t r;

    if (nfds > 0) {
        struct cmsghdr *c;
        memset(&cbuf, 0, sizeof(cbuf));
        mh.msg_control = cbuf.b;
        mh.msg_controllen = CMSG_SPACE(nfds * sizeof(int));
        c = CMSG_FIRSTHDR(&mh);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(nfds * sizeof(int));
        memcpy(CMSG_DATA(c), fds, nfds * sizeof(int));
    }
    do
        r = sendmsg(fd, &mh, MSG_NOSIGNAL);
    while (r < 0 && errno == EINTR);
    return r < 0 ? -1 : 0;
}

/* The kernel duplicates the fds into the client; the keeper keeps its own. */
static int list(int fd)
{
    char end[16];
    struct iovec iov[4];
    int i;

    for (i = 0; i < nrecs; i++) {
        iov[0] = (struct iovec){ "R", 1 };
        iov[1] = (struct iovec){ recs[i].name, recs[i].namelen };
        iov[2] = (struct iovec){ "\n", 1 };
        iov[3] = (struct iovec){ recs[i].data, recs[i].len };
        if (send_all(fd, iov, 4, recs[i].fds, recs[i].nfds) < 0)
            goto fail;
    }
    iov[0] = (struct iovec){ end, snprintf(end, sizeof(end), "E%d", nrecs) };
    if (send_all(fd, iov, 1, NULL, 0) < 0)
        goto fail;
    say("listed %d records", nrecs);
    return 0;
fail:
    say("list: send: %s", strerror(errno));
    return -1;
}

/* Takes one message from fd and acts on it. 1: handled one, 0: none
 * waiting, -1: the client is gone (EOF, error, or a failed reply). */
static int serve(int fd)
{
    union {
        struct cmsghdr h;
        char b[CMSG_SPACE(RECV_FDS * sizeof(int))];
    } cbuf;
    struct iovec iov = { msgbuf, MAX_MSG };
    struct msghdr mh = {
        .msg_iov = &iov, .msg_iovlen = 1,
        .msg_control = cbuf.b, .msg_controllen = sizeof(cbuf.b),
    };
    struct cmsghdr *c;
    int fds[RECV_FDS], nfds = 0;
    ssize_t n;
    size_t namelen;

    do
        n = recvmsg(fd, &mh, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -1;

    for (c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
        size_t k;
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
            continue;
        k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t j = 0; j < k; j++) {
            int f;
            memcpy(&f, CMSG_DATA(c) + j * sizeof(int), sizeof(int));
            if (nfds < RECV_FDS)
                fds[nfds++] = f;
            else
                close(f);
        }
    }

    /* On a SEQPACKET socket 0 bytes is the peer's EOF. */
    if (n == 0) {
        close_all(fds, nfds);
        return -1;
    }
    if (mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) {
        close_all(fds, nfds);
        say("refused message: longer than 256 KiB or fds cut short");
        return 1;
    }
    if (msgbuf[0] == 'P') {
        put(msgbuf, n, fds, nfds);
        return 1;
    }
    /* Only a put hands fds over; any others are not ours to keep. */
    if (nfds > 0) {
        close_all(fds, nfds);
        say("closed %d fds sent with '%c'", nfds,
            msgbuf[0] >= 0x21 && msgbuf[0] < 0x7f ? msgbuf[0] : '?');
    }
    switch (msgbuf[0]) {
    case 'D':
        namelen = n - 1;
        if (bad_name(msgbuf + 1, namelen)) {
            say("refused drop: %s", bad_name(msgbuf + 1, namelen));
        } else {
            int i = find((const char *)msgbuf + 1, namelen);
            if (i >= 0) {
                say("dropped %s", shown(recs[i].name, recs[i].namelen));
                drop(i);
            }
        }
        return 1;
    case 'L':
        if (n != 1) {
            say("refused list: bytes after 'L'");
            return 1;
        }
        return list(fd) < 0 ? -1 : 1;
    case 'Q':
        if (n != 1) {
            say("refused quit: bytes after 'Q'");
            return 1;
        }
        say("quit: closing %d records", nrecs);
        while (nrecs > 0)
            drop(nrecs - 1);
        exit(0);
    default:
        say("ignored unknown operation 0x%02x", msgbuf[0]);
        return 1;
    }
}

static void accept_one(void)
{
    struct ucred uc;
    socklen_t len = sizeof(uc);
    struct timeval tv = { .tv_sec = SEND_TIMEOUT_S };
    int fd, buf = 2 * MAX_MSG, k;

    fd = accept4(LISTEN_FD, NULL, NULL, SOCK_CLOEXEC);
    if (fd < 0) {
        if (errno == EINTR || errno == EAGAIN || errno == ECONNABORTED)
            return;
        if ((errno == EMFILE || errno == ENFILE) && reserve >= 0) {
            /* Take the connection off the queue, or poll would report it
             * again at once, forever. */
            close(reserve);
            fd = accept4(LISTEN_FD, NULL, NULL, SOCK_CLOEXEC);
            if (fd >= 0)
                close(fd);
            reserve = open("/dev/null", O_RDONLY | O_CLOEXEC);
            say("refused connection: out of fds");
            return;
        }
        say("accept: %s", strerror(errno));
        sleep(1); /* whatever it is, do not spin on it */
        return;
    }
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &uc, &len) < 0 ||
        uc.uid != 0) {
        say("refused connection from pid %d uid %d: not root",
            (int)uc.pid, (int)uc.uid);
        close(fd);
        return;
    }
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    /* A reply is as long as the put it answers, up to 256 KiB: more than
     * the default send buffer. FORCE, as root, goes past wmem_max. */
    if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &buf, sizeof(buf)) < 0)
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &buf, sizeof(buf));
    if (client >= 0) {
        /* What the old client sent before it went (a last put from a
         * daemon that then crashed) still counts: take it first. */
        for (k = 0; k < 2 * MAX_RECORDS && serve(client) == 1; k++)
            ;
        close(client);
        say("client replaced by pid %d", (int)uc.pid);
    } else {
        say("client connected: pid %d", (int)uc.pid);
    }
    client = fd;
}

int hearth_keeper_main(void)
{
    struct pollfd *pfds;
    struct sigaction sa = { .sa_handler = SIG_IGN };
    struct rlimit rl;
    sigset_t none;
    int v, i;
    socklen_t len = sizeof(v);

    if (getsockopt(LISTEN_FD, SOL_SOCKET, SO_ACCEPTCONN, &v, &len) < 0 || !v) {
        say("fd 3 is not a listening socket");
        return 2;
    }
    len = sizeof(v);
    if (getsockopt(LISTEN_FD, SOL_SOCKET, SO_TYPE, &v, &len) < 0 ||
        v != SOCK_SEQPACKET) {
        say("fd 3 is not a SOCK_SEQPACKET socket");
        return 2;
    }

    /* Out of hearthd's session, and nothing from it lingers that would
     * take the keeper down with it: a parent-death signal, a blocked or
     * ignored SIGTERM. */
    setsid();
    prctl(PR_SET_NAME, "hearth-keeper", 0, 0, 0);
    prctl(PR_SET_PDEATHSIG, 0, 0, 0, 0);
    sigaction(SIGPIPE, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sa.sa_handler = SIG_DFL;
    sigaction(SIGTERM, &sa, NULL);
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);

    if (syscall(SYS_close_range, 4U, ~0U, 0U) < 0) {
        long max = sysconf(_SC_OPEN_MAX);
        for (int fd = 4; fd < (max > 0 ? max : 1024); fd++)
            close(fd);
    }
    fcntl(LISTEN_FD, F_SETFD, FD_CLOEXEC);
    /* Up to 4096 records of up to 8 fds: as many fds as we may have. */
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    /* A long-lived process should not pin hearthd's working directory. */
    if (chdir("/") < 0)
        say("chdir /: %s", strerror(errno));
    recs = calloc(MAX_RECORDS, sizeof(*recs));
    msgbuf = malloc(MAX_MSG);
    pfds = calloc(2 + MAX_RECORDS, sizeof(*pfds));
    if (!recs || !msgbuf || !pfds) {
        say("out of memory");
        return 1;
    }
    reserve = open("/dev/null", O_RDONLY | O_CLOEXEC);
    say("started: pid %d", (int)getpid());

    for (;;) {
        int n = 2 + nrecs, exited = 0;

        pfds[0] = (struct pollfd){ .fd = LISTEN_FD, .events = POLLIN };
        pfds[1] = (struct pollfd){ .fd = client, .events = POLLIN };
        for (i = 0; i < nrecs; i++)
            pfds[2 + i] = (struct pollfd){ .fd = recs[i].fds[0],
                                           .events = POLLIN };
        if (poll(pfds, n, -1) < 0) {
            if (errno == EINTR)
                continue;
            say("poll: %s", strerror(errno));
            return 1;
        }

        /* Backwards: dropping record i moves only those after it. */
        for (i = nrecs - 1; i >= 0; i--) {
            if (pfds[2 + i].revents) {
                say("%s exited: dropped",
                    shown(recs[i].name, recs[i].namelen));
                drop(i);
                exited = 1;
            }
        }
        if (exited)
            exit_if_idle();

        if (client >= 0 && pfds[1].revents && serve(client) < 0) {
            say("client gone");
            close(client);
            client = -1;
            exit_if_idle();
        }

        if (pfds[0].revents & (POLLERR | POLLNVAL)) {
            say("listening socket failed");
            return 1;
        }
        if (pfds[0].revents & POLLIN)
            accept_one();
    }
}
