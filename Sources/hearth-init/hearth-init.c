/*
 * hearth-init: PID 1 of a replica. Static, libc only, so it runs in any
 * image. Usage: hearth-init CMD [ARGS...]
 *          or: hearth-init --keeper   (hearthd's fd keeper, see keeper.c)
 *
 * It starts CMD, forwards termination-type signals to it, reaps every
 * zombie in the PID namespace (orphans are re-parented to PID 1), and exits
 * with CMD's status (128+N when CMD was killed by signal N). When it exits,
 * the kernel kills whatever is left in the namespace.
 *
 * Build: cc -static -O2 -Wall -Wextra -o hearth-init hearth-init.c keeper.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

/* Signals that mean "the replica is being told something" and go to CMD. */
static const int forwarded[] = {
    SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH,
};

int hearth_keeper_main(void);

static int status_code(int st)
{
    if (WIFEXITED(st))
        return WEXITSTATUS(st);
    if (WIFSIGNALED(st))
        return 128 + WTERMSIG(st);
    return 1;
}

int main(int argc, char **argv)
{
    sigset_t all, orig;
    pid_t child;
    size_t i;

    /* The keeper rides in this static binary: nothing more to install. */
    if (argc == 2 && strcmp(argv[1], "--keeper") == 0)
        return hearth_keeper_main();

    if (argc < 2) {
        fputs("usage: hearth-init CMD [ARGS...]\n", stderr);
        return 2;
    }

    /* Blocked signals are queued even for PID 1 (whose SIG_DFL signals
     * would otherwise be dropped) and are taken with sigwaitinfo below. */
    sigfillset(&all);
    if (sigprocmask(SIG_SETMASK, &all, &orig) < 0) {
        fprintf(stderr, "hearth-init: sigprocmask: %s\n", strerror(errno));
        return 1;
    }

    child = fork();
    if (child < 0) {
        fprintf(stderr, "hearth-init: fork: %s\n", strerror(errno));
        return 1;
    }
    if (child == 0) {
        int e;
        sigprocmask(SIG_SETMASK, &orig, NULL);
        execvp(argv[1], argv + 1);
        e = errno;
        fprintf(stderr, "hearth-init: exec %s: %s\n", argv[1], strerror(e));
        /* The shell's convention: 126 found but not runnable, 127 not found. */
        _exit(e == EACCES || e == ENOEXEC || e == EISDIR ? 126 : 127);
    }

    /* Hold nothing open: the worker's pipes must see EOF when it dies, not
     * when PID 1 does. */
    if (syscall(SYS_close_range, 0U, ~0U, 0U) < 0) {
        /* Kernels before 5.9: close what is there, one by one. */
        long max = sysconf(_SC_OPEN_MAX);
        for (int fd = 0; fd < (max > 0 ? max : 1024); fd++)
            close(fd);
    }

    for (;;) {
        siginfo_t si;
        int sig = sigwaitinfo(&all, &si);
        if (sig < 0)
            continue; /* EINTR */
        if (sig == SIGCHLD) {
            for (;;) {
                int st;
                pid_t p = waitpid(-1, &st, WNOHANG);
                if (p < 0 && errno == EINTR)
                    continue;
                if (p <= 0)
                    break; /* 0: others still running; ECHILD: none left */
                if (p == child)
                    _exit(status_code(st));
            }
            continue;
        }
        for (i = 0; i < sizeof(forwarded) / sizeof(forwarded[0]); i++) {
            if (sig == forwarded[i]) {
                kill(child, sig);
                break;
            }
        }
    }
}
