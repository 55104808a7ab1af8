/// Hearth's default seccomp profile: Docker's (moby profiles/seccomp/
/// default.json) as it resolves for Docker's default capability set, with
/// io_uring denied as well. An allow-list: everything else fails with EPERM.
///
/// What it leaves out, on purpose: mount, umount, umount2, pivot_root,
/// unshare, setns, namespace flags on clone, the new mount API (fsopen,
/// fsconfig, fsmount, fspick, move_mount, open_tree, mount_setattr), bpf,
/// perf_event_open, keyctl/add_key/request_key, kexec_load/kexec_file_load,
/// init_module/finit_module/delete_module, reboot, swapon/swapoff,
/// userfaultfd, open_by_handle_at, acct, settimeofday/stime/clock_settime,
/// syslog, iopl/ioperm, lookup_dcookie, quotactl, nfsservctl, vm86,
/// uselib, ustat, sysfs, _sysctl, create_module, get_kernel_syms,
/// query_module, sethostname/setdomainname, fanotify_init, kcmp,
/// pidfd_getfd, process_madvise, mbind/set_mempolicy/get_mempolicy, vhangup,
/// io_uring_*.
///
/// Architectures: as Docker on amd64, x86_64 plus the x86 and x32 ABIs (so
/// 32-bit programs in an image still work); on arm64, aarch64 plus arm.
extension SeccompProfile {
    public static let `default` = SeccompProfile(
        defaultAction: .errno,
        defaultErrnoRet: 1,  // EPERM
        architectures: defaultArchitectures,
        syscalls: [
            Syscall(names: defaultAllowed, action: .allow),
            // socket() for every family but AF_VSOCK (40), as Docker.
            Syscall(names: ["socket"], action: .allow, args: [Arg(index: 0, value: 40, op: .notEqual)]),
            // personality(): only the harmless values Docker allows (Linux,
            // UNAME26, ADDR_NO_RANDOMIZE, both, and the 0xffffffff query);
            // one rule each, since a rule's conditions are ANDed.
        ] + [0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff].map { (persona: UInt64) in
            Syscall(names: ["personality"], action: .allow, args: [Arg(index: 0, value: persona, op: .equal)])
        } + [
            // clone() for threads and fork, but not with a CLONE_NEW* flag:
            // (flags & mask) == 0.
            Syscall(names: ["clone"], action: .allow,
                    args: [Arg(index: 0, value: cloneNamespaceFlags, valueTwo: 0, op: .maskedEqual)]),
            // clone3 passes its flags in memory, out of the filter's reach, so
            // it is refused — with ENOSYS, which makes glibc (≥ 2.34) fall
            // back to clone for pthread_create, fork and posix_spawn; EPERM
            // would make those fail.
            Syscall(names: ["clone3"], action: .errno, errnoRet: 38),  // ENOSYS
        ]
    )

    /// CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET.
    public static let cloneNamespaceFlags: UInt64 = 0x7E02_0000

    static var defaultArchitectures: [Architecture] {
        #if arch(x86_64)
        return [.x86_64, .x86, .x32]
        #elseif arch(arm64)
        return [.aarch64, .arm]
        #else
        return []
        #endif
    }

    /// Docker's unconditional allow-list (minus io_uring), plus what Docker
    /// allows for its default capabilities and kernels ≥ 4.8 (ptrace,
    /// process_vm_*, chroot), plus the per-architecture entries, plus newer
    /// syscalls that are as harmless as the ones they extend (futex2,
    /// cachestat, fchmodat2, map_shadow_stack, mseal). Names unknown to the
    /// installed libseccomp are skipped at compilation.
    static let defaultAllowed: [String] = [
        "accept", "accept4", "access", "adjtimex", "alarm", "bind", "brk", "cachestat", "capget", "capset",
        "chdir", "chmod", "chown", "chown32", "chroot", "clock_adjtime", "clock_adjtime64", "clock_getres",
        "clock_getres_time64", "clock_gettime", "clock_gettime64", "clock_nanosleep", "clock_nanosleep_time64",
        "close", "close_range", "connect", "copy_file_range", "creat", "dup", "dup2", "dup3", "epoll_create",
        "epoll_create1", "epoll_ctl", "epoll_ctl_old", "epoll_pwait", "epoll_pwait2", "epoll_wait",
        "epoll_wait_old", "eventfd", "eventfd2", "execve", "execveat", "exit", "exit_group", "faccessat",
        "faccessat2", "fadvise64", "fadvise64_64", "fallocate", "fanotify_mark", "fchdir", "fchmod", "fchmodat",
        "fchmodat2", "fchown", "fchown32", "fchownat", "fcntl", "fcntl64", "fdatasync", "fgetxattr", "flistxattr",
        "flock", "fork", "fremovexattr", "fsetxattr", "fstat", "fstat64", "fstatat64", "fstatfs", "fstatfs64",
        "fsync", "ftruncate", "ftruncate64", "futex", "futex_requeue", "futex_time64", "futex_wait",
        "futex_waitv", "futex_wake", "futimesat", "getcpu", "getcwd", "getdents", "getdents64", "getegid",
        "getegid32", "geteuid", "geteuid32", "getgid", "getgid32", "getgroups", "getgroups32", "getitimer",
        "getpeername", "getpgid", "getpgrp", "getpid", "getppid", "getpriority", "getrandom", "getresgid",
        "getresgid32", "getresuid", "getresuid32", "getrlimit", "get_robust_list", "getrusage", "getsid",
        "getsockname", "getsockopt", "get_thread_area", "gettid", "gettimeofday", "getuid", "getuid32",
        "getxattr", "inotify_add_watch", "inotify_init", "inotify_init1", "inotify_rm_watch", "io_cancel",
        "ioctl", "io_destroy", "io_getevents", "io_pgetevents", "io_pgetevents_time64", "ioprio_get",
        "ioprio_set", "io_setup", "io_submit", "ipc", "kill", "landlock_add_rule", "landlock_create_ruleset",
        "landlock_restrict_self", "lchown", "lchown32", "lgetxattr", "link", "linkat", "listen", "listxattr",
        "llistxattr", "_llseek", "lremovexattr", "lseek", "lsetxattr", "lstat", "lstat64", "madvise",
        "map_shadow_stack", "membarrier", "memfd_create", "memfd_secret", "mincore", "mkdir", "mkdirat", "mknod",
        "mknodat", "mlock", "mlock2", "mlockall", "mmap", "mmap2", "mprotect", "mq_getsetattr", "mq_notify",
        "mq_open", "mq_timedreceive", "mq_timedreceive_time64", "mq_timedsend", "mq_timedsend_time64",
        "mq_unlink", "mremap", "mseal", "msgctl", "msgget", "msgrcv", "msgsnd", "msync", "munlock", "munlockall",
        "munmap", "name_to_handle_at", "nanosleep", "newfstatat", "_newselect", "open", "openat", "openat2",
        "pause", "pidfd_open", "pidfd_send_signal", "pipe", "pipe2", "pkey_alloc", "pkey_free", "pkey_mprotect",
        "poll", "ppoll", "ppoll_time64", "prctl", "pread64", "preadv", "preadv2", "prlimit64",
        "process_mrelease", "process_vm_readv", "process_vm_writev", "pselect6", "pselect6_time64", "ptrace",
        "pwrite64", "pwritev", "pwritev2", "read", "readahead", "readlink", "readlinkat", "readv", "recv",
        "recvfrom", "recvmmsg", "recvmmsg_time64", "recvmsg", "remap_file_pages", "removexattr", "rename",
        "renameat", "renameat2", "restart_syscall", "rmdir", "rseq", "rt_sigaction", "rt_sigpending",
        "rt_sigprocmask", "rt_sigqueueinfo", "rt_sigreturn", "rt_sigsuspend", "rt_sigtimedwait",
        "rt_sigtimedwait_time64", "rt_tgsigqueueinfo", "sched_getaffinity", "sched_getattr", "sched_getparam",
        "sched_get_priority_max", "sched_get_priority_min", "sched_getscheduler", "sched_rr_get_interval",
        "sched_rr_get_interval_time64", "sched_setaffinity", "sched_setattr", "sched_setparam",
        "sched_setscheduler", "sched_yield", "seccomp", "select", "semctl", "semget", "semop", "semtimedop",
        "semtimedop_time64", "send", "sendfile", "sendfile64", "sendmmsg", "sendmsg", "sendto", "setfsgid",
        "setfsgid32", "setfsuid", "setfsuid32", "setgid", "setgid32", "setgroups", "setgroups32", "setitimer",
        "setpgid", "setpriority", "setregid", "setregid32", "setresgid", "setresgid32", "setresuid",
        "setresuid32", "setreuid", "setreuid32", "setrlimit", "set_robust_list", "setsid", "setsockopt",
        "set_thread_area", "set_tid_address", "setuid", "setuid32", "setxattr", "shmat", "shmctl", "shmdt",
        "shmget", "shutdown", "sigaltstack", "signalfd", "signalfd4", "sigprocmask", "sigreturn", "socketcall",
        "socketpair", "splice", "stat", "stat64", "statfs", "statfs64", "statx", "symlink", "symlinkat", "sync",
        "sync_file_range", "syncfs", "sysinfo", "tee", "tgkill", "time", "timer_create", "timer_delete",
        "timer_getoverrun", "timer_gettime", "timer_gettime64", "timer_settime", "timer_settime64",
        "timerfd_create", "timerfd_gettime", "timerfd_gettime64", "timerfd_settime", "timerfd_settime64",
        "times", "tkill", "truncate", "truncate64", "ugetrlimit", "umask", "uname", "unlink", "unlinkat", "utime",
        "utimensat", "utimensat_time64", "utimes", "vfork", "vmsplice", "wait4", "waitid", "waitpid", "write",
        "writev",
        // Per architecture (Docker's includes.arches): x86 TLS and LDT.
        "arch_prctl", "modify_ldt",
        // arm / arm64.
        "arm_fadvise64_64", "arm_sync_file_range", "sync_file_range2", "breakpoint", "cacheflush", "set_tls",
    ]
}
