/*
 * A replica's network namespace for network `egress` (see hearth_netns.h).
 */
#define _GNU_SOURCE
#include "hearth_netns.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sched.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

struct netns_job {
    uint16_t port;
    int backlog;
    int netns_fd;
    int listen_fd;
    int stage;
    int err;
};

static int fail(struct netns_job *j, int stage, int err, int s)
{
    if (s >= 0)
        close(s);
    j->stage = stage;
    j->err = err;
    return -1;
}

/* Runs on its own thread: every call below acts in the new namespace. */
static int netns_setup(struct netns_job *j)
{
    struct ifreq ifr;
    struct sockaddr_in addr;
    int s, one = 1;

    if (unshare(CLONE_NEWNET) < 0)
        return fail(j, HEARTH_NETNS_UNSHARE, errno, -1);

    /* 127.0.0.1 exists only once lo is up. */
    memset(&ifr, 0, sizeof(ifr));
    strcpy(ifr.ifr_name, "lo");
    s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0)
        return fail(j, HEARTH_NETNS_LOOPBACK, errno, -1);
    if (ioctl(s, SIOCGIFFLAGS, &ifr) < 0)
        return fail(j, HEARTH_NETNS_LOOPBACK, errno, s);
    ifr.ifr_flags |= IFF_UP;
    if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0)
        return fail(j, HEARTH_NETNS_LOOPBACK, errno, s);
    close(s);

    s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0)
        return fail(j, HEARTH_NETNS_SOCKET, errno, -1);
    /* Only for a listener the daemon closes and a later one rebinds: the
     * namespace is new, nothing else is bound. No SO_REUSEPORT: nothing in
     * the replica can bind a second listener to the port. */
    (void)setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    memset(&addr, 0, sizeof(addr));
    addr.sin_family = AF_INET;
    addr.sin_port = htons(j->port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(s, (struct sockaddr *)&addr, sizeof(addr)) < 0)
        return fail(j, HEARTH_NETNS_BIND, errno, s);
    /* Listening before the replica's first process runs: its first connect
     * waits in the backlog even if the proxy has not accepted yet. */
    if (listen(s, j->backlog) < 0)
        return fail(j, HEARTH_NETNS_LISTEN, errno, s);

    j->netns_fd = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    if (j->netns_fd < 0)
        return fail(j, HEARTH_NETNS_OPEN, errno, s);
    j->listen_fd = s;
    return 0;
}

static void *netns_thread(void *arg)
{
    (void)netns_setup((struct netns_job *)arg);
    /* The thread exits: its namespace lives on through the two fds. */
    return NULL;
}

int hearth_egress_netns_open(uint16_t port, int32_t backlog, int32_t *netns_fd, int32_t *listen_fd,
                             int32_t *stage)
{
    struct netns_job job = { .port = port, .backlog = backlog, .netns_fd = -1, .listen_fd = -1 };
    pthread_attr_t attr;
    pthread_t t;
    int e;

    *netns_fd = -1;
    *listen_fd = -1;
    *stage = 0;
    if ((e = pthread_attr_init(&attr)) != 0) {
        *stage = HEARTH_NETNS_THREAD;
        return e;
    }
    /* A small stack: the thread makes a handful of syscalls. */
    (void)pthread_attr_setstacksize(&attr, 64 * 1024);
    e = pthread_create(&t, &attr, netns_thread, &job);
    pthread_attr_destroy(&attr);
    if (e == 0)
        e = pthread_join(t, NULL);
    if (e != 0) {
        *stage = HEARTH_NETNS_THREAD;
        return e;
    }
    if (job.stage != 0) {
        *stage = job.stage;
        return job.err;
    }
    *netns_fd = job.netns_fd;
    *listen_fd = job.listen_fd;
    return 0;
}
