"""The C programs the bench compiles at run time (never committed as binaries).

payload (lbready / lbonce / lbfifo): no libc, no startup code: its first
instruction builds the write(3, "x", 1) syscall, so "first instruction of the
service" is what the harness times. lbready then pauses forever, lbonce exits.
lbfifo (for lithos_tree, which hands the service no pipe) opens /ready/fifo,
writes, then pauses.

floor (lbfloor IMAGE MNT PAYLOAD MODE): the least a container runtime can do:
clone(NEWNS|NEWPID|NEWUTS|NEWIPC), make / private, bind the image read-only on
MNT, a tmpfs on MNT/data, proc on MNT/proc, pivot_root, detach the old root, then
MODE exec: the payload becomes pid 1; init: pid 1 forks the payload and reaps
(the shape of lithos's knot); restart: like init, but restarts the payload
whenever it dies (the C supervisor loop). The outer process exits at once: the
container's pid 1 is adopted by the harness, a child subreaper, as a knot is the
broker's child.
"""

from __future__ import annotations

PAYLOAD_X86_64 = r"""
static long sys3(long n, long a, long b, long c) {
    long r;
    __asm__ volatile ("syscall" : "=a"(r) : "a"(n), "D"(a), "S"(b), "d"(c)
                      : "rcx", "r11", "memory");
    return r;
}
void _start(void) {
    char byte = 'x';
#ifdef FIFO
    /* open("/ready/fifo", O_WRONLY) then write: for lithos_tree, which passes no fd 3
       (FIFO_PATH: another path, for supervisord, whose programs run on the host) */
#ifndef FIFO_PATH
#define FIFO_PATH "/ready/fifo"
#endif
    static const char path[] = FIFO_PATH;
    long fd = sys3(2, (long)path, 1, 0);
    sys3(1, fd, (long)&byte, 1);
#else
    sys3(1, 3, (long)&byte, 1);          /* write(3, "x", 1): the first thing done */
#endif
#ifdef HOLD
    for (;;) sys3(34, 0, 0, 0);          /* pause() */
#else
    sys3(60, 0, 0, 0);                   /* exit(0) */
#endif
}
"""

# For machines other than x86_64: libc startup runs before main (a few microseconds).
PAYLOAD_PORTABLE = r"""
#include <fcntl.h>
#include <unistd.h>
int main(void) {
#ifdef FIFO
#ifndef FIFO_PATH
#define FIFO_PATH "/ready/fifo"
#endif
    write(open(FIFO_PATH, O_WRONLY), "x", 1);
#else
    write(3, "x", 1);
#endif
#ifdef HOLD
    for (;;) pause();
#endif
    return 0;
}
"""

FLOOR = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static char *image, *mnt, *payload, *mode;
static char stack[64 * 1024] __attribute__((aligned(16)));

static void die(const char *what) {
    fprintf(stderr, "lbfloor: %s: %s\n", what, strerror(errno));
    _exit(127);
}

static void run_payload(void) {
    char *argv[] = {payload, NULL};
    execv(payload, argv);
    die("exec payload");
}

static int container(void *arg) {
    char path[4096];
    (void)arg;
    if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL)) die("make / private");
    if (mount(image, mnt, NULL, MS_BIND | MS_REC, NULL)) die("bind image");
    if (mount(NULL, mnt, NULL, MS_BIND | MS_REMOUNT | MS_RDONLY, NULL)) die("remount ro");
    snprintf(path, sizeof path, "%s/data", mnt);
    if (mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, "size=16m")) die("tmpfs");
    snprintf(path, sizeof path, "%s/proc", mnt);
    if (mount("proc", path, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL)) die("proc");
    if (chdir(mnt)) die("chdir");
    if (syscall(SYS_pivot_root, ".", "tmp")) die("pivot_root");
    if (chdir("/")) die("chdir /");
    if (umount2("/tmp", MNT_DETACH)) die("detach old root");
    if (strcmp(mode, "exec") == 0) run_payload();
    for (;;) {
        int status;
        pid_t pid = fork();
        if (pid < 0) die("fork");
        if (pid == 0) run_payload();
        for (;;) {                        /* reap everything; stop when the payload is gone */
            pid_t got = wait(&status);
            if (got == pid) break;
            if (got < 0 && errno != EINTR) die("wait");
        }
        if (strcmp(mode, "restart") != 0)
            return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: lbfloor IMAGE MNT PAYLOAD exec|init|restart\n");
        return 2;
    }
    image = argv[1]; mnt = argv[2]; payload = argv[3]; mode = argv[4];
    int flags = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWUTS | CLONE_NEWIPC | SIGCHLD;
    if (clone(container, stack + sizeof stack, flags, NULL) < 0) die("clone");
    return 0;
}
"""
