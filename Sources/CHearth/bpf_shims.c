/* bpf(2) for the cgroup v2 device filter; see hearth_bpf.h. */
#define _GNU_SOURCE
#include "hearth_bpf.h"

#include <errno.h>
#include <linux/bpf.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static long sys_bpf(int cmd, union bpf_attr *attr)
{
    return syscall(SYS_bpf, cmd, attr, sizeof(*attr));
}

static int load(const uint8_t *insns, uint32_t count, char *log, uint32_t log_size)
{
    union bpf_attr attr;
    memset(&attr, 0, sizeof(attr));
    attr.prog_type = BPF_PROG_TYPE_CGROUP_DEVICE;
    attr.insns = (uint64_t)(uintptr_t)insns;
    attr.insn_cnt = count;
    /* No helpers are called, so the license does not matter to the kernel. */
    attr.license = (uint64_t)(uintptr_t)"Apache";
    if (log != NULL && log_size > 0) {
        attr.log_level = 1;
        attr.log_buf = (uint64_t)(uintptr_t)log;
        attr.log_size = log_size;
    }
    memcpy(attr.prog_name, "hearth_devices", sizeof("hearth_devices"));
    return (int)sys_bpf(BPF_PROG_LOAD, &attr);
}

int hearth_bpf_load_device_filter(const uint8_t *insns, uint32_t count, char *log, uint32_t log_size)
{
    int fd, err;
    if (log != NULL && log_size > 0)
        log[0] = 0;
    /* Without the log first: logging slows the verifier down. */
    fd = load(insns, count, NULL, 0);
    if (fd >= 0 || log == NULL || log_size == 0)
        return fd;
    err = errno;
    /* Again with the log, only to explain the failure; keep the first errno
     * unless the retry says more (ENOSPC: the log was too small). */
    fd = load(insns, count, log, log_size);
    if (fd >= 0) {
        /* Loaded on the second try after all (a transient failure). */
        return fd;
    }
    log[log_size - 1] = 0;
    errno = err;
    return -1;
}

int hearth_bpf_attach_device_filter(int cgroup_fd, int prog_fd)
{
    union bpf_attr attr;
    memset(&attr, 0, sizeof(attr));
    attr.target_fd = (uint32_t)cgroup_fd;
    attr.attach_bpf_fd = (uint32_t)prog_fd;
    attr.attach_type = BPF_CGROUP_DEVICE;
    attr.attach_flags = BPF_F_ALLOW_MULTI;
    return (int)sys_bpf(BPF_PROG_ATTACH, &attr);
}

int hearth_bpf_count_device_filters(int cgroup_fd)
{
    union bpf_attr attr;
    memset(&attr, 0, sizeof(attr));
    attr.query.target_fd = (uint32_t)cgroup_fd;
    attr.query.attach_type = BPF_CGROUP_DEVICE;
    /* prog_ids NULL: the kernel only reports the count. */
    if (sys_bpf(BPF_PROG_QUERY, &attr) != 0)
        return -1;
    return (int)attr.query.prog_cnt;
}
