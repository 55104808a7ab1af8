/*
 * The network namespace of a replica with network `egress`: made by the
 * daemon before the replica exists, with loopback up and the daemon's
 * proxy listener already bound inside it. The spawn path then joins it
 * (hearth_spawn_plan.use_netns) instead of cloning a fresh one.
 */
#ifndef HEARTH_NETNS_H
#define HEARTH_NETNS_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Steps of hearth_egress_netns_open, for error messages. */
enum hearth_netns_stage {
    HEARTH_NETNS_THREAD = 1,    /* pthread_create / join */
    HEARTH_NETNS_UNSHARE = 2,   /* unshare(CLONE_NEWNET) */
    HEARTH_NETNS_LOOPBACK = 3,  /* SIOCGIFFLAGS / SIOCSIFFLAGS on lo */
    HEARTH_NETNS_SOCKET = 4,    /* socket(AF_INET, SOCK_STREAM) */
    HEARTH_NETNS_BIND = 5,      /* bind 127.0.0.1:port */
    HEARTH_NETNS_LISTEN = 6,    /* listen */
    HEARTH_NETNS_OPEN = 7,      /* open /proc/thread-self/ns/net */
};

/*
 * A new network namespace with `lo` up and a TCP socket listening on
 * 127.0.0.1:port inside it. Made on a short-lived thread of its own
 * (unshare(CLONE_NEWNET) changes only the calling thread, which then
 * exits), so no other thread of the process ever changes namespace.
 * Returns 0 with *netns_fd (an fd of the namespace) and *listen_fd (the
 * listening socket), both close-on-exec; else an errno, with *stage set
 * to the step that failed and nothing left open. Any thread.
 */
int hearth_egress_netns_open(uint16_t port, int32_t backlog, int32_t *netns_fd, int32_t *listen_fd,
                             int32_t *stage);

#ifdef __cplusplus
}
#endif

#endif
