/*
 * Daemon-side bpf(2) shims for the cgroup v2 device filter: Swift cannot
 * call the variadic syscall(2), and union bpf_attr is easier to fill in C.
 * Not used by the spawn path's child.
 */
#ifndef HEARTH_BPF_H
#define HEARTH_BPF_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* BPF_PROG_LOAD of a BPF_PROG_TYPE_CGROUP_DEVICE program of `count`
 * struct bpf_insn (8 bytes each). Returns the program fd (close-on-exec),
 * or -1 with errno; on failure the load is retried with the verifier log
 * on, and the log lands in `log` (NUL-terminated; may be NULL). */
int hearth_bpf_load_device_filter(const uint8_t *insns, uint32_t count, char *log, uint32_t log_size);

/* BPF_PROG_ATTACH of prog_fd to the cgroup directory fd with
 * BPF_CGROUP_DEVICE and BPF_F_ALLOW_MULTI. 0, or -1 with errno. */
int hearth_bpf_attach_device_filter(int cgroup_fd, int prog_fd);

/* BPF_PROG_QUERY: how many BPF_CGROUP_DEVICE programs are attached to the
 * cgroup itself (not its parents). -1 with errno on failure. */
int hearth_bpf_count_device_filters(int cgroup_fd);

#ifdef __cplusplus
}
#endif

#endif
