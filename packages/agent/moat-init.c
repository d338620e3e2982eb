/*
 * moat-init: PID 1 and exec/file agent of every Moat sandbox.
 * The wire protocol is specified in docs/agent-protocol.md.
 *
 *   moat-init [--socket PATH | --listen-tcp ADDR:PORT] [--main-file FILE] [--] [CMD ARGS...]
 *   moat-init --seed-rng HEX     (a microVM's boot script: see seed_rng)
 *
 * In a microVM (packages/guest) the agent listens on TCP on the VM's private
 * control link instead of a unix socket, and the main command comes from
 * --main-file (written by the guest's boot script from the host's config):
 * NUL-separated fields "cwd", then argv, an empty field, then the environment.
 *
 * Process layout:
 *
 *   moat-init (init: accept, fork, reap, forward signals; nothing else)
 *   ├── CMD (optional main command, stdout/stderr inherited)
 *   └── handler (one per connection: parses the request, does the operation)
 *       └── program started by EXEC (own process group, or own session with a tty)
 *
 * A DIAL handler stays alive for the whole TCP connection, relaying bytes
 * between the host and the port, so open dials never hold up init either.
 *
 * Everything that reads client bytes runs in a forked handler, so a malformed
 * or hostile request can at worst kill its own handler, never init. Handlers
 * are forked before the request is even read so a slow client never delays
 * anyone else.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <linux/random.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

/* Frame types (docs/agent-protocol.md). */
enum {
	T_EXEC = 0x01, T_READ = 0x02, T_WRITE = 0x03, T_LIST = 0x04, T_STAT = 0x05,
	T_MKDIR = 0x06, T_REMOVE = 0x07, T_RENAME = 0x08, T_PING = 0x09, T_DIAL = 0x0a,
	T_DATA = 0x10, T_EOF = 0x11, T_SIGNAL = 0x12, T_RESIZE = 0x13,
	T_STARTED = 0x20, T_STDOUT = 0x21, T_STDERR = 0x22, T_EXIT = 0x23,
	T_END = 0x24, T_OK = 0x25, T_ENTRY = 0x26, T_ERROR = 0x2f,
};

#define HDR 5u
#define MAX_FRAME (1024u * 1024u)
#define CHUNK (64u * 1024u)
/* Stdin the program has not read yet; beyond this we stop reading the socket (backpressure to the host). */
#define STDIN_QUEUE_MAX (1024u * 1024u)
/* A connection must deliver its request within this time, so idle connections cannot pile up handlers. */
#define REQUEST_TIMEOUT_MS 30000
/*
 * After the program exits we keep forwarding output until every writer has
 * closed the pipe/tty, but no longer than this: a background process that
 * inherited stdout must not hold EXIT back forever.
 */
#define DRAIN_MS 50
/* DIAL gives up connecting after this (ETIMEDOUT). */
#define DIAL_TIMEOUT_MS 10000
/* How long a finished connection is drained so the host can read our last frame (see linger_exit()). */
#define LINGER_MS 5000
#define LIST_BATCH (64u * 1024u)
#define DEFAULT_SOCKET "/.moat/sock/agent.sock"
#define DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

/* ------------------------------------------------------------------------ */
/* Small helpers                                                            */
/* ------------------------------------------------------------------------ */

static void logmsg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void logmsg(const char *fmt, ...)
{
	/* One write() per line: handlers share stderr and must not interleave mid-line. */
	char buf[1024];
	int n = snprintf(buf, sizeof buf, "moat-init[%d]: ", (int)getpid());
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf + n, sizeof buf - (size_t)n - 1, fmt, ap);
	va_end(ap);
	size_t len = strlen(buf);
	buf[len++] = '\n';
	if (write(2, buf, len) < 0) { /* nowhere left to report */ }
}

static const char *errname(int e)
{
	const char *n = strerrorname_np(e);
	return n ? n : "EIO";
}

static void *xmalloc(size_t n)
{
	/* Only handlers allocate; running out of memory there only loses that connection. */
	void *p = malloc(n ? n : 1);
	if (!p) {
		logmsg("out of memory");
		_exit(1);
	}
	return p;
}

static void *xrealloc(void *p, size_t n)
{
	p = realloc(p, n ? n : 1);
	if (!p) {
		logmsg("out of memory");
		_exit(1);
	}
	return p;
}

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void put_be32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
}

static uint32_t get_be32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static int poll_one(int fd, short events, int timeout_ms)
{
	struct pollfd p = { .fd = fd, .events = events };
	for (;;) {
		int r = poll(&p, 1, timeout_ms);
		if (r < 0 && errno == EINTR)
			continue;
		return r;
	}
}

static void set_nonblock(int fd)
{
	int fl = fcntl(fd, F_GETFL);
	if (fl >= 0)
		fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

/* Writes everything, also to non-blocking fds (waits for POLLOUT). 0, or -1 with errno. */
static int writev_all(int fd, struct iovec *iov, int n)
{
	while (n > 0) {
		ssize_t w = writev(fd, iov, n);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN) {
				if (poll_one(fd, POLLOUT, -1) < 0)
					return -1;
				continue;
			}
			return -1;
		}
		while (n > 0 && (size_t)w >= iov->iov_len) {
			w -= (ssize_t)iov->iov_len;
			iov++;
			n--;
		}
		if (n > 0) {
			iov->iov_base = (char *)iov->iov_base + w;
			iov->iov_len -= (size_t)w;
		}
	}
	return 0;
}

static int write_all(int fd, const void *p, size_t len)
{
	struct iovec iov = { .iov_base = (void *)p, .iov_len = len };
	return writev_all(fd, &iov, 1);
}

/* Growable byte buffer, used for records and batched frames. */
struct buf {
	char *p;
	size_t len, cap;
};

static void buf_put(struct buf *b, const void *d, size_t n)
{
	if (n == 0)
		return;
	if (b->len + n > b->cap) {
		size_t cap = b->cap ? b->cap : 256;
		while (cap < b->len + n)
			cap *= 2;
		b->p = xrealloc(b->p, cap);
		b->cap = cap;
	}
	memcpy(b->p + b->len, d, n);
	b->len += n;
}

static void rec_add(struct buf *b, const char *key, const char *val)
{
	buf_put(b, key, strlen(key));
	buf_put(b, "=", 1);
	buf_put(b, val, strlen(val) + 1); /* with the terminating NUL */
}

static void rec_addf(struct buf *b, const char *key, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void rec_addf(struct buf *b, const char *key, const char *fmt, ...)
{
	char v[64];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(v, sizeof v, fmt, ap);
	va_end(ap);
	rec_add(b, key, v);
}

static void frame_append(struct buf *b, uint8_t type, const void *payload, size_t len)
{
	uint8_t h[HDR];
	h[0] = type;
	put_be32(h + 1, (uint32_t)len);
	buf_put(b, h, HDR);
	buf_put(b, payload, len);
}

/* ------------------------------------------------------------------------ */
/* Connection state of a handler                                            */
/* ------------------------------------------------------------------------ */

static int g_sock = -1;
/* Process group started by EXEC; killed if the host goes away before EXIT. */
static pid_t g_pgid;
static int g_pty_master = -1;

/* SIGKILLs what EXEC started, unless it already exited (then g_pgid is 0). */
static void kill_group(void)
{
	if (g_pgid > 0) {
		kill(-g_pgid, SIGKILL);
		/* A program that made itself the tty's foreground group (job control) must die too. */
		if (g_pty_master >= 0) {
			pid_t fg = tcgetpgrp(g_pty_master);
			if (fg > 0 && fg != g_pgid)
				kill(-fg, SIGKILL);
		}
	}
}

/*
 * The host closed the connection (or it broke). For EXEC this is the
 * documented way to kill the process group; for everything else there is
 * simply nobody left to answer.
 */
static __attribute__((noreturn)) void disconnected(void)
{
	kill_group();
	_exit(0);
}

static void send_frame(uint8_t type, const void *payload, size_t len)
{
	uint8_t h[HDR];
	h[0] = type;
	put_be32(h + 1, (uint32_t)len);
	struct iovec iov[2] = {
		{ .iov_base = h, .iov_len = HDR },
		{ .iov_base = (void *)payload, .iov_len = len },
	};
	if (writev_all(g_sock, iov, len ? 2 : 1) < 0)
		disconnected();
}

static void send_error(int err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void send_error(int err, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	struct buf b = { 0 };
	rec_add(&b, "code", errname(err));
	rec_add(&b, "message", msg);
	send_frame(T_ERROR, b.p, b.len);
	free(b.p);
}

/*
 * Ends the handler after its final frame while the host may still be
 * sending (stdin, file content). Closing with unread data would reset the
 * connection, and the host's next write could fail before it ever read our
 * last frame. So half-close and discard input until the host hangs up, for
 * a bounded time.
 */
static __attribute__((noreturn)) void linger_exit(void)
{
	static char sink[CHUNK];
	shutdown(g_sock, SHUT_WR);
	for (int64_t deadline = now_ms() + LINGER_MS;;) {
		int64_t left = deadline - now_ms();
		if (left <= 0 || poll_one(g_sock, POLLIN, (int)left) <= 0)
			break;
		ssize_t n = read(g_sock, sink, sizeof sink);
		if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
			break;
	}
	_exit(0);
}

/* Sends ERROR and ends the handler: the connection is only good for one answer. */
static __attribute__((noreturn, format(printf, 2, 3))) void fail(int err, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	send_error(err, "%s", msg);
	kill_group(); /* an ERROR after STARTED ends the exec; its processes must not outlive it */
	linger_exit();
}

/* Frame reader over the (non-blocking) connection socket. */
struct frame {
	uint8_t type;
	uint32_t len;
	uint8_t *data;
};

static struct {
	uint8_t *buf;
	size_t start, end;
} rd;

/*
 * Reads what the socket has. >0 bytes, 0 on EOF, -1 with errno (EAGAIN: nothing yet).
 * Invalidates the data pointers of frames returned earlier (compaction).
 */
static ssize_t reader_fill(void)
{
	if (rd.start == rd.end) {
		rd.start = rd.end = 0;
	} else if (rd.start > 0) {
		memmove(rd.buf, rd.buf + rd.start, rd.end - rd.start);
		rd.end -= rd.start;
		rd.start = 0;
	}
	size_t space = HDR + MAX_FRAME - rd.end;
	if (space == 0) {
		/* Only reachable if a caller did not consume a complete frame first. */
		errno = EAGAIN;
		return -1;
	}
	for (;;) {
		ssize_t n = read(g_sock, rd.buf + rd.end, space);
		if (n < 0 && errno == EINTR)
			continue;
		if (n > 0)
			rd.end += (size_t)n;
		return n;
	}
}

/* 1: a complete frame, 0: need more bytes, -1: the header announces more than MAX_FRAME. */
static int frame_next(struct frame *f)
{
	size_t avail = rd.end - rd.start;
	if (avail < HDR)
		return 0;
	uint8_t *h = rd.buf + rd.start;
	uint32_t len = get_be32(h + 1);
	if (len > MAX_FRAME)
		return -1;
	if (avail < HDR + len)
		return 0;
	f->type = h[0];
	f->len = len;
	f->data = h + HDR;
	rd.start += HDR + len;
	return 1;
}

/* Blocks until the next frame; EOF or a broken connection ends the handler. */
static void frame_read(struct frame *f)
{
	for (;;) {
		int r = frame_next(f);
		if (r > 0)
			return;
		if (r < 0)
			fail(EINVAL, "frame longer than %u bytes", MAX_FRAME);
		ssize_t n = reader_fill();
		if (n == 0)
			disconnected();
		if (n < 0) {
			if (errno != EAGAIN)
				disconnected();
			if (poll_one(g_sock, POLLIN, -1) < 0)
				disconnected();
		}
	}
}

/* ------------------------------------------------------------------------ */
/* Records                                                                  */
/* ------------------------------------------------------------------------ */

struct kv {
	const char *key, *val;
};

struct rec {
	struct kv *kv;
	size_t n;
};

/* Parses `key=value\0`... in place. 0, or -1 if malformed. */
static int rec_parse(char *p, size_t len, struct rec *r)
{
	r->n = 0;
	r->kv = NULL;
	if (len == 0)
		return 0;
	if (p[len - 1] != '\0')
		return -1;
	size_t count = 0;
	for (size_t i = 0; i < len; i++)
		count += p[i] == '\0';
	r->kv = xmalloc(count * sizeof *r->kv);
	for (char *s = p, *end = p + len; s < end;) {
		size_t sl = strlen(s);
		char *eq = memchr(s, '=', sl);
		if (!eq || eq == s)
			return -1;
		*eq = '\0';
		r->kv[r->n].key = s;
		r->kv[r->n].val = eq + 1;
		r->n++;
		s += sl + 1;
	}
	return 0;
}

/* The last value of a key (keys that are not meant to repeat: last one wins). */
static const char *rec_get(const struct rec *r, const char *key)
{
	const char *v = NULL;
	for (size_t i = 0; i < r->n; i++)
		if (strcmp(r->kv[i].key, key) == 0)
			v = r->kv[i].val;
	return v;
}

static int parse_bool(const struct rec *r, const char *key, int *out)
{
	const char *v = rec_get(r, key);
	if (!v)
		return 0;
	if (strcmp(v, "1") == 0)
		*out = 1;
	else if (strcmp(v, "0") == 0)
		*out = 0;
	else
		return -1;
	return 0;
}

static int parse_ulong(const char *v, int base, unsigned long max, unsigned long *out)
{
	if (!*v || *v == '-' || *v == '+' || *v == ' ')
		return -1;
	char *end;
	errno = 0;
	unsigned long x = strtoul(v, &end, base);
	if (errno || *end || x > max)
		return -1;
	*out = x;
	return 0;
}

/* A required absolute path. Relative paths would resolve against init's cwd, which means nothing to the host. */
static const char *need_path(const struct rec *r, const char *key)
{
	const char *p = rec_get(r, key);
	if (!p || p[0] != '/')
		fail(EINVAL, "%s must be an absolute path", key);
	return p;
}

/* ------------------------------------------------------------------------ */
/* Users                                                                    */
/* ------------------------------------------------------------------------ */

/*
 * Users are resolved by reading the sandbox's /etc/passwd and /etc/group
 * directly: NSS in a static glibc would try to dlopen modules that the
 * image may not have (or have in an incompatible version).
 */
struct user {
	uid_t uid;
	gid_t gid;
	char *name; /* NULL for a numeric uid without a passwd entry */
	char *home;
	gid_t *groups;
	int ngroups;
};

static int all_digits(const char *s)
{
	if (!*s)
		return 0;
	for (; *s; s++)
		if (*s < '0' || *s > '9')
			return 0;
	return 1;
}

/* Splits a colon-separated line in place. Returns the number of fields. */
static int split_colon(char *line, char **f, int max)
{
	line[strcspn(line, "\n")] = '\0';
	int n = 0;
	char *s = line;
	while (n < max) {
		f[n++] = s;
		char *c = strchr(s, ':');
		if (!c)
			break;
		*c = '\0';
		s = c + 1;
	}
	return n;
}

static int skip_line(const char *line)
{
	/* comments and NIS compat entries (+name / -name) are not local users */
	return line[0] == '#' || line[0] == '+' || line[0] == '-' || line[0] == '\n' || line[0] == '\0';
}

static int lookup_passwd(const char *spec, int numeric, unsigned long id, struct user *u)
{
	FILE *f = fopen("/etc/passwd", "re");
	if (!f)
		return 0;
	char *line = NULL;
	size_t cap = 0;
	int found = 0;
	while (!found && getline(&line, &cap, f) > 0) {
		if (skip_line(line))
			continue;
		char *fl[7];
		unsigned long uid, gid;
		if (split_colon(line, fl, 7) < 7)
			continue;
		if (parse_ulong(fl[2], 10, UINT32_MAX - 1, &uid) < 0 || parse_ulong(fl[3], 10, UINT32_MAX - 1, &gid) < 0)
			continue;
		if (numeric ? uid != id : strcmp(fl[0], spec) != 0)
			continue;
		u->uid = (uid_t)uid;
		u->gid = (gid_t)gid;
		u->name = strdup(fl[0]);
		u->home = strdup(fl[5][0] ? fl[5] : "/");
		found = u->name && u->home;
	}
	free(line);
	fclose(f);
	return found;
}

static int lookup_group(const char *spec, gid_t *gid)
{
	int numeric = all_digits(spec);
	unsigned long id = 0;
	if (numeric && parse_ulong(spec, 10, UINT32_MAX - 1, &id) < 0)
		return 0;
	if (numeric) {
		*gid = (gid_t)id;
		return 1;
	}
	FILE *f = fopen("/etc/group", "re");
	if (!f)
		return 0;
	char *line = NULL;
	size_t cap = 0;
	int found = 0;
	while (!found && getline(&line, &cap, f) > 0) {
		char *fl[4];
		unsigned long g;
		if (skip_line(line) || split_colon(line, fl, 4) < 3)
			continue;
		if (strcmp(fl[0], spec) == 0 && parse_ulong(fl[2], 10, UINT32_MAX - 1, &g) == 0) {
			*gid = (gid_t)g;
			found = 1;
		}
	}
	free(line);
	fclose(f);
	return found;
}

/* Primary group first, then every /etc/group entry that lists the user. */
static void collect_groups(struct user *u)
{
	int cap = 16;
	u->groups = xmalloc((size_t)cap * sizeof(gid_t));
	u->groups[0] = u->gid;
	u->ngroups = 1;
	if (!u->name)
		return;
	FILE *f = fopen("/etc/group", "re");
	if (!f)
		return;
	char *line = NULL;
	size_t lcap = 0;
	while (getline(&line, &lcap, f) > 0 && u->ngroups < NGROUPS_MAX) {
		char *fl[4];
		unsigned long g;
		if (skip_line(line) || split_colon(line, fl, 4) < 4)
			continue;
		if (parse_ulong(fl[2], 10, UINT32_MAX - 1, &g) < 0)
			continue;
		int member = 0;
		for (char *save = NULL, *m = strtok_r(fl[3], ",", &save); m; m = strtok_r(NULL, ",", &save))
			if (strcmp(m, u->name) == 0)
				member = 1;
		if (!member)
			continue;
		int dup = 0;
		for (int i = 0; i < u->ngroups; i++)
			dup |= u->groups[i] == (gid_t)g;
		if (dup)
			continue;
		if (u->ngroups == cap) {
			cap *= 2;
			u->groups = xrealloc(u->groups, (size_t)cap * sizeof(gid_t));
		}
		u->groups[u->ngroups++] = (gid_t)g;
	}
	free(line);
	fclose(f);
}

/*
 * `user` is a name or numeric uid, optionally `:group`. A numeric uid
 * without a passwd entry is allowed (as in OCI runtimes); it gets gid = uid
 * rather than root's group and HOME=/.
 */
static void resolve_user(const char *spec, struct user *u)
{
	memset(u, 0, sizeof *u);
	char *s = strdup(spec);
	if (!s)
		fail(ENOMEM, "out of memory");
	char *group = strchr(s, ':');
	if (group)
		*group++ = '\0';
	if (!*s)
		fail(EINVAL, "empty user");
	int numeric = all_digits(s);
	unsigned long id = 0;
	if (numeric && parse_ulong(s, 10, UINT32_MAX - 1, &id) < 0)
		fail(EINVAL, "invalid uid: %s", s);
	if (!lookup_passwd(s, numeric, id, u)) {
		if (numeric) {
			u->uid = (uid_t)id;
			u->gid = (gid_t)id;
		} else if (strcmp(s, "root") == 0) {
			u->uid = 0; /* images without /etc/passwd (scratch) still know root */
			u->gid = 0;
			u->name = "root";
		} else {
			fail(EINVAL, "unknown user: %s", s);
		}
		u->home = u->uid == 0 ? "/root" : "/";
	}
	if (group && *group && !lookup_group(group, &u->gid))
		fail(EINVAL, "unknown group: %s", group);
	collect_groups(u);
}

/* 0 or an errno. Used by handlers (file ops) and by the EXEC child. */
static int become_user(const struct user *u)
{
	if (geteuid() != 0)
		return u->uid == geteuid() ? 0 : EPERM;
	/* setgroups is denied in some user namespaces; the other ids still must change. */
	if (setgroups((size_t)u->ngroups, u->groups) < 0 && errno != EPERM)
		return errno;
	if (setresgid(u->gid, u->gid, u->gid) < 0)
		return errno;
	if (setresuid(u->uid, u->uid, u->uid) < 0)
		return errno;
	return 0;
}

/* ------------------------------------------------------------------------ */
/* EXEC                                                                     */
/* ------------------------------------------------------------------------ */

struct exec_spec {
	char **argv;
	char **envp;
	const char *cwd;
	struct user user;
	int tty;
	char slave[128];
	int in[2], out[2], err[2]; /* pipes (no tty) */
	int errpipe[2];
};

/* What the child tells the handler when it cannot start the program. */
struct start_failure {
	int32_t stage;
	int32_t err;
};

enum { ST_TTY, ST_USER, ST_CWD, ST_EXEC };

static int env_has(char **env, size_t n, const char *key)
{
	size_t kl = strlen(key);
	for (size_t i = 0; i < n; i++)
		if (strncmp(env[i], key, kl) == 0 && env[i][kl] == '=')
			return 1;
	return 0;
}

static char *env_pair(const char *k, const char *v)
{
	size_t kl = strlen(k), vl = strlen(v);
	char *s = xmalloc(kl + vl + 2);
	memcpy(s, k, kl);
	s[kl] = '=';
	memcpy(s + kl + 1, v, vl + 1);
	return s;
}

/*
 * The program's environment is exactly the request's env (the host composes
 * the sandbox's environment), plus what a login would give when missing.
 * A repeated name: the last one wins.
 */
static char **build_env(const struct rec *req, const struct user *u, int tty)
{
	size_t n = 0;
	for (size_t i = 0; i < req->n; i++)
		n += strcmp(req->kv[i].key, "env") == 0;
	char **env = xmalloc((n + 6) * sizeof(char *));
	size_t m = 0;
	for (size_t i = 0; i < req->n; i++) {
		if (strcmp(req->kv[i].key, "env") != 0)
			continue;
		const char *e = req->kv[i].val;
		const char *eq = strchr(e, '=');
		if (!eq || eq == e)
			fail(EINVAL, "env entries must be NAME=VALUE");
		size_t kl = (size_t)(eq - e) + 1;
		size_t j;
		for (j = 0; j < m; j++)
			if (strncmp(env[j], e, kl) == 0)
				break;
		env[j] = (char *)e;
		if (j == m)
			m++;
	}
	if (!env_has(env, m, "PATH"))
		env[m++] = env_pair("PATH", DEFAULT_PATH);
	if (!env_has(env, m, "HOME"))
		env[m++] = env_pair("HOME", u->home);
	if (u->name && !env_has(env, m, "USER"))
		env[m++] = env_pair("USER", u->name);
	if (u->name && !env_has(env, m, "LOGNAME"))
		env[m++] = env_pair("LOGNAME", u->name);
	if (tty && !env_has(env, m, "TERM"))
		env[m++] = env_pair("TERM", "xterm-256color");
	env[m] = NULL;
	return env;
}

static const char *env_get(char **env, const char *key)
{
	size_t kl = strlen(key);
	for (; *env; env++)
		if (strncmp(*env, key, kl) == 0 && (*env)[kl] == '=')
			return *env + kl + 1;
	return NULL;
}

/* execve, falling back to /bin/sh for scripts without #! like execvp does. */
static int try_exec(const char *path, char **argv, char **envp)
{
	execve(path, argv, envp);
	int e = errno;
	if (e == ENOEXEC) {
		size_t argc = 0;
		while (argv[argc])
			argc++;
		char **sh = malloc((argc + 2) * sizeof(char *));
		if (sh) {
			sh[0] = "/bin/sh";
			sh[1] = (char *)path;
			memcpy(sh + 2, argv + 1, argc * sizeof(char *));
			execve("/bin/sh", sh, envp);
		}
	}
	return e;
}

/*
 * PATH search with the program's own PATH (execvpe would use ours). Returns
 * the errno to report: EACCES if some candidate was not executable, else
 * ENOENT, or the first "real" error.
 */
static int exec_search(char **argv, char **envp)
{
	const char *file = argv[0];
	if (!*file)
		return ENOENT;
	if (strchr(file, '/'))
		return try_exec(file, argv, envp);
	const char *path = env_get(envp, "PATH");
	if (!path)
		path = DEFAULT_PATH;
	size_t fl = strlen(file);
	char *cand = malloc(strlen(path) + fl + 2);
	if (!cand)
		return ENOMEM;
	int saw_eacces = 0;
	for (const char *p = path;; p++) {
		const char *colon = strchrnul(p, ':');
		size_t dl = (size_t)(colon - p);
		if (dl == 0) {
			memcpy(cand, file, fl + 1); /* empty PATH element: current directory */
		} else {
			memcpy(cand, p, dl);
			cand[dl] = '/';
			memcpy(cand + dl + 1, file, fl + 1);
		}
		int e = try_exec(cand, argv, envp);
		switch (e) {
		case EACCES:
			saw_eacces = 1;
			/* fall through */
		case ENOENT: case ENOTDIR: case ESTALE: case ENODEV: case ETIMEDOUT: case ENAMETOOLONG: case ELOOP:
			break;
		default:
			return e;
		}
		p = colon;
		if (!*p)
			break;
	}
	return saw_eacces ? EACCES : ENOENT;
}

static __attribute__((noreturn)) void child_fail(int fd, int stage, int err)
{
	struct start_failure sf = { stage, err };
	if (write(fd, &sf, sizeof sf) < 0) { /* the handler then reports a generic failure */ }
	_exit(127);
}

/* Runs in the forked child; never returns. */
static __attribute__((noreturn)) void exec_child(struct exec_spec *s)
{
	int ep = s->errpipe[1];
	/* Ignored signals and the blocked mask survive execve: give the program a clean slate. */
	sigset_t none;
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	signal(SIGPIPE, SIG_DFL);

	if (s->tty) {
		/* A new session so the pty becomes the controlling terminal and ^C/SIGHUP reach the program. */
		if (setsid() < 0)
			child_fail(ep, ST_TTY, errno);
		/* Opened before dropping privileges: the slave belongs to the uid that created the pty. */
		int fd = open(s->slave, O_RDWR);
		if (fd < 0)
			child_fail(ep, ST_TTY, errno);
		if (ioctl(fd, TIOCSCTTY, 0) < 0)
			child_fail(ep, ST_TTY, errno);
		if (fchown(fd, s->user.uid, (gid_t)-1) < 0) { /* programs that reopen the tty by name then fail, nothing worse */ }
		if (dup2(fd, 0) < 0 || dup2(fd, 1) < 0 || dup2(fd, 2) < 0)
			child_fail(ep, ST_TTY, errno);
		if (fd > 2)
			close(fd);
	} else {
		/* Own process group: SIGNAL and kill-on-disconnect then reach its children too. */
		setpgid(0, 0);
		if (dup2(s->in[0], 0) < 0 || dup2(s->out[1], 1) < 0 || dup2(s->err[1], 2) < 0)
			child_fail(ep, ST_TTY, errno);
	}

	int e = become_user(&s->user);
	if (e)
		child_fail(ep, ST_USER, e);

	/* cwd is entered as the user, so the user's permissions apply. */
	if (s->cwd) {
		if (chdir(s->cwd) < 0)
			child_fail(ep, ST_CWD, errno);
	} else if (chdir(s->user.home) < 0 && chdir("/") < 0) {
		child_fail(ep, ST_CWD, errno);
	}

	child_fail(ep, ST_EXEC, exec_search(s->argv, s->envp));
}

/* Stdin bytes accepted from the host but not yet taken by the program. */
static struct {
	uint8_t *p;
	size_t head, len, cap;
} q;

static void q_push(const uint8_t *d, size_t n)
{
	if (q.head + q.len + n > q.cap) {
		if (q.head) {
			memmove(q.p, q.p + q.head, q.len);
			q.head = 0;
		}
		if (q.len + n > q.cap) {
			size_t cap = q.cap ? q.cap : CHUNK;
			while (cap < q.len + n)
				cap *= 2;
			q.p = xrealloc(q.p, cap);
			q.cap = cap;
		}
	}
	memcpy(q.p + q.head + q.len, d, n);
	q.len += n;
}

struct exec_io {
	int tty;
	int in;      /* stdin (pipe write end, or the pty master); -1 once closed */
	int out;     /* stdout pipe read end, or the pty master; -1 at EOF */
	int err;     /* stderr pipe read end; -1 at EOF or with a tty */
	int stdin_eof; /* the host sent EOF: close stdin once the queue is flushed */
	pid_t pid;
	int exited;
	int status;
	int sfd;
};

static void stdin_close(struct exec_io *io)
{
	if (io->in < 0)
		return;
	if (!io->tty)
		close(io->in);
	io->in = -1;
	q.head = q.len = 0;
}

/* Writes as much queued stdin as the program takes without blocking. */
static void stdin_flush(struct exec_io *io)
{
	while (io->in >= 0 && q.len > 0) {
		ssize_t w = write(io->in, q.p + q.head, q.len);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN)
				return;
			/* EPIPE/EIO: the program closed stdin; further input has nowhere to go. */
			stdin_close(io);
			return;
		}
		q.head += (size_t)w;
		q.len -= (size_t)w;
	}
	if (io->in >= 0 && q.len == 0 && io->stdin_eof) {
		if (io->tty) {
			/* A tty has no "close" for input: send the EOF character, as typing ^D would. */
			struct termios t;
			char c = 4;
			if (tcgetattr(io->in, &t) == 0 && t.c_cc[VEOF] != _POSIX_VDISABLE)
				c = (char)t.c_cc[VEOF];
			if (write(io->in, &c, 1) < 0) { /* program gone; EXIT follows */ }
		}
		stdin_close(io);
	}
}

/* Queue, then write what the program takes now: one write path for every byte of stdin. */
static void stdin_data(struct exec_io *io, const uint8_t *d, size_t n)
{
	if (io->in < 0 || io->stdin_eof || n == 0)
		return;
	q_push(d, n);
	stdin_flush(io);
}

static void signal_group(struct exec_io *io, int sig)
{
	kill(-io->pid, sig);
	if (io->tty) {
		/* With a tty, what the user "types" at is the foreground group, which job control may have changed. */
		pid_t fg = tcgetpgrp(io->out);
		if (fg > 0 && fg != io->pid)
			kill(-fg, sig);
	}
}

static void handle_host_frame(struct exec_io *io, const struct frame *f)
{
	switch (f->type) {
	case T_DATA:
		stdin_data(io, f->data, f->len);
		break;
	case T_EOF:
		if (f->len != 0)
			fail(EINVAL, "EOF frame with a payload");
		io->stdin_eof = 1;
		stdin_flush(io);
		break;
	case T_SIGNAL: {
		if (f->len != 4)
			fail(EINVAL, "SIGNAL payload must be 4 bytes");
		uint32_t sig = get_be32(f->data);
		if (sig < 1 || sig >= (uint32_t)NSIG)
			fail(EINVAL, "invalid signal %u", sig);
		signal_group(io, (int)sig);
		break;
	}
	case T_RESIZE: {
		if (f->len != 4)
			fail(EINVAL, "RESIZE payload must be 4 bytes");
		if (io->tty) {
			struct winsize ws = {
				.ws_row = (unsigned short)(f->data[0] << 8 | f->data[1]),
				.ws_col = (unsigned short)(f->data[2] << 8 | f->data[3]),
			};
			/* The kernel sends SIGWINCH to the foreground group itself. */
			ioctl(io->out, TIOCSWINSZ, &ws);
		}
		break;
	}
	default:
		fail(EINVAL, "unexpected frame type 0x%02x during EXEC", f->type);
	}
}

static void exec_signals(struct exec_io *io)
{
	struct signalfd_siginfo si;
	while (read(io->sfd, &si, sizeof si) == (ssize_t)sizeof si) {
		/* SIGTERM/SIGINT come from init shutting the sandbox down: pass them on. */
		if (si.ssi_signo != SIGCHLD && !io->exited)
			signal_group(io, (int)si.ssi_signo);
	}
	if (!io->exited) {
		int st;
		pid_t r = waitpid(io->pid, &st, WNOHANG);
		if (r == io->pid) {
			io->exited = 1;
			io->status = st;
		}
	}
}

/* Forwards one chunk of output. */
static void pump(int *fd, uint8_t type)
{
	static uint8_t buf[CHUNK];
	for (;;) {
		ssize_t n = read(*fd, buf, sizeof buf);
		if (n > 0) {
			send_frame(type, buf, (size_t)n);
			return;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN)
			return;
		/* EOF, or EIO from a pty master once every slave fd is closed. The master stays open for tcgetpgrp. */
		if (*fd != g_pty_master)
			close(*fd);
		*fd = -1;
		return;
	}
}

static __attribute__((noreturn)) void exec_finish(struct exec_io *io)
{
	/*
	 * Output written before the exit is already in the pipe/tty; keep
	 * forwarding until every writer has closed it (EOF/EIO) so nothing is
	 * lost, bounded by DRAIN_MS for background processes holding it open.
	 */
	int64_t deadline = now_ms() + DRAIN_MS;
	while (io->out >= 0 || io->err >= 0) {
		int64_t left = deadline - now_ms();
		if (left <= 0)
			break;
		struct pollfd pf[2];
		int n = 0, i_out = -1, i_err = -1;
		if (io->out >= 0) {
			pf[n] = (struct pollfd){ .fd = io->out, .events = POLLIN };
			i_out = n++;
		}
		if (io->err >= 0) {
			pf[n] = (struct pollfd){ .fd = io->err, .events = POLLIN };
			i_err = n++;
		}
		int r = poll(pf, (nfds_t)n, (int)left);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		if (i_out >= 0 && pf[i_out].revents)
			pump(&io->out, T_STDOUT);
		if (i_err >= 0 && pf[i_err].revents)
			pump(&io->err, T_STDERR);
	}
	uint8_t p[8];
	int st = io->status;
	put_be32(p, (uint32_t)(WIFEXITED(st) ? WEXITSTATUS(st) : -1));
	put_be32(p + 4, (uint32_t)(WIFSIGNALED(st) ? WTERMSIG(st) : 0));
	/* The program is done; what it left running in the background is not ours to kill. */
	g_pgid = 0;
	send_frame(T_EXIT, p, sizeof p);
	linger_exit();
}

static __attribute__((noreturn)) void op_exec(struct rec *req)
{
	struct exec_spec s;
	memset(&s, 0, sizeof s);

	size_t argc = 0;
	for (size_t i = 0; i < req->n; i++)
		argc += strcmp(req->kv[i].key, "arg") == 0;
	if (argc == 0)
		fail(EINVAL, "EXEC needs at least one arg");
	s.argv = xmalloc((argc + 1) * sizeof(char *));
	argc = 0;
	for (size_t i = 0; i < req->n; i++)
		if (strcmp(req->kv[i].key, "arg") == 0)
			s.argv[argc++] = (char *)req->kv[i].val;
	s.argv[argc] = NULL;

	s.cwd = rec_get(req, "cwd");
	if (s.cwd && s.cwd[0] != '/')
		fail(EINVAL, "cwd must be an absolute path");
	if (parse_bool(req, "tty", &s.tty) < 0)
		fail(EINVAL, "tty must be 0 or 1");
	unsigned long rows = 24, cols = 80;
	const char *v;
	if ((v = rec_get(req, "rows")) && parse_ulong(v, 10, 65535, &rows) < 0)
		fail(EINVAL, "invalid rows");
	if ((v = rec_get(req, "cols")) && parse_ulong(v, 10, 65535, &cols) < 0)
		fail(EINVAL, "invalid cols");
	const char *user = rec_get(req, "user");
	resolve_user(user ? user : "0", &s.user);
	s.envp = build_env(req, &s.user, s.tty);

	struct exec_io io = { .tty = s.tty, .in = -1, .out = -1, .err = -1 };
	if (s.tty) {
		int m = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
		if (m < 0)
			fail(errno, "cannot allocate a pty: %s", strerror(errno));
		if (grantpt(m) < 0 || unlockpt(m) < 0 || ptsname_r(m, s.slave, sizeof s.slave) != 0)
			fail(errno, "cannot set up the pty: %s", strerror(errno));
		struct winsize ws = { .ws_row = (unsigned short)(rows ? rows : 24), .ws_col = (unsigned short)(cols ? cols : 80) };
		ioctl(m, TIOCSWINSZ, &ws);
		set_nonblock(m);
		io.in = io.out = g_pty_master = m;
	} else {
		if (pipe2(s.in, O_CLOEXEC) < 0 || pipe2(s.out, O_CLOEXEC) < 0 || pipe2(s.err, O_CLOEXEC) < 0)
			fail(errno, "pipe: %s", strerror(errno));
		/* Only our ends: O_NONBLOCK is per open file, the program keeps blocking pipes. */
		set_nonblock(s.in[1]);
		set_nonblock(s.out[0]);
		set_nonblock(s.err[0]);
		io.in = s.in[1];
		io.out = s.out[0];
		io.err = s.err[0];
	}
	/* CLOEXEC: a successful execve closes it, so EOF without data means "started". */
	if (pipe2(s.errpipe, O_CLOEXEC) < 0)
		fail(errno, "pipe: %s", strerror(errno));

	/* Created before fork (SIGCHLD is still blocked from init) so the exit cannot be missed. */
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGCHLD);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigprocmask(SIG_BLOCK, &set, NULL);
	io.sfd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
	if (io.sfd < 0)
		fail(errno, "signalfd: %s", strerror(errno));

	pid_t pid = fork();
	if (pid < 0)
		fail(errno, "fork: %s", strerror(errno));
	if (pid == 0)
		exec_child(&s);

	io.pid = pid;
	/* Also set here, so a SIGNAL or disconnect right after STARTED cannot race the child's own setpgid. */
	if (!s.tty)
		setpgid(pid, pid);
	g_pgid = pid;
	close(s.errpipe[1]);
	if (!s.tty) {
		close(s.in[0]);
		close(s.out[1]);
		close(s.err[1]);
	}

	struct start_failure sf;
	ssize_t n;
	do
		n = read(s.errpipe[0], &sf, sizeof sf);
	while (n < 0 && errno == EINTR);
	close(s.errpipe[0]);
	if (n != 0) {
		waitpid(pid, NULL, 0);
		g_pgid = 0; /* nothing started */
		if (n != (ssize_t)sizeof sf)
			fail(EIO, "the program could not be started");
		static const char *const what[] = { "cannot set up the terminal", "cannot switch user", "cannot enter the working directory", "cannot execute" };
		const char *obj = sf.stage == ST_CWD ? (s.cwd ? s.cwd : s.user.home) : s.argv[0];
		fail(sf.err, "%s %s: %s", sf.stage >= 0 && sf.stage <= ST_EXEC ? what[sf.stage] : "failed", obj, strerror(sf.err));
	}

	uint8_t pidb[4];
	put_be32(pidb, (uint32_t)pid);
	send_frame(T_STARTED, pidb, 4);

	/* Stdin frames that arrived with the request are already buffered: poll would never report them. */
	{
		struct frame f;
		int fr;
		while ((fr = frame_next(&f)) > 0)
			handle_host_frame(&io, &f);
		if (fr < 0)
			fail(EINVAL, "frame longer than %u bytes", MAX_FRAME);
	}

	for (;;) {
		if (io.exited)
			exec_finish(&io);
		struct pollfd pf[5];
		int np = 0, i_sock, i_sig, i_out = -1, i_err = -1, i_in = -1;
		/* With a full stdin queue we stop reading the host; POLLHUP still reports a disconnect. */
		short sock_ev = q.len < STDIN_QUEUE_MAX ? POLLIN : 0;
		pf[np] = (struct pollfd){ .fd = io.sfd, .events = POLLIN };
		i_sig = np++;
		pf[np] = (struct pollfd){ .fd = g_sock, .events = sock_ev };
		i_sock = np++;
		if (io.out >= 0) {
			pf[np] = (struct pollfd){ .fd = io.out, .events = POLLIN };
			i_out = np++;
		}
		if (io.err >= 0) {
			pf[np] = (struct pollfd){ .fd = io.err, .events = POLLIN };
			i_err = np++;
		}
		if (io.in >= 0 && q.len > 0) {
			pf[np] = (struct pollfd){ .fd = io.in, .events = POLLOUT };
			i_in = np++;
		}
		if (poll(pf, (nfds_t)np, -1) < 0) {
			if (errno == EINTR)
				continue;
			disconnected();
		}
		if (pf[i_sig].revents)
			exec_signals(&io);
		if (pf[i_sock].revents) {
			if (!sock_ev)
				disconnected(); /* POLLHUP/POLLERR */
			ssize_t r = reader_fill();
			if (r == 0 || (r < 0 && errno != EAGAIN))
				disconnected();
			struct frame f;
			int fr;
			while ((fr = frame_next(&f)) > 0)
				handle_host_frame(&io, &f);
			if (fr < 0)
				fail(EINVAL, "frame longer than %u bytes", MAX_FRAME);
		}
		if (i_out >= 0 && pf[i_out].revents)
			pump(&io.out, T_STDOUT);
		if (i_err >= 0 && pf[i_err].revents)
			pump(&io.err, T_STDERR);
		if (i_in >= 0 && pf[i_in].revents)
			stdin_flush(&io);
		if (io.tty && io.out < 0)
			io.in = -1; /* the pty is gone (EIO): nothing can be typed anymore */
	}
}

/* ------------------------------------------------------------------------ */
/* File operations                                                          */
/* ------------------------------------------------------------------------ */

static const char *type_name(mode_t m)
{
	if (S_ISREG(m))
		return "file";
	if (S_ISDIR(m))
		return "dir";
	if (S_ISLNK(m))
		return "symlink";
	return "other";
}

/* ENTRY/OK record. dirfd+name locate the entry (for readlinkat). */
static void entry_record(struct buf *b, int dirfd, const char *at, const char *name, const struct stat *st)
{
	rec_add(b, "name", name);
	rec_add(b, "type", type_name(st->st_mode));
	rec_addf(b, "size", "%lld", (long long)st->st_size);
	rec_addf(b, "mode", "%o", (unsigned)(st->st_mode & 07777));
	rec_addf(b, "mtime", "%lld", (long long)st->st_mtim.tv_sec);
	rec_addf(b, "uid", "%u", (unsigned)st->st_uid);
	rec_addf(b, "gid", "%u", (unsigned)st->st_gid);
	if (S_ISLNK(st->st_mode)) {
		char target[PATH_MAX + 1];
		ssize_t n = readlinkat(dirfd, at, target, PATH_MAX);
		if (n >= 0) {
			target[n] = '\0';
			rec_add(b, "target", target);
		}
	}
}

/* The last path component, "/" for the root. */
static char *base_name(const char *path)
{
	size_t len = strlen(path);
	while (len > 1 && path[len - 1] == '/')
		len--;
	size_t start = len;
	while (start > 0 && path[start - 1] != '/')
		start--;
	if (start == len)
		return strdup("/");
	return strndup(path + start, len - start);
}

/* Sends `type` (OK or ENTRY) describing path without following a final symlink. */
static void send_entry_of(uint8_t type, const char *path)
{
	struct stat st;
	if (lstat(path, &st) < 0)
		fail(errno, "%s: %s", path, strerror(errno));
	char *name = base_name(path);
	struct buf b = { 0 };
	entry_record(&b, AT_FDCWD, path, name ? name : "", &st);
	send_frame(type, b.p, b.len);
	free(b.p);
	free(name);
}

/* mkdir -p: missing intermediate directories get 0755, the last one `mode`. 0 or errno. */
static int mkdir_p(const char *path, mode_t mode)
{
	size_t len = strlen(path);
	if (len >= PATH_MAX)
		return ENAMETOOLONG;
	char tmp[PATH_MAX];
	memcpy(tmp, path, len + 1);
	while (len > 1 && tmp[len - 1] == '/')
		tmp[--len] = '\0';
	for (char *p = tmp + 1;; p++) {
		if (*p != '/' && *p != '\0')
			continue;
		char c = *p;
		*p = '\0';
		if (p[-1] != '/' && mkdir(tmp, c ? 0755 : mode) < 0) {
			int e = errno;
			struct stat st;
			if (e != EEXIST)
				return e;
			if (stat(tmp, &st) < 0 || !S_ISDIR(st.st_mode))
				return c ? ENOTDIR : EEXIST;
		}
		if (!c)
			return 0;
		*p = c;
	}
}

static void op_read(const char *path)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
	if (fd < 0)
		fail(errno, "%s: %s", path, strerror(errno));
	struct stat st;
	if (fstat(fd, &st) == 0 && S_ISDIR(st.st_mode))
		fail(EISDIR, "%s: %s", path, strerror(EISDIR));
	static uint8_t buf[CHUNK];
	for (;;) {
		ssize_t n = read(fd, buf, sizeof buf);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			fail(errno, "%s: %s", path, strerror(errno));
		if (n == 0)
			break;
		send_frame(T_STDOUT, buf, (size_t)n);
	}
	send_frame(T_END, NULL, 0);
}

/* The optional octal `mode` of a request (permission bits only). */
static mode_t req_mode(const struct rec *req, unsigned long dflt)
{
	unsigned long mode = dflt;
	const char *mv = rec_get(req, "mode");
	if (mv && parse_ulong(mv, 8, 07777, &mode) < 0)
		fail(EINVAL, "invalid mode: %s", mv);
	return (mode_t)mode;
}

static void op_write(const struct rec *req, const char *path)
{
	int append = 0;
	mode_t mode = req_mode(req, 0644);
	if (parse_bool(req, "append", &append) < 0)
		fail(EINVAL, "append must be 0 or 1");
	int flags = O_WRONLY | O_CREAT | O_CLOEXEC | O_NOCTTY | (append ? O_APPEND : O_TRUNC);
	int fd = open(path, flags, (mode_t)mode);
	if (fd < 0 && errno == ENOENT) {
		/* Parents are only created on demand: the common case pays no extra syscalls. */
		char *dir = strdup(path);
		if (!dir)
			fail(ENOMEM, "out of memory");
		char *slash = strrchr(dir, '/');
		if (slash && slash != dir) {
			*slash = '\0';
			int e = mkdir_p(dir, 0755);
			if (e)
				fail(e, "%s: %s", dir, strerror(e));
		}
		free(dir);
		fd = open(path, flags, (mode_t)mode);
	}
	if (fd < 0)
		fail(errno, "%s: %s", path, strerror(errno));
	/* An explicit mode also applies to a file that already existed (open only uses it on creation). */
	if (rec_get(req, "mode") && fchmod(fd, (mode_t)mode) < 0) { /* not the owner: keep the existing mode */ }
	for (;;) {
		struct frame f;
		frame_read(&f);
		if (f.type == T_EOF)
			break;
		if (f.type != T_DATA)
			fail(EINVAL, "unexpected frame type 0x%02x during WRITE", f.type);
		if (write_all(fd, f.data, f.len) < 0)
			fail(errno, "%s: %s", path, strerror(errno));
	}
	struct stat st;
	if (fstat(fd, &st) < 0)
		fail(errno, "%s: %s", path, strerror(errno));
	if (close(fd) < 0 && errno != EINTR)
		fail(errno, "%s: %s", path, strerror(errno));
	char *name = base_name(path);
	struct buf b = { 0 };
	entry_record(&b, AT_FDCWD, path, name ? name : "", &st);
	send_frame(T_OK, b.p, b.len);
}

static void op_list(const char *path)
{
	DIR *d = opendir(path);
	if (!d)
		fail(errno, "%s: %s", path, strerror(errno));
	int dfd = dirfd(d);
	/* Entries are batched into few writes: directories can be large. */
	struct buf out = { 0 }, rec = { 0 };
	for (;;) {
		errno = 0;
		struct dirent *de = readdir(d);
		if (!de) {
			if (errno)
				fail(errno, "%s: %s", path, strerror(errno));
			break;
		}
		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		struct stat st;
		if (fstatat(dfd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0)
			continue; /* removed since readdir */
		rec.len = 0;
		entry_record(&rec, dfd, de->d_name, de->d_name, &st);
		frame_append(&out, T_ENTRY, rec.p, rec.len);
		if (out.len >= LIST_BATCH) {
			if (write_all(g_sock, out.p, out.len) < 0)
				disconnected();
			out.len = 0;
		}
	}
	frame_append(&out, T_END, NULL, 0);
	if (write_all(g_sock, out.p, out.len) < 0)
		disconnected();
}

/* rm -r below dirfd, without following symlinks. 0 or errno. */
static int rm_tree(int dirfd, const char *name)
{
	struct stat st;
	if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
		return errno;
	if (!S_ISDIR(st.st_mode))
		return unlinkat(dirfd, name, 0) < 0 ? errno : 0;
	int fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return errno;
	DIR *d = fdopendir(fd);
	if (!d) {
		int e = errno;
		close(fd);
		return e;
	}
	int err = 0;
	/*
	 * Some filesystems may skip entries when the directory changes during
	 * readdir; a further pass picks up what is left.
	 */
	for (int pass = 0; pass < 3; pass++) {
		rewinddir(d);
		for (;;) {
			errno = 0;
			struct dirent *de = readdir(d);
			if (!de) {
				err = errno;
				break;
			}
			if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
				continue;
			int e = rm_tree(fd, de->d_name);
			if (e && e != ENOENT) {
				err = e;
				break;
			}
		}
		if (err)
			break;
		if (unlinkat(dirfd, name, AT_REMOVEDIR) == 0) {
			closedir(d);
			return 0;
		}
		err = errno;
		if (err != ENOTEMPTY)
			break;
		err = 0;
	}
	closedir(d);
	return err ? err : ENOTEMPTY;
}

static void op_remove(const struct rec *req, const char *path)
{
	int recursive = 0;
	if (parse_bool(req, "recursive", &recursive) < 0)
		fail(EINVAL, "recursive must be 0 or 1");
	struct stat st, root;
	if (lstat(path, &st) < 0)
		fail(errno, "%s: %s", path, strerror(errno));
	/* Compared by inode so "/.", "//" or "/a/.." are refused too. */
	if (stat("/", &root) == 0 && st.st_dev == root.st_dev && st.st_ino == root.st_ino)
		fail(EPERM, "refusing to remove /");
	int e = 0;
	if (!S_ISDIR(st.st_mode))
		e = unlink(path) < 0 ? errno : 0;
	else if (recursive)
		e = rm_tree(AT_FDCWD, path);
	else
		e = rmdir(path) < 0 ? errno : 0;
	if (e == EEXIST)
		e = ENOTEMPTY; /* POSIX allows either for a non-empty directory */
	if (e)
		fail(e, "%s: %s", path, strerror(e));
	send_frame(T_OK, NULL, 0);
}

static void op_mkdir(const struct rec *req, const char *path)
{
	int parents = 0;
	mode_t mode = req_mode(req, 0755);
	if (parse_bool(req, "parents", &parents) < 0)
		fail(EINVAL, "parents must be 0 or 1");
	int e = parents ? mkdir_p(path, (mode_t)mode) : (mkdir(path, (mode_t)mode) < 0 ? errno : 0);
	if (e)
		fail(e, "%s: %s", path, strerror(e));
	send_entry_of(T_OK, path);
}

/* ------------------------------------------------------------------------ */
/* DIAL                                                                     */
/* ------------------------------------------------------------------------ */

/* Connects to the requested loopback port. Returns the connected socket or ends the handler with ERROR. */
static int dial_connect(const struct rec *req)
{
	const char *host = rec_get(req, "host");
	const char *pv = rec_get(req, "port");
	unsigned long port = 0;
	if (!pv || parse_ulong(pv, 10, 65535, &port) < 0 || port == 0)
		fail(EINVAL, "port must be 1..65535");
	union {
		struct sockaddr sa;
		struct sockaddr_in in;
		struct sockaddr_in6 in6;
	} a;
	memset(&a, 0, sizeof a);
	socklen_t alen;
	/* Only the sandbox's own loopback: DIAL must not become a way out of the sandbox's network policy. */
	if (!host || strcmp(host, "127.0.0.1") == 0) {
		host = "127.0.0.1";
		a.in.sin_family = AF_INET;
		a.in.sin_port = htons((uint16_t)port);
		a.in.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		alen = sizeof a.in;
	} else if (strcmp(host, "::1") == 0) {
		a.in6.sin6_family = AF_INET6;
		a.in6.sin6_port = htons((uint16_t)port);
		a.in6.sin6_addr = in6addr_loopback;
		alen = sizeof a.in6;
	} else {
		fail(EINVAL, "host must be 127.0.0.1 or ::1, not %s", host);
	}
	int fd = socket(a.sa.sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		fail(errno, "socket: %s", strerror(errno));
	/* We forward whatever arrives at once; Nagle would only add latency (WebSockets, small HTTP exchanges). */
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	if (connect(fd, &a.sa, alen) == 0)
		return fd;
	if (errno != EINPROGRESS)
		fail(errno, "connect to %s port %lu: %s", host, port, strerror(errno));
	for (int64_t deadline = now_ms() + DIAL_TIMEOUT_MS;;) {
		int64_t left = deadline - now_ms();
		if (left <= 0)
			fail(ETIMEDOUT, "connect to %s port %lu: no answer within %d ms", host, port, DIAL_TIMEOUT_MS);
		/* The host socket is watched for hangups only: a caller that gave up must not keep us here. */
		struct pollfd pf[2] = { { .fd = fd, .events = POLLOUT }, { .fd = g_sock, .events = 0 } };
		int r = poll(pf, 2, (int)left);
		if (r < 0 && errno != EINTR)
			fail(errno, "poll: %s", strerror(errno));
		if (r <= 0)
			continue;
		if (pf[1].revents)
			_exit(0);
		if (pf[0].revents)
			break;
	}
	int err = 0;
	socklen_t elen = sizeof err;
	if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen) < 0)
		err = errno;
	if (err)
		fail(err, "connect to %s port %lu: %s", host, port, strerror(err));
	return fd;
}

/* One direction of a dialed connection: bytes read from `from` wait in buf until `to` takes them. */
struct flow {
	int from, to;
	uint8_t *buf;
	size_t off, len, cap;
	int eof;  /* `from` has nothing more to give */
	int done; /* `to` is shut down for writing, or cannot receive anymore */
};

/*
 * An error or reset on either side ends both at once. The TCP peer gets a
 * reset too (linger 0) rather than a clean FIN that would pass a broken
 * stream off as complete; the host sees the unix socket close.
 */
static __attribute__((noreturn)) void relay_abort(int tcp)
{
	struct linger lg = { .l_onoff = 1, .l_linger = 0 };
	setsockopt(tcp, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
	_exit(0);
}

/* `to` can no longer receive (it hung up, or EPIPE): what is still queued for it is dropped. */
static void flow_dead(struct flow *f)
{
	f->done = 1;
	f->len = f->off = 0;
}

/* Moves what it can without blocking: one read if `readable`, then writes until `to` is full. */
static void flow_step(struct flow *f, int readable, int tcp)
{
	if (readable && !f->eof && !f->done && f->len < f->cap) {
		if (f->off + f->len == f->cap) {
			memmove(f->buf, f->buf + f->off, f->len);
			f->off = 0;
		}
		ssize_t n = recv(f->from, f->buf + f->off + f->len, f->cap - f->off - f->len, 0);
		if (n > 0)
			f->len += (size_t)n;
		else if (n == 0)
			f->eof = 1;
		else if (errno != EAGAIN && errno != EINTR)
			relay_abort(tcp);
	}
	while (f->len > 0 && !f->done) {
		ssize_t n = send(f->to, f->buf + f->off, f->len, MSG_NOSIGNAL);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN)
				break;
			if (errno != EPIPE)
				relay_abort(tcp);
			flow_dead(f);
			break;
		}
		f->off += (size_t)n;
		f->len -= (size_t)n;
	}
	if (f->len == 0)
		f->off = 0;
	if (f->eof && f->len == 0 && !f->done) {
		/* Half-close passes through: the other side sees EOF and may still answer. */
		shutdown(f->to, SHUT_WR);
		f->done = 1;
	}
}

static short flow_wants_read(const struct flow *f)
{
	return !f->eof && !f->done && f->len < f->cap ? POLLIN : 0;
}

static short flow_wants_write(const struct flow *f)
{
	return f->len > 0 && !f->done ? POLLOUT : 0;
}

/*
 * After OK the connection is a raw byte pipe to the TCP socket, relayed
 * until both directions are done. A full buffer stops reading its source,
 * so backpressure reaches the sender on either side.
 */
static __attribute__((noreturn)) void op_dial(const struct rec *req)
{
	int tcp = dial_connect(req);
	send_frame(T_OK, NULL, 0);

	/* The host may send right after the request: those bytes are already in the reader and go first. */
	size_t early = rd.end - rd.start;
	memmove(rd.buf, rd.buf + rd.start, early);
	struct flow up = { .from = g_sock, .to = tcp, .buf = rd.buf, .len = early, .cap = early > CHUNK ? early : CHUNK };
	struct flow down = { .from = tcp, .to = g_sock, .buf = xmalloc(CHUNK), .cap = CHUNK };
	int up_readable = 0, down_readable = 0;
	for (;;) {
		flow_step(&up, up_readable, tcp);
		flow_step(&down, down_readable, tcp);
		if (up.done && down.done)
			_exit(0);
		short hev = flow_wants_read(&up) | flow_wants_write(&down);
		short tev = flow_wants_read(&down) | flow_wants_write(&up);
		/*
		 * A side is polled without events only while it may still receive,
		 * to learn that it hung up; otherwise a hangup that we have already
		 * acted on would wake poll over and over.
		 */
		struct pollfd pf[2] = {
			{ .fd = hev || !down.done ? g_sock : -1, .events = hev },
			{ .fd = tev || !up.done ? tcp : -1, .events = tev },
		};
		if (poll(pf, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			relay_abort(tcp);
		}
		if ((pf[0].revents | pf[1].revents) & (POLLERR | POLLNVAL))
			relay_abort(tcp);
		/* POLLHUP: that side can no longer receive, though what it sent before may still be read. */
		if (pf[0].revents & POLLHUP)
			flow_dead(&down);
		if (pf[1].revents & POLLHUP)
			flow_dead(&up);
		up_readable = (pf[0].revents & (POLLIN | POLLHUP)) != 0;
		down_readable = (pf[1].revents & (POLLIN | POLLHUP)) != 0;
	}
}

/* ------------------------------------------------------------------------ */
/* Handler                                                                  */
/* ------------------------------------------------------------------------ */

/* Reads the request frame. Bad input is rejected as soon as it is recognizable. */
static void read_request(struct frame *f)
{
	int64_t deadline = now_ms() + REQUEST_TIMEOUT_MS;
	for (;;) {
		if (rd.end > rd.start && (rd.buf[rd.start] < T_EXEC || rd.buf[rd.start] > T_DIAL))
			fail(EINVAL, "expected a request frame, got type 0x%02x", rd.buf[rd.start]);
		int r = frame_next(f);
		if (r > 0)
			return;
		if (r < 0)
			fail(EINVAL, "frame longer than %u bytes", MAX_FRAME);
		ssize_t n = reader_fill();
		if (n == 0)
			_exit(0);
		if (n < 0) {
			if (errno != EAGAIN)
				_exit(0);
			int64_t left = deadline - now_ms();
			if (left <= 0 || poll_one(g_sock, POLLIN, (int)left) <= 0)
				fail(ETIMEDOUT, "no request within %d ms", REQUEST_TIMEOUT_MS);
		}
	}
}

static __attribute__((noreturn)) void handler_main(int sock)
{
	g_sock = sock;
	/*
	 * Init's shutdown signals end a handler by default (idle connections must
	 * not hold up shutdown); EXEC blocks them again to forward them instead.
	 */
	sigset_t term;
	sigemptyset(&term);
	sigaddset(&term, SIGTERM);
	sigaddset(&term, SIGINT);
	sigprocmask(SIG_UNBLOCK, &term, NULL);
	rd.buf = xmalloc(HDR + MAX_FRAME);
	struct frame f;
	read_request(&f);

	/* Copied out of the reader buffer, which later reads compact. */
	char *payload = xmalloc(f.len);
	memcpy(payload, f.data, f.len);
	struct rec req;
	if (rec_parse(payload, f.len, &req) < 0)
		fail(EINVAL, "malformed request record");

	if (f.type == T_EXEC)
		op_exec(&req);

	/* File operations: SIGTERM from init during shutdown may simply end them. */
	sigset_t none;
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);

	if (f.type == T_PING) {
		send_frame(T_OK, NULL, 0);
		_exit(0);
	}
	if (f.type == T_DIAL)
		op_dial(&req);

	const char *user = rec_get(&req, "user");
	struct user u;
	/* Validate first: errors about the request must not depend on the user's permissions. */
	const char *path = NULL, *to = NULL;
	if (f.type == T_RENAME) {
		path = need_path(&req, "from");
		to = need_path(&req, "to");
	} else {
		path = need_path(&req, "path");
	}
	resolve_user(user ? user : "0", &u);
	int e = become_user(&u);
	if (e)
		fail(e, "cannot switch to user %s: %s", user ? user : "0", strerror(e));
	/* Modes in requests are exact, not filtered through whatever umask init inherited. */
	umask(0);

	switch (f.type) {
	case T_READ:
		op_read(path);
		break;
	case T_WRITE:
		op_write(&req, path);
		break;
	case T_LIST:
		op_list(path);
		break;
	case T_STAT:
		send_entry_of(T_ENTRY, path);
		break;
	case T_MKDIR:
		op_mkdir(&req, path);
		break;
	case T_REMOVE:
		op_remove(&req, path);
		break;
	case T_RENAME:
		if (rename(path, to) < 0)
			fail(errno, "rename %s to %s: %s", path, to, strerror(errno));
		/* Beyond the spec's empty OK: the entry of `to` saves the host a STAT round trip. */
		send_entry_of(T_OK, to);
		break;
	}
	_exit(0);
}

/* ------------------------------------------------------------------------ */
/* Init                                                                     */
/* ------------------------------------------------------------------------ */

static const char *sock_path = DEFAULT_SOCKET;
static const char *listen_tcp, *main_file;
static const char *main_cwd;
static int lfd = -1, sfd = -1;
static pid_t main_pid;
static int exit_code;
static int shutting_down;
/* Live handlers, so shutdown signals reach the programs they started. */
static pid_t *handlers;
static size_t nhandlers, handlers_cap;

static void track(pid_t pid)
{
	if (nhandlers == handlers_cap) {
		size_t cap = handlers_cap ? handlers_cap * 2 : 64;
		pid_t *p = realloc(handlers, cap * sizeof *p);
		if (!p)
			return; /* still reaped; only shutdown forwarding misses it */
		handlers = p;
		handlers_cap = cap;
	}
	handlers[nhandlers++] = pid;
}

static void untrack(pid_t pid)
{
	for (size_t i = 0; i < nhandlers; i++) {
		if (handlers[i] == pid) {
			handlers[i] = handlers[--nhandlers];
			return;
		}
	}
}

static int status_code(int st)
{
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static void reap(void)
{
	int st;
	pid_t p;
	while ((p = waitpid(-1, &st, WNOHANG)) > 0) {
		if (p == main_pid) {
			if (WIFSIGNALED(st))
				logmsg("main command (pid %d) killed by signal %d", (int)p, WTERMSIG(st));
			else
				logmsg("main command (pid %d) exited with status %d", (int)p, WEXITSTATUS(st));
			exit_code = status_code(st);
			main_pid = 0;
		} else {
			untrack(p); /* or an orphan we inherited as init/subreaper */
		}
	}
}

static void begin_shutdown(int sig)
{
	/*
	 * As the sandbox's PID 1, "everything" includes background jobs that
	 * execs left behind (reparented to us): give them the signal too rather
	 * than only the SIGKILL that follows init's exit. Outside a pid
	 * namespace kill(-1) would hit the whole host, hence only as PID 1.
	 */
	if (getpid() == 1)
		kill(-1, sig);
	if (main_pid > 0)
		kill(main_pid, sig);
	for (size_t i = 0; i < nhandlers; i++)
		kill(handlers[i], sig);
	if (!shutting_down && lfd >= 0) {
		close(lfd);
		lfd = -1;
		if (!listen_tcp)
			unlink(sock_path);
	}
	shutting_down = 1;
}

static void init_signals(void)
{
	struct signalfd_siginfo si;
	while (read(sfd, &si, sizeof si) == (ssize_t)sizeof si) {
		if (si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT)
			begin_shutdown((int)si.ssi_signo);
	}
	reap();
}

static void spawn_handler(int c)
{
	pid_t pid = fork();
	if (pid == 0) {
		close(lfd);
		close(sfd);
		free(handlers);
		handler_main(c);
	}
	if (pid < 0) {
		/* Best effort: tell the host why, without ever blocking init. */
		static const char rec[] = "code=EAGAIN\0message=cannot fork a handler";
		uint8_t msg[HDR + sizeof rec];
		msg[0] = T_ERROR;
		put_be32(msg + 1, sizeof rec);
		memcpy(msg + HDR, rec, sizeof rec);
		if (send(c, msg, sizeof msg, MSG_DONTWAIT | MSG_NOSIGNAL) < 0) { /* the host sees the close */ }
		close(c);
		return;
	}
	close(c);
	track(pid);
}

static void accept_all(void)
{
	/* Bounded so a connection flood cannot starve reaping and signal handling. */
	for (int i = 0; i < 64; i++) {
		int c = accept4(lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
		if (c < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			if (errno == EAGAIN)
				return;
			/* EMFILE, ENOBUFS...: back off instead of spinning on a listener that stays readable. */
			logmsg("accept: %s", strerror(errno));
			struct timespec ts = { 0, 10 * 1000 * 1000 };
			nanosleep(&ts, NULL);
			return;
		}
		if (listen_tcp) {
			/* Frames are small and answered one by one: never wait for Nagle. */
			int one = 1;
			setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
		}
		spawn_handler(c);
	}
}

static int listen_tcp_socket(const char *spec)
{
	char host[64];
	const char *colon = strrchr(spec, ':');
	struct sockaddr_in addr = { .sin_family = AF_INET };
	char *end;
	unsigned long port = colon ? strtoul(colon + 1, &end, 10) : 0;
	if (!colon || (size_t)(colon - spec) >= sizeof host || !port || port > 65535 || *end) {
		logmsg("--listen-tcp wants IPV4:PORT, not %s", spec);
		return -1;
	}
	memcpy(host, spec, colon - spec);
	host[colon - spec] = 0;
	if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
		logmsg("--listen-tcp: bad address %s", host);
		return -1;
	}
	addr.sin_port = htons(port);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0), one = 1;
	if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
	    bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(fd, 1024) < 0) {
		logmsg("listen on %s: %s", spec, strerror(errno));
		if (fd >= 0)
			close(fd);
		return -1;
	}
	return fd;
}

/*
 * Reads --main-file: "cwd\0arg0\0arg1\0...\0\0KEY=VAL\0...". Sets main_cwd
 * and environ; returns argv. The file comes from the host through the guest's
 * boot script, so a malformed one is an error, never a guess.
 */
static char **read_main_file(const char *path)
{
	FILE *f = fopen(path, "re");
	if (!f) {
		logmsg("%s: %s", path, strerror(errno));
		return NULL;
	}
	char *buf = NULL;
	size_t cap = 0, len = 0;
	for (;;) {
		if (len == cap && !(buf = realloc(buf, cap = cap ? cap * 2 : 4096)))
			return NULL;
		size_t n = fread(buf + len, 1, cap - len, f);
		if (!n)
			break;
		len += n;
	}
	fclose(f);
	if (!len || buf[len - 1]) {
		logmsg("%s: not NUL-terminated", path);
		return NULL;
	}
	size_t fields = 0;
	for (size_t k = 0; k < len; k++)
		fields += !buf[k];
	char **v = calloc(fields + 2, sizeof *v);
	if (!v)
		return NULL;
	size_t nv = 0;
	for (size_t k = 0; k < len; k += strlen(buf + k) + 1)
		v[nv++] = buf + k;
	/* v: cwd, argv..., "", env... */
	size_t sep = 1;
	while (sep < nv && *v[sep])
		sep++;
	if (sep == 1 || sep == nv) {
		logmsg("%s: needs a cwd, a command and an empty field before the environment", path);
		return NULL;
	}
	main_cwd = v[0];
	v[sep] = NULL;
	environ = v + sep + 1;
	return v + 1;
}

static int listen_socket(const char *path)
{
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	if (strlen(path) >= sizeof addr.sun_path) {
		logmsg("socket path too long: %s", path);
		return -1;
	}
	strcpy(addr.sun_path, path);
	struct stat st;
	/* A socket left by a previous run would make bind fail; anything else there is not ours to delete. */
	if (lstat(path, &st) == 0 && S_ISSOCK(st.st_mode))
		unlink(path);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0) {
		logmsg("socket: %s", strerror(errno));
		return -1;
	}
	/* Created 0600 from the start, not widened for a moment before the chmod. */
	mode_t old = umask(0177);
	int r = bind(fd, (struct sockaddr *)&addr, sizeof addr);
	umask(old);
	if (r < 0) {
		logmsg("bind %s: %s", path, strerror(errno));
		close(fd);
		return -1;
	}
	chmod(path, 0600);
	if (listen(fd, 1024) < 0) {
		logmsg("listen: %s", strerror(errno));
		close(fd);
		return -1;
	}
	return fd;
}

static pid_t start_main(char **cmd)
{
	pid_t pid = fork();
	if (pid == 0) {
		sigset_t none;
		sigemptyset(&none);
		sigprocmask(SIG_SETMASK, &none, NULL);
		signal(SIGPIPE, SIG_DFL);
		if (main_cwd && chdir(main_cwd) < 0) {
			logmsg("cannot enter %s: %s", main_cwd, strerror(errno));
			_exit(126);
		}
		execvp(cmd[0], cmd);
		int e = errno;
		logmsg("cannot execute %s: %s", cmd[0], strerror(e));
		_exit(e == ENOENT ? 127 : 126);
	}
	if (pid < 0)
		logmsg("fork: %s", strerror(errno));
	return pid > 0 ? pid : 0;
}

/*
 * --seed-rng HEX: a microVM's boot script, right after a resume from a
 * snapshot. VMs of one snapshot share the kernel's RNG state; crediting the
 * host's seed and forcing a reseed makes each VM's random numbers its own at
 * once, not at the kernel's next periodic reseed.
 */
static int seed_rng(const char *hex)
{
	size_t n = strlen(hex) / 2;
	if (n == 0 || n > 512 || strlen(hex) % 2)
		return fprintf(stderr, "moat-init: --seed-rng wants 2 to 1024 hex digits\n"), 2;
	struct rand_pool_info *info = malloc(sizeof(*info) + n);
	if (!info)
		return 1;
	for (size_t k = 0; k < n; k++) {
		unsigned v;
		if (sscanf(hex + 2 * k, "%2x", &v) != 1)
			return fprintf(stderr, "moat-init: --seed-rng: not hex\n"), 2;
		((unsigned char *)info->buf)[k] = (unsigned char)v;
	}
	info->entropy_count = (int)(n * 8);
	info->buf_size = (int)n;
	int fd = open("/dev/urandom", O_WRONLY | O_CLOEXEC);
	if (fd < 0 || ioctl(fd, RNDADDENTROPY, info) < 0 || ioctl(fd, RNDRESEEDCRNG) < 0)
		return fprintf(stderr, "moat-init: --seed-rng: %s\n", strerror(errno)), 1;
	close(fd);
	free(info);
	return 0;
}

static void usage(int code)
{
	fprintf(code ? stderr : stdout, "usage: moat-init [--socket PATH | --listen-tcp ADDR:PORT] [--main-file FILE] [--] [CMD ARGS...]\n");
	exit(code);
}

int main(int argc, char **argv)
{
	int i;
	for (i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--") == 0) {
			i++;
			break;
		}
		if (strcmp(argv[i], "--socket") == 0) {
			if (i + 1 >= argc)
				usage(2);
			sock_path = argv[++i];
		} else if (strncmp(argv[i], "--socket=", 9) == 0) {
			sock_path = argv[i] + 9;
		} else if (strcmp(argv[i], "--listen-tcp") == 0 || strcmp(argv[i], "--main-file") == 0) {
			if (i + 1 >= argc)
				usage(2);
			*(argv[i][2] == 'l' ? &listen_tcp : &main_file) = argv[i + 1];
			i++;
		} else if (strcmp(argv[i], "--seed-rng") == 0) {
			return i + 1 < argc ? seed_rng(argv[i + 1]) : 2;
		} else if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
			usage(0);
		} else if (argv[i][0] == '-' && argv[i][1]) {
			fprintf(stderr, "moat-init: unknown option %s\n", argv[i]);
			usage(2);
		} else {
			break;
		}
	}
	char **cmd = i < argc ? argv + i : NULL;
	if (main_file && !(cmd = read_main_file(main_file)))
		return 1;

	/* fds 0-2 must be taken, or a pipe could land on them and dup2 would not clear its CLOEXEC. */
	for (int fd = 0; fd < 3; fd++)
		if (fcntl(fd, F_GETFD) < 0 && open("/dev/null", O_RDWR) < 0)
			return 1;

	signal(SIGPIPE, SIG_IGN);
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGCHLD);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigprocmask(SIG_BLOCK, &set, NULL);
	sfd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
	if (sfd < 0) {
		logmsg("signalfd: %s", strerror(errno));
		return 1;
	}
	/* Outside a pid namespace (tests, debugging) we still want orphans of our programs reaped here. */
	if (getpid() != 1)
		prctl(PR_SET_CHILD_SUBREAPER, 1);

	lfd = listen_tcp ? listen_tcp_socket(listen_tcp) : listen_socket(sock_path);
	if (lfd < 0)
		return 1;
	if (cmd)
		main_pid = start_main(cmd);

	for (;;) {
		struct pollfd pf[2] = {
			{ .fd = sfd, .events = POLLIN },
			{ .fd = lfd, .events = POLLIN },
		};
		if (poll(pf, lfd >= 0 ? 2 : 1, -1) < 0 && errno != EINTR) {
			logmsg("poll: %s", strerror(errno));
			struct timespec ts = { 0, 10 * 1000 * 1000 };
			nanosleep(&ts, NULL);
			continue;
		}
		if (pf[0].revents)
			init_signals();
		if (lfd >= 0 && pf[1].revents)
			accept_all();
		/* On shutdown: leave once the main command and every handler is gone. */
		if (shutting_down && main_pid == 0 && nhandlers == 0)
			return exit_code;
	}
}
