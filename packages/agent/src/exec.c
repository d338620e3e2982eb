/* EXEC: starts the program and relays its stdin, output, signals and exit. */
#include "moat-agent.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

/* Stdin the program has not read yet; beyond this we stop reading the socket (backpressure to the host). */
#define STDIN_QUEUE_MAX (1024u * 1024u)
/*
 * After the program exits we keep forwarding output until every writer has
 * closed the pipe/tty, but no longer than this: a background process that
 * inherited stdout must not hold EXIT back forever.
 */
#define DRAIN_MS 50
#define DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

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

void op_exec(struct rec *req)
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
	resolve_user(user ? user : g_default_user, &s.user);
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
