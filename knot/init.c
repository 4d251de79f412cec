/* lithos-init: the knot's pid-1 duties in C; spawned by knot/nativespawn.py, it also runs
 * the container's setup (knot/plan.py's ops: setup() below); exec'd by a Python knot
 * after its own setup, it has no ops to run.
 *
 * Why: a waiting Python knot keeps ~9 MB private per container; this keeps ~0.1 MB
 * (BENCHMARKS.md, "Native pid 1"). It does exactly what knot/service.py's supervise()
 * does, and nothing else: every decision (argv, environment, ids, fds, timeouts, the
 * quoted texts of the stdio-log lines) was made in Python (knot.spawn or the knot) and arrives on an
 * inherited fd as a description (knot/initdesc.py owns its format):
 *
 *     lithos_knot --name NAME --init-fd N [--go-fd M]
 *
 * With --go-fd, one byte ('g') is awaited there first: the spawner writes the
 * description meanwhile (after its before_setup). The setup's failures are one line
 * each, worded as knot.plan.execute words them, and exit 78.
 * The description is NUL-terminated fields in a fixed order, read fully and parsed
 * strictly before anything else; anything malformed is one line on stderr and exit 78.
 *
 * Rules (as the Python pid 1): SIGTERM, SIGINT and SIGCHLD stay blocked for our whole
 * life (blocked since the spawner, K-40) and are taken with sigwaitinfo/sigtimedwait;
 * no polling. Exit codes are knot/exitcodes.py's. Only libc (glibc or musl: nothing of
 * either's own); built with `musl-gcc -O2 -static` (or `cc`) by knot/initbin.py, which also
 * gives us Python's errno names and texts (ERRNO_TABLE, below).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

enum { EXIT_NORMAL = 0, EXIT_ABNORMAL = 2, EXIT_KILL_TIMEOUT = 3, EXIT_SETUP_FAILED = 78 };
#define MAGIC "lithos-init/3"
#define MAX_DESC (16 << 20)   /* bytes */
#define MAX_LIST 65536        /* items in one list */

/* One setup op (knot/plan.py): kind, the step's label and config key, its arguments. */
enum op_kind { OP_FAIL, OP_MOUNT, OP_STAT, OP_CHECK, OP_CHDIR, OP_PIVOT, OP_UMOUNT, OP_RLIMIT,
               OP_JOIN, OP_MKDIR, OP_WRITE };
static const char *const op_names[] = { "fail", "mount", "stat", "check", "chdir",
                                        "pivot_root", "umount2", "rlimit", "join", "mkdir",
                                        "write" };
struct op {
    int kind;
    char *label, *key;
    char *a[5];          /* the string arguments, in knot.plan.ARGS's order */
    long long n;         /* mount/umount2: flags; check: skip; rlimit: the limit */
};

/* The description, as knot/initdesc.py encodes it (same order). */
struct desc {
    char *name, *quoted_name, *command_text, *container_config;
    int daemon, restart_process_only;
    long long kill_timeout_ns, restart_timeout_ns;
    char *kill_timeout_text;
    int ncodes; int *codes;               /* normal-exit-codes */
    int log_fd;                           /* -1: no stdio log */
    int status_fd;                        /* -1: none; lithos_cmd's wait-status pipe */
    int output;                           /* 'l' log, 'i' inherit (interactive), 'f' file */
    char *output_file;
    long long uid, gid;
    char *uid_map, *gid_map;              /* ready to write; both "" when no user ns */
    char *workdir, *executable;
    int nargv; char **argv;
    int nenv; char **env;
    int npidvars; char **pidvars;
    int nfds; int *fds;                   /* tcp fds, kept for the service */
    int net_bind_service;                 /* bridged: keep CAP_NET_BIND_SERVICE (K-30) */
    int slog_fd;                          /* -1: no sandbox log (protocol/sandboxlog.py) */
    int slog_level;                       /* Python level numbers: ERROR 40, WARN 30 */
    int slog_facility;                    /* -1: `[ts][LEVEL] msg` lines; else syslog */
    char *slog_tag;                       /* syslog: "<ident>[<host pid>]" */
    long long slog_gmtoff;                /* syslog: seconds east of UTC */
    int pdeathsig, parent_pidfd, netns_fd, unshare;   /* the setup (knot.spawn) */
    int nops; struct op *ops;
};

static struct desc d;
static const char *knot_name = "?";

/* errno's name and text as Python words them (errno.errorcode, os.strerror: glibc's), so
   a failing step's line is byte-identical to knot.plan.os_detail's whichever libc we are
   linked with (musl's texts differ: "Resource busy"). knot/initbin.py generates the table,
   `[EPERM] = { "EPERM", "Operation not permitted" }, ...`, and passes it with -include. */
#ifndef ERRNO_TABLE
#error "build with knot/initbin.py: it passes ERRNO_TABLE with -include"
#endif
static const struct { const char *name, *text; } errnos[] = { ERRNO_TABLE };
#define KNOWN(e) ((e) > 0 && (size_t)(e) < sizeof errnos / sizeof *errnos && errnos[e].name)

static const char *err_name(int e) {   /* Python's: the number when it has no name */
    static char number[16];
    if (KNOWN(e)) return errnos[e].name;
    snprintf(number, sizeof number, "%d", e);
    return number;
}

static const char *err_text(int e) {
    static char unknown[32];
    if (KNOWN(e)) return errnos[e].text;
    snprintf(unknown, sizeof unknown, "Unknown error %d", e);
    return unknown;
}

#ifdef LITHOS_INIT_STAMPS
/* bench.spawn_steps only (its own build, cc -DLITHOS_INIT_STAMPS; the production binary
   has none of this): CLOCK_MONOTONIC after each step, `label=ns` words kept in memory
   and written to fd 2 as one line just before the service's execve. */
static char stamps[8192];
static size_t stamps_len;
static void stamp(const char *label, const char *arg) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    int n = snprintf(stamps + stamps_len, sizeof stamps - stamps_len, " %s%s%s=%lld", label,
                     arg ? ":" : "", arg ? arg : "", ts.tv_sec * 1000000000LL + ts.tv_nsec);
    if (n > 0 && (size_t)n < sizeof stamps - stamps_len) stamps_len += (size_t)n;
}
static void stamps_out(void) {
    stamp("execve", NULL);
    stamps[stamps_len++] = '\n';
    (void)!write(2, "init-stamps:", 12);
    (void)!write(2, stamps, stamps_len);
}
#define STAMP(label, arg) stamp(label, arg)
#define STAMPS_OUT() stamps_out()
#else
#define STAMP(label, arg) ((void)0)
#define STAMPS_OUT() ((void)0)
#endif

/* ---- reading the description: every field checked, one line on error ---- */

static char *buf, *cur, *end;
static int field_no;

static void bad(const char *what, const char *field) {
    dprintf(2, "knot[%s]: init description: field %d (%s): %s\n", knot_name, field_no, field,
            what);
    _exit(EXIT_SETUP_FAILED);
}

static char *next_str(const char *field) {
    field_no++;
    char *nul = cur < end ? memchr(cur, '\0', (size_t)(end - cur)) : NULL;
    if (!nul) bad("missing or not NUL-terminated", field);
    char *s = cur;
    cur = nul + 1;
    return s;
}

static long long next_int(const char *field, long long lo, long long hi) {
    char *s = next_str(field);
    long long v = 0;
    int neg = (*s == '-');
    const char *p = s + neg;
    if (!*p || (p[0] == '0' && p[1])) bad("not a decimal integer", field);
    for (; *p; p++) {
        if (*p < '0' || *p > '9' || v > (LLONG_MAX - 9) / 10) bad("not a decimal integer", field);
        v = v * 10 + (*p - '0');
    }
    v = neg ? -v : v;
    if (v < lo || v > hi) bad("out of range", field);
    return v;
}

static char **next_strs(const char *field, int *n) {
    *n = (int)next_int(field, 0, MAX_LIST);
    char **items = calloc((size_t)*n + 1, sizeof *items);   /* NULL-terminated */
    if (!items) bad("out of memory", field);
    for (int i = 0; i < *n; i++) items[i] = next_str(field);
    return items;
}

static int *next_ints(const char *field, int *n, long long lo, long long hi) {
    *n = (int)next_int(field, 0, MAX_LIST);
    int *items = calloc((size_t)*n + 1, sizeof *items);
    if (!items) bad("out of memory", field);
    for (int i = 0; i < *n; i++) items[i] = (int)next_int(field, lo, hi);
    return items;
}

/* knot/initdesc.py's _ops(), check for check. */
static void read_ops(void) {
    d.nops = (int)next_int("ops", 0, MAX_LIST);
    d.ops = calloc((size_t)d.nops + 1, sizeof *d.ops);
    if (!d.ops) bad("out of memory", "ops");
    for (int i = 0; i < d.nops; i++) {
        struct op *op = &d.ops[i];
        char *name = next_str("op");
        op->kind = -1;
        for (int k = 0; k < (int)(sizeof op_names / sizeof *op_names); k++)
            if (!strcmp(name, op_names[k])) op->kind = k;
        if (op->kind < 0) bad("unknown op", "op");
        op->label = next_str("op-label");
        op->key = next_str("op-key");
        switch (op->kind) {
        case OP_MOUNT:
            op->a[0] = next_str("mount-source");
            op->a[1] = next_str("mount-target");
            op->a[2] = next_str("mount-fstype");
            op->n = next_int("mount-flags", 0, 0xFFFFFFFFLL);
            op->a[4] = next_str("mount-data");
            break;
        case OP_CHECK:
            op->a[0] = next_str("check-path");
            op->a[1] = next_str("check-how");
            if (strcmp(op->a[1], "dir") && strcmp(op->a[1], "reg") && strcmp(op->a[1], "isdir"))
                bad("not dir, reg or isdir", "check-how");
            op->a[2] = next_str("check-detail");
            op->n = next_int("check-skip", 0, d.nops - i - 1);
            break;
        case OP_UMOUNT:
            op->a[0] = next_str("umount2-target");
            op->n = next_int("umount2-flags", 0, 0xFFFFFFFFLL);
            break;
        case OP_RLIMIT:
            op->n = next_int("rlimit", 0, 1LL << 62);
            break;
        case OP_PIVOT:
            op->a[0] = next_str("pivot_root-arg");
            op->a[1] = next_str("pivot_root-arg");
            break;
        case OP_FAIL: op->a[0] = next_str("fail-arg"); break;
        case OP_STAT: op->a[0] = next_str("stat-arg"); break;
        case OP_CHDIR: op->a[0] = next_str("chdir-arg"); break;
        case OP_JOIN: op->a[0] = next_str("join-arg"); break;
        case OP_MKDIR: op->a[0] = next_str("mkdir-arg"); break;
        case OP_WRITE: op->a[0] = next_str("write-arg"); op->a[1] = next_str("write-arg"); break;
        }
    }
}

static void read_desc(int fd) {
    size_t size = 0, cap = 65536;
    buf = malloc(cap);
    for (;;) {                     /* pread from 0 (a memfd), or read (a pipe) */
        if (!buf) bad("out of memory", "read");
        ssize_t n = pread(fd, buf + size, cap - size, (off_t)size);
        if (n < 0 && errno == ESPIPE) n = read(fd, buf + size, cap - size);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) bad(err_text(errno), "read");
        if (n == 0) break;
        size += (size_t)n;
        if (size > MAX_DESC) bad("larger than 16 MiB", "read");
        if (size == cap) buf = realloc(buf, cap *= 2);
    }
    close(fd);
    cur = buf;
    end = buf + size;
    if (strcmp(next_str("magic"), MAGIC) != 0) bad("not " MAGIC, "magic");
    d.name = next_str("name");
    knot_name = d.name;
    d.quoted_name = next_str("quoted-name");
    d.command_text = next_str("command-text");
    d.container_config = next_str("container-config");
    char *kind = next_str("kind");
    if (strcmp(kind, "Daemon") && strcmp(kind, "Command")) bad("not Daemon or Command", "kind");
    d.daemon = !strcmp(kind, "Daemon");
    d.restart_process_only = (int)next_int("restart-process-only", 0, 1);
    d.kill_timeout_ns = next_int("kill-timeout-ns", 0, 86400LL * 1000000000);
    d.kill_timeout_text = next_str("kill-timeout-text");
    d.restart_timeout_ns = next_int("restart-timeout-ns", 0, 86400LL * 1000000000);
    d.codes = next_ints("normal-exit-codes", &d.ncodes, 0, 255);
    d.log_fd = (int)next_int("log-fd", -1, INT_MAX);
    d.status_fd = (int)next_int("status-fd", -1, INT_MAX);
    char *output = next_str("output");
    if (strcmp(output, "log") && strcmp(output, "inherit") && strcmp(output, "file"))
        bad("not log, inherit or file", "output");
    d.output = output[0];   /* 'l', 'i' or 'f' */
    d.output_file = next_str("output-file");
    if ((d.output == 'f') != (d.output_file[0] == '/')) bad("absolute path iff file", "output-file");
    d.uid = next_int("uid", 0, 0xFFFFFFFELL);
    d.gid = next_int("gid", 0, 0xFFFFFFFELL);
    d.uid_map = next_str("uid-map");
    d.gid_map = next_str("gid-map");
    d.workdir = next_str("workdir");
    d.executable = next_str("executable");
    d.argv = next_strs("argv", &d.nargv);
    d.env = next_strs("environ", &d.nenv);
    for (int i = 0; i < d.nenv; i++)
        if (!strchr(d.env[i], '=')) bad("an entry without '='", "environ");
    d.pidvars = next_strs("pid-env-vars", &d.npidvars);
    d.fds = next_ints("tcp-fds", &d.nfds, 0, INT_MAX);
    d.net_bind_service = (int)next_int("net-bind-service", 0, 1);
    d.slog_fd = (int)next_int("sandbox-log-fd", -1, INT_MAX);
    d.slog_level = (int)next_int("sandbox-log-level", 0, 100);
    d.slog_facility = (int)next_int("sandbox-log-facility", -1, 23);
    d.slog_tag = next_str("sandbox-log-tag");
    d.slog_gmtoff = next_int("sandbox-log-gmtoff", -86400, 86400);
    d.pdeathsig = (int)next_int("pdeathsig", 0, 1);
    d.parent_pidfd = (int)next_int("parent-pidfd", -1, INT_MAX);
    d.netns_fd = (int)next_int("netns-fd", -1, INT_MAX);
    d.unshare = (int)next_int("unshare", 0, 1);
    read_ops();
    if (strcmp(next_str("end"), "end") != 0) bad("not end", "end");
    if (cur != end) bad("trailing bytes", "end");
    if (d.nargv < 1) bad("empty", "argv");
}

/* ---- the stdio-log lines, byte-identical to protocol/stdiolog.py ---- */

static const char *const signames[65] = {
    [SIGHUP] = "SIGHUP", [SIGINT] = "SIGINT", [SIGQUIT] = "SIGQUIT", [SIGILL] = "SIGILL",
    [SIGTRAP] = "SIGTRAP", [SIGABRT] = "SIGABRT", [SIGBUS] = "SIGBUS", [SIGFPE] = "SIGFPE",
    [SIGKILL] = "SIGKILL", [SIGUSR1] = "SIGUSR1", [SIGSEGV] = "SIGSEGV", [SIGUSR2] = "SIGUSR2",
    [SIGPIPE] = "SIGPIPE", [SIGALRM] = "SIGALRM", [SIGTERM] = "SIGTERM",
    [SIGSTKFLT] = "SIGSTKFLT", [SIGCHLD] = "SIGCHLD", [SIGCONT] = "SIGCONT",
    [SIGSTOP] = "SIGSTOP", [SIGTSTP] = "SIGTSTP", [SIGTTIN] = "SIGTTIN", [SIGTTOU] = "SIGTTOU",
    [SIGURG] = "SIGURG", [SIGXCPU] = "SIGXCPU", [SIGXFSZ] = "SIGXFSZ",
    [SIGVTALRM] = "SIGVTALRM", [SIGPROF] = "SIGPROF", [SIGWINCH] = "SIGWINCH",
    [SIGIO] = "SIGIO", [SIGPWR] = "SIGPWR", [SIGSYS] = "SIGSYS",
    [34] = "SIGRTMIN", [64] = "SIGRTMAX",   /* Python's signal.Signals names */
};

/* stdiolog.status_text_of: `exited with code 1`, `killed by signal SIGKILL[9]`. */
static void status_text(char *out, size_t size, int status) {
    if (WIFSIGNALED(status)) {
        int sig = WTERMSIG(status);
        char fallback[16];
        snprintf(fallback, sizeof fallback, "SIG%d", sig);
        snprintf(out, size, "killed by signal %s[%d]%s",
                 sig < 65 && signames[sig] ? signames[sig] : fallback, sig,
                 WCOREDUMP(status) ? " (core dumped)" : "");
    } else {
        snprintf(out, size, "exited with code %d", WEXITSTATUS(status));
    }
}

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Writes all of text with one write(2) when it can (O_APPEND: no interleaving). */
static void write_all(int fd, const char *text, size_t len) {
    while (len > 0) {
        ssize_t n = write(fd, text, len);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return;   /* a full disk must not stop pid 1 */
        text += n;
        len -= (size_t)n;
    }
}

enum { LOG_ERROR = 40, LOG_WARN = 30 };

/* sandboxlog.line(): `[<rfc3339>][LEVEL] <text>\n`, or the syslog(3) datagram
   `<PRI>Mmm dd hh:mm:ss <tag>: <text>`; nothing below the level. Errors are ignored. */
static void sandbox_line(int level, const char *text) {
    if (d.slog_fd < 0 || level < d.slog_level) return;
    static const char *const months[12] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                           "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    time_t t = time(NULL);
    struct tm tm;
    char *line;
    int len;
    if (d.slog_facility < 0) {
        char stamp[32];
        strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%SZ", gmtime_r(&t, &tm));
        len = asprintf(&line, "[%s][%s] %s\n", stamp, level >= LOG_ERROR ? "ERROR" : "WARN",
                       text);
    } else {
        time_t local = t + (time_t)d.slog_gmtoff;
        gmtime_r(&local, &tm);
        len = asprintf(&line, "<%d>%s %2d %02d:%02d:%02d %s: %s",
                       d.slog_facility * 8 + (level >= LOG_ERROR ? 3 : 4), months[tm.tm_mon],
                       tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, d.slog_tag, text);
    }
    if (len < 0) return;
    (void)!write(d.slog_fd, line, (size_t)len);   /* one write: one line or datagram */
    free(line);
}

/* `<rfc3339>: ----- <text> -----\n` in the stdio log, whole (no length limit), and the
   same text at `level` in the sandbox log (0: not there). */
static void log_line(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void log_line(int level, const char *fmt, ...) {
    char stamp[32], *text, *line;
    va_list ap;
    va_start(ap, fmt);
    int ok = vasprintf(&text, fmt, ap) >= 0;
    va_end(ap);
    if (!ok) return;
    if (level) sandbox_line(level, text);
    time_t t = time(NULL);
    struct tm tm;
    strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%SZ", gmtime_r(&t, &tm));
    int len = d.log_fd < 0 ? -1 : asprintf(&line, "%s: ----- %s -----\n", stamp, text);
    free(text);
    if (len < 0) return;
    write_all(d.log_fd, line, (size_t)len);
    free(line);
}

/* ---- the service ---- */

/* One line on stderr, then exit 78 (service.py's _fail). */
static void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void fail(const char *fmt, ...) {
    char text[8192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    dprintf(2, "knot[%s]: %s\n", d.name, text);
    char *line;   /* K-43, as service.fatal_message */
    if (asprintf(&line, "Fatal error running %s: %s", d.quoted_name, text) >= 0)
        sandbox_line(LOG_ERROR, line);
    _exit(EXIT_SETUP_FAILED);
}

#define ERR(e) err_name(e), err_text(e)

/* What the child was doing when it failed: service.py's `what` (action, config key). */
enum step { PREPARE, USERNS, IDS, CAPS, CHDIR, EXEC };
struct report { int step, err; };

static void child_fail(int report_fd, enum step step) {
    struct report r = { step, errno };
    (void)!write(report_fd, &r, sizeof r);
    _exit(127);
}

/* Closes every fd but 0-2, the tcp fds and `extra` (-1: none) (close_range over the
   gaps: fds above a lowered RLIMIT_NOFILE too). */
static void close_all_but(const int *extra, int nextra) {
    int kept[MAX_LIST + 8], n = 0;
    kept[n++] = 0; kept[n++] = 1; kept[n++] = 2;
    for (int i = 0; i < nextra; i++)
        if (extra[i] >= 0) kept[n++] = extra[i];
    for (int i = 0; i < d.nfds; i++) kept[n++] = d.fds[i];
    for (int i = 1; i < n; i++)   /* insertion sort: a handful of fds */
        for (int j = i; j > 0 && kept[j - 1] > kept[j]; j--) {
            int t = kept[j]; kept[j] = kept[j - 1]; kept[j - 1] = t;
        }
    unsigned low = 0;
    for (int i = 0; i < n; i++) {
        if ((unsigned)kept[i] > low) syscall(SYS_close_range, low, (unsigned)kept[i] - 1, 0);
        if ((unsigned)kept[i] + 1 > low) low = (unsigned)kept[i] + 1;
    }
    syscall(SYS_close_range, low, ~0U, 0);   /* musl has no wrapper */
}

/* linux/capability.h's ABI, spelled out (musl's toolchain has no kernel headers). */
enum { CAPABILITY_VERSION_3 = 0x20080522, CAP_NET_BIND_SERVICE = 10 };
struct cap_header { unsigned version; int pid; };
struct cap_data { unsigned effective, permitted, inheritable; };

/* K-30, knot/caps.py: after setuid, only CAP_NET_BIND_SERVICE is left (effective,
   permitted, inheritable and ambient), so it survives exec of a plain binary. */
static void keep_net_bind_service(int report_fd) {
    struct cap_header header = { CAPABILITY_VERSION_3, 0 };
    struct cap_data data[2] = { { 0, 0, 0 }, { 0, 0, 0 } };
    unsigned bit = 1u << CAP_NET_BIND_SERVICE;
    data[0].effective = data[0].permitted = data[0].inheritable = bit;
    if (syscall(SYS_capset, &header, data) != 0) child_fail(report_fd, CAPS);
    if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_NET_BIND_SERVICE, 0, 0) != 0
        && errno != EINVAL) child_fail(report_fd, CAPS);   /* EINVAL: kernel < 4.3 */
}

/* In the child: the last steps, then exec (service.py's _exec_service). Under vfork it
   borrows pid 1's memory until the exec: it allocates nothing (env and pid_texts, sized by
   start_service, are filled here) and changes no global. */
static void exec_service(int out_fd, int report_fd, char **env, char *pid_texts) {
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) child_fail(report_fd, PREPARE);  /* K-50 */
    if (d.uid_map[0] || d.gid_map[0]) {
        if (unshare(CLONE_NEWUSER) != 0) child_fail(report_fd, USERNS);
        kill(getpid(), SIGSTOP);   /* the parent writes the maps, then SIGCONTs */
    }
    for (int sig = 1; sig < NSIG; sig++) signal(sig, SIG_DFL);   /* errors: not settable */
    if (out_fd >= 0 && (dup2(out_fd, 1) < 0 || dup2(out_fd, 2) < 0))
        child_fail(report_fd, PREPARE);
    close_all_but(&report_fd, 1);
    for (int i = 0; i < d.nfds; i++) fcntl(d.fds[i], F_SETFD, 0);   /* inheritable */
    /* V-15, V-17: the pid variables, replaced in place or appended (as a dict does). */
    int n = d.nenv;
    memcpy(env, d.env, (size_t)n * sizeof *env);
    for (int v = 0; v < d.npidvars; v++) {
        char *entry = pid_texts;
        pid_texts += sprintf(entry, "%s=%d", d.pidvars[v], (int)getpid()) + 1;
        size_t len = strlen(d.pidvars[v]);
        int i = 0;
        while (i < n && !(strncmp(env[i], entry, len + 1) == 0)) i++;
        env[i] = entry;
        if (i == n) n++;
    }
    if (d.net_bind_service && prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0)
        child_fail(report_fd, CAPS);
    if (setgroups(0, NULL) || setgid((gid_t)d.gid) || setuid((uid_t)d.uid))
        child_fail(report_fd, IDS);
    if (d.net_bind_service) keep_net_bind_service(report_fd);
    if (chdir(d.workdir) != 0) child_fail(report_fd, CHDIR);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    STAMPS_OUT();
    execve(d.executable, d.argv, env);
    child_fail(report_fd, EXEC);
}

static void write_map(pid_t pid, const char *kind, const char *text) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/%s", (int)pid, kind);
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0 || write(fd, text, strlen(text)) < 0) {
        int err = errno;
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        fail("start service: write %s: %s (%s) (uid-map in %s)", path, ERR(err),
             d.container_config);
    }
    close(fd);
}

/* Starts the service (pid 2 at the first start); exits if its exec fails. */
static pid_t start_service(int out_fd) {
    int pipefd[2];
    if (pipe2(pipefd, O_CLOEXEC) != 0) fail("start service: pipe: %s (%s)", ERR(errno));
    size_t texts_size = 1;
    for (int v = 0; v < d.npidvars; v++) texts_size += strlen(d.pidvars[v]) + 16;  /* =pid\0 */
    char **env = calloc((size_t)(d.nenv + d.npidvars + 1), sizeof *env);
    char *pid_texts = malloc(texts_size);
    if (!env || !pid_texts) fail("start service: %s (%s)", ERR(ENOMEM));
    /* vfork: no page tables copied, no copy-on-write faults, nothing torn down at the
       exec (~0.1 ms of every start; we wait for the exec anyway, on the report pipe). With
       id maps, fork: that child stops itself until we have written them. */
    int maps = d.uid_map[0] || d.gid_map[0];
    pid_t pid = maps ? fork() : vfork();
    if (pid < 0) fail("start service: fork: %s (%s)", ERR(errno));
    if (pid == 0) {
        STAMP("fork-child", NULL);
        close(pipefd[0]);
        exec_service(out_fd, pipefd[1], env, pid_texts);
    }
    free(env);
    free(pid_texts);
    close(pipefd[1]);
    if (maps) {
        int status;
        waitpid(pid, &status, WUNTRACED);
        if (!WIFSTOPPED(status)) {
            char text[128];
            status_text(text, sizeof text, status);
            fail("start service: %s before exec (uid-map in %s)", text, d.container_config);
        }
        write_map(pid, "uid_map", d.uid_map);
        write_map(pid, "gid_map", d.gid_map);
        kill(pid, SIGCONT);
    }
    struct report r;
    ssize_t n;   /* EOF at exec: the pipe is CLOEXEC */
    while ((n = read(pipefd[0], &r, sizeof r)) < 0 && errno == EINTR) {}
    close(pipefd[0]);
    if (n == (ssize_t)sizeof r) {
        waitpid(pid, NULL, 0);
        char action[PATH_MAX + 64];
        const char *key = "";
        switch (r.step) {
        case USERNS: snprintf(action, sizeof action, "unshare user namespace"); key = "uid-map";
            break;
        case IDS: snprintf(action, sizeof action, "setgroups/setgid %lld/setuid %lld", d.gid,
                           d.uid); key = "user-id"; break;
        case CAPS: snprintf(action, sizeof action, "keep CAP_NET_BIND_SERVICE");
            key = "bridged-network"; break;
        case CHDIR: snprintf(action, sizeof action, "chdir %s", d.workdir); key = "workdir"; break;
        case EXEC: snprintf(action, sizeof action, "exec %s", d.executable); key = "executable";
            break;
        default: snprintf(action, sizeof action, "prepare the service");
        }
        fail("start service: %s: %s (%s) (%s in %s)", action, ERR(r.err), key,
             d.container_config);
    }
    return pid;
}

/* K-53: the fd for the service's stdout/stderr; *owned when we must close it. */
static int open_output(int *owned) {
    *owned = 0;
    if (d.output == 'i') return -1;
    if (d.output == 'l') return d.log_fd;
    int fd = open(d.output_file, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0)
        fail("open stdout-stderr-file: %s: %s (%s) (stdout-stderr-file in %s)", d.output_file,
             ERR(errno), d.container_config);
    *owned = 1;
    return fd;
}

static sigset_t waited;

/* The next waited signal, or 0 when timeout_ns (>= 0; -1: none) passed. */
static int wait_signal(long long timeout_ns) {
    for (;;) {
        int sig;
        if (timeout_ns < 0) {
            sig = sigwaitinfo(&waited, NULL);
        } else {
            struct timespec ts = { timeout_ns / 1000000000, timeout_ns % 1000000000 };
            sig = sigtimedwait(&waited, NULL, &ts);
            if (sig < 0 && errno == EAGAIN) return 0;
        }
        if (sig > 0) return sig;   /* EINTR (SIGCONT, SIGSTOP): wait again */
    }
}

/* Every zombie, as pid 1 must; returns the status of `pid` or -1 if it still runs. */
static int reap(pid_t pid) {
    int status, found = -1;
    pid_t dead;
    while ((dead = waitpid(-1, &status, WNOHANG)) > 0)
        if (dead == pid) found = status;
    return found;
}

/* K-42. Unlike the original, exit codes are unsigned (E-46): [200] matches 200. */
static int is_normal(int status, int got_sigterm) {
    if (got_sigterm) return 1;
    if (WIFSIGNALED(status)) return WTERMSIG(status) == SIGTERM;
    int code = WEXITSTATUS(status);
    if (d.ncodes == 0) return !d.daemon && code == 0;
    for (int i = 0; i < d.ncodes; i++)
        if (d.codes[i] == code) return 1;
    return 0;
}

/* K-41: service.py's supervise(), line for line; returns the exit code. */
static int supervise(void) {
    int should_exit = !(d.daemon && d.restart_process_only), got_sigterm = 0;
    for (;;) {
        int owned, out_fd = open_output(&owned);
        log_line(LOG_WARN, "Starting %s: %s", d.quoted_name, d.command_text);
        long long started = now_ns(), deadline = -1;
        pid_t pid = start_service(out_fd);
        if (owned) close(out_fd);
        int status = -1;
        while (status == -1) {
            long long now = now_ns();
            int sig = wait_signal(deadline < 0 ? -1 : deadline > now ? deadline - now : 0);
            if (sig == 0) {   /* STOPPING: kill-timeout passed with the service alive */
                long long uptime_s = (now_ns() - started) / 1000000000;
                char *text;   /* stdiolog.kill_timeout_message */
                if (asprintf(&text, "Process %s did not respond to SIGTERM in %ss, uptime %llds. "
                             "Killing container so hanging process will die.", d.quoted_name,
                             d.kill_timeout_text, uptime_s) >= 0)
                    sandbox_line(LOG_ERROR, text);
                log_line(0, "Process %s did not respond to SIGTERM in %s, uptime %llds. Killing..",
                         d.quoted_name, d.kill_timeout_text, uptime_s);
                _exit(EXIT_KILL_TIMEOUT);   /* pid 1 exits: the kernel kills the rest */
            }
            if (sig == SIGINT) {
                should_exit = 1;   /* not forwarded (K-41) */
            } else if (sig == SIGTERM) {
                should_exit = 1;
                if (!got_sigterm) {   /* one SIGTERM per start, to the service only */
                    got_sigterm = 1;
                    kill(pid, SIGTERM);
                    deadline = now_ns() + d.kill_timeout_ns;
                }
            } else {
                status = reap(pid);
            }
        }
        long long uptime_ns = now_ns() - started;
        int exit_code = is_normal(status, got_sigterm) ? EXIT_NORMAL : EXIT_ABNORMAL;
        char text[128];
        status_text(text, sizeof text, status);
        log_line(LOG_ERROR, "Process %s %s, uptime %llds", d.quoted_name, text,
                 uptime_ns / 1000000000);
        if (d.status_fd >= 0) {   /* lithos_cmd: the raw wait status (service.report_status) */
            char line[16];
            int len = snprintf(line, sizeof line, "%d\n", status);
            write_all(d.status_fd, line, (size_t)len);   /* EPIPE (lithos_cmd gone): ignored */
        }
        if (should_exit) return exit_code;
        /* Daemon with restart-process-only: same container, new service process,
           restart-timeout measured from the previous start (E-13). */
        long long remaining = d.restart_timeout_ns - uptime_ns;
        while (remaining > 0) {
            int sig = wait_signal(remaining);
            if (sig == 0) break;
            if (sig == SIGTERM) return EXIT_NORMAL;
            if (sig == SIGINT) return exit_code;
            reap(-1);
            remaining = d.restart_timeout_ns - (now_ns() - started);
        }
    }
}

/* An fd number argument; exits with the usage line if it is not one. */
static int fd_arg(const char *text) {
    const char *p = text;
    int fd = 0;
    for (; *p >= '0' && *p <= '9' && fd < 1 << 20; p++) fd = fd * 10 + (*p - '0');
    if (*p || p == text) {
        dprintf(2, "knot[%s]: usage: --init-fd and --go-fd take fd numbers\n", knot_name);
        _exit(EXIT_SETUP_FAILED);
    }
    return fd;
}

/* ---- the setup (knot/plan.py's ops), when the spawner started us directly ---- */

/* The step's one line (plan.error_line), then exit 78. */
static void step_fail(const struct op *op, const char *detail) __attribute__((noreturn));
static void step_fail(const struct op *op, const char *detail) {
    if (op->key[0]) fail("%s: %s (%s in %s)", op->label, detail, op->key, d.container_config);
    fail("%s: %s", op->label, detail);
}

/* plan.os_detail: `<path>: ENOENT (No such file or directory)`; path NULL: no path. */
static void step_errno(const struct op *op, const char *path) __attribute__((noreturn));
static void step_errno(const struct op *op, const char *path) {
    int err = errno;
    char detail[PATH_MAX + 256];
    if (path) snprintf(detail, sizeof detail, "%s: %s (%s)", path, ERR(err));
    else snprintf(detail, sizeof detail, "%s (%s)", ERR(err));
    step_fail(op, detail);
}

/* plan.execute's warn: a join that failed is one line (stderr and the sandbox log), and
   the setup goes on (the knot runs outside that cgroup's limits, as the broker's own
   join always did). */
static void step_warn(const struct op *op, const char *path) {
    int err = errno;
    dprintf(2, "knot[%s]: %s: %s: %s (%s)\n", d.name, op->label, path, ERR(err));
    char *line;
    if (asprintf(&line, "[%s] %s: %s: %s (%s)", d.name, op->label, path, ERR(err)) >= 0) {
        sandbox_line(LOG_ERROR, line);
        free(line);
    }
}

/* T-51: write "0" (ourselves) to a cgroup.procs file. */
static int join_cgroup(const char *path) {
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    int ok = write(fd, "0", 1) == 1;
    int err = errno;
    close(fd);
    errno = err;
    return ok ? 0 : -1;
}

static const char *or_null(const char *s) { return s[0] ? s : NULL; }

/* K-20: a new cgroup's dir; an existing one is fine (a reused name). */
static void make_cgroup_dir(const struct op *op) {
    if (mkdir(op->a[0], 0755) != 0 && errno != EEXIST) step_errno(op, op->a[0]);
}

/* K-20: one file of a new cgroup (a limit, cpuset's copy); a failure is a warning line
   (plan.execute's warn: `<label>: <path> = <value>: <errno> (<text>) (<key> in <config>)`)
   and the setup goes on. */
static void write_cgroup_file(const struct op *op) {
    size_t len = strlen(op->a[1]);
    int fd = open(op->a[0], O_WRONLY | O_TRUNC | O_CLOEXEC);
    if (fd >= 0 && write(fd, op->a[1], len) == (ssize_t)len) {
        close(fd);
        return;
    }
    int err = errno;
    if (fd >= 0) close(fd);
    char *line, where[PATH_MAX + 256] = "";
    if (op->key[0]) snprintf(where, sizeof where, " (%s in %s)", op->key, d.container_config);
    if (asprintf(&line, "%s: %s = %s: %s (%s)%s", op->label, op->a[0], op->a[1], ERR(err),
                 where) < 0)
        return;
    dprintf(2, "knot[%s]: %s\n", d.name, line);
    char *slog;
    if (asprintf(&slog, "[%s] %s", d.name, line) >= 0) {
        sandbox_line(LOG_ERROR, slog);
        free(slog);
    }
    free(line);
}

/* plan.execute, op for op. */
static void run_ops(void) {
    for (int i = 0; i < d.nops; i++) {
        const struct op *op = &d.ops[i];
        struct stat st;
        switch (op->kind) {
        case OP_FAIL: step_fail(op, op->a[0]);
        case OP_MOUNT:
            if (mount(or_null(op->a[0]), op->a[1], or_null(op->a[2]), (unsigned long)op->n,
                      or_null(op->a[4])) != 0) step_errno(op, op->a[1]);
            break;
        case OP_STAT:
            if (stat(op->a[0], &st) != 0) step_errno(op, op->a[0]);
            break;
        case OP_CHECK: {
            int ok;
            if (!strcmp(op->a[1], "isdir")) ok = stat(op->a[0], &st) == 0 && S_ISDIR(st.st_mode);
            else if (lstat(op->a[0], &st) == 0)
                ok = op->a[1][0] == 'd' ? S_ISDIR(st.st_mode) : S_ISREG(st.st_mode);
            else if (errno == ENOENT) ok = 0;
            else step_errno(op, op->a[0]);
            if (!ok && op->a[2][0]) step_fail(op, op->a[2]);
            if (!ok) i += (int)op->n;
            break;
        }
        case OP_CHDIR:
            if (chdir(op->a[0]) != 0) step_errno(op, op->a[0]);
            break;
        case OP_PIVOT:
            if (syscall(SYS_pivot_root, op->a[0], op->a[1]) != 0) step_errno(op, op->a[0]);
            break;
        case OP_UMOUNT:
            if (umount2(op->a[0], (int)op->n) != 0) step_errno(op, op->a[0]);
            break;
        case OP_RLIMIT: {
            struct rlimit rl = { (rlim_t)op->n, (rlim_t)op->n };
            if (setrlimit(RLIMIT_NOFILE, &rl) != 0) step_errno(op, NULL);
            break;
        }
        case OP_JOIN:
            if (join_cgroup(op->a[0]) != 0) step_warn(op, op->a[0]);
            break;
        case OP_MKDIR: make_cgroup_dir(op); break;
        case OP_WRITE: write_cgroup_file(op); break;
        }
        STAMP(op_names[op->kind], op->a[op->kind == OP_MOUNT ? 1 : 0]);
    }
}

/* What the forked knot did in knot/spawn.py before its setup, then the ops: death with
   the spawner (T-52), the bridged netns (K-30), new mount/uts/ipc namespaces, only our
   fds (the spawner's are gone once the ops run). */
static void setup(void) {
    if (d.pdeathsig) {
        if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) fail("spawn: prctl: %s (%s)", ERR(errno));
        struct pollfd p = { d.parent_pidfd, POLLIN, 0 };   /* did it die before the prctl? */
        if (d.parent_pidfd >= 0 && poll(&p, 1, 0) != 0) _exit(EXIT_SETUP_FAILED);
    }
    if (d.parent_pidfd >= 0) close(d.parent_pidfd);
    STAMP("pdeathsig", NULL);
    if (d.netns_fd >= 0) {
        if (setns(d.netns_fd, CLONE_NEWNET) != 0) fail("spawn: setns: %s (%s)", ERR(errno));
        close(d.netns_fd);
    }
    if (d.unshare && unshare(CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC) != 0)
        fail("spawn: unshare: %s (%s)", ERR(errno));
    STAMP("unshare", NULL);
    int kept[3] = { d.log_fd, d.status_fd, d.slog_fd };
    close_all_but(kept, 3);
    STAMP("close_range", NULL);
    run_ops();
}

/* The spawner's glibc posix_spawn leaves its internal signals (32, 33) ignored in the
   child, and signal() refuses a libc's own (glibc's 32-33, musl's 32-34; the service's
   loop in exec_service cannot reset them): set SIG_DFL on 32-34 with the raw syscall (an
   all-zero kernel sigaction is SIG_DFL whatever the architecture's layout), so the
   service inherits nothing. */
static void default_internal_signals(void) {
    unsigned long zero[8] = { 0 };
    for (int sig = 32; sig <= 34; sig++)
        syscall(SYS_rt_sigaction, sig, zero, NULL, 8);   /* the kernel's sigset: 64 bits */
}

int main(int argc, char **argv) {
    STAMP("main", NULL);
    default_internal_signals();
    /* K-40: blocked since the spawner; block again for a run by hand. */
    sigemptyset(&waited);
    sigaddset(&waited, SIGTERM);
    sigaddset(&waited, SIGINT);
    sigaddset(&waited, SIGCHLD);
    sigprocmask(SIG_BLOCK, &waited, NULL);
    prctl(PR_SET_NAME, "lithos_knot");   /* fexecve would name us "3" in ps */
    if ((argc != 5 && argc != 7) || strcmp(argv[1], "--name") || strcmp(argv[3], "--init-fd")
        || (argc == 7 && strcmp(argv[5], "--go-fd"))) {
        dprintf(2, "knot[?]: usage: lithos_knot --name NAME --init-fd N [--go-fd N]\n");
        return EXIT_SETUP_FAILED;
    }
    knot_name = argv[2];
    int fd = fd_arg(argv[4]), go_fd = argc == 7 ? fd_arg(argv[6]) : -1;
    if (go_fd >= 0) {   /* the spawner's before_setup, then the description is written */
        char go = 0;
        ssize_t n;
        while ((n = read(go_fd, &go, 1)) < 0 && errno == EINTR) {}
        if (n != 1 || go != 'g') _exit(EXIT_SETUP_FAILED);   /* EOF: the spawner gave up */
        close(go_fd);
        STAMP("go", NULL);
    }
    read_desc(fd);
    STAMP("read_desc", NULL);
    if (strcmp(d.name, argv[2]) != 0)
        bad("does not match --name", "name");
    setup();
    if (d.log_fd >= 0) fcntl(d.log_fd, F_SETFD, FD_CLOEXEC);   /* never the service's */
    if (d.status_fd >= 0) fcntl(d.status_fd, F_SETFD, FD_CLOEXEC);
    if (d.slog_fd >= 0) fcntl(d.slog_fd, F_SETFD, FD_CLOEXEC);
    signal(SIGPIPE, SIG_IGN);   /* as in the Python knot: EPIPE, not death */
    return supervise();
}
