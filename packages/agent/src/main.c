/*
 * moat-init: PID 1 and exec/file agent of every Moat sandbox.
 * The wire protocol is specified in docs/agent-protocol.md.
 *
 *   moat-init [--socket PATH | --listen-tcp ADDR:PORT] [--main-file FILE] [--user USER] [--] [CMD ARGS...]
 *     --user: the image's USER: the main command runs as it, and so does a request that names no user
 *   moat-init --seed-rng HEX     (a microVM's boot script: see seed_rng)
 *   moat-init --set-hostname NAME (gVisor's rename: see set_hostname)
 *   moat-init --stdio            (one connection on stdin/stdout: see serve_stdio)
 *   moat-init --mux              (many connections on stdin/stdout: see mux.c)
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
#include "moat-agent.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/random.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_SOCKET "/.moat/sock/agent.sock"

static const char *sock_path = DEFAULT_SOCKET;
static const char *listen_tcp, *main_file;
static const char *main_cwd;
static int main_user; /* --user given: the main command drops to g_default_user */
static int lfd = -1, sfd = -1;
static pid_t main_pid;
static int exit_code;
static int shutting_down;
static int stdio_mode, mux_mode;
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

/*
 * SIGUSR1 closes the listener (removing its socket), SIGUSR2 opens it again.
 * gVisor cannot checkpoint a sandbox while a listener bound on the host
 * (runsc --host-uds=create) is open, so its driver parks the agent around
 * `runsc checkpoint` and `restore`; connections already accepted go on.
 */
static int listen_tcp_socket(const char *spec);
static int listen_socket(const char *path);

static void park_listener(int park)
{
	if (shutting_down || park == (lfd < 0))
		return;
	if (park) {
		close(lfd);
		lfd = -1;
		if (!listen_tcp)
			unlink(sock_path);
	} else {
		lfd = listen_tcp ? listen_tcp_socket(listen_tcp) : listen_socket(sock_path);
	}
}

static void init_signals(void)
{
	struct signalfd_siginfo si;
	while (read(sfd, &si, sizeof si) == (ssize_t)sizeof si) {
		if (si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT)
			begin_shutdown((int)si.ssi_signo);
		else if (si.ssi_signo == SIGUSR1 || si.ssi_signo == SIGUSR2)
			park_listener(si.ssi_signo == SIGUSR1);
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
		uint8_t msg[HEADER_SIZE + sizeof rec];
		msg[0] = T_ERROR;
		put_be32(msg + 1, sizeof rec);
		memcpy(msg + HEADER_SIZE, rec, sizeof rec);
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
		if (main_user) {
			struct user u;
			resolve_user(g_default_user, &u); /* exits with a message when the image has no such user */
			int e = become_user(&u);
			if (e) {
				logmsg("cannot switch to user %s: %s", g_default_user, strerror(e));
				_exit(126);
			}
		}
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
/*
 * --set-hostname NAME: gVisor's driver renames a sandbox by running this in
 * it (runsc exec with CAP_SYS_ADMIN), since an image need not have a
 * hostname program; the sentry's UTS namespace is out of the host's reach.
 */
static int set_hostname(const char *name)
{
	if (sethostname(name, strlen(name)) < 0)
		return fprintf(stderr, "moat-init: --set-hostname: %s\n", strerror(errno)), 1;
	return 0;
}

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

/*
 * --stdio: serves one connection whose bytes arrive on stdin and leave on
 * stdout, for a caller that can start a process in the sandbox but not reach
 * a socket there (on Kubernetes Moat runs --mux, the same for many
 * connections, through the pods/exec API: docs/kubernetes.md). The sandbox's
 * own PID 1 stays, so there is no listener and no init here. A handler runs
 * on one end of a socketpair, unchanged; this process relays the other end to
 * stdin/stdout (EOF on stdin becomes a half-close, as the host's end() would
 * be on a socket) and reaps what the handler's programs leave behind.
 */
static int serve_stdio(void)
{
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
		logmsg("socketpair: %s", strerror(errno));
		return 1;
	}
	pid_t pid = fork();
	if (pid < 0) {
		logmsg("fork: %s", strerror(errno));
		return 1;
	}
	if (pid == 0)
		handler_child(sv[1], sv[0], sfd);
	close(sv[1]);
	set_nonblock(0);
	set_nonblock(1);
	set_nonblock(sv[0]);
	/*
	 * Two pumps, stdin -> socket and socket -> stdout. A pump holding bytes its
	 * destination cannot take yet stops reading its source: neither direction
	 * ever blocks the other (the handler may be writing output while the host
	 * still sends stdin).
	 */
	struct pump {
		int from, to;
		char buf[CHUNK];
		size_t len, off;
		int done;
	} p[2] = { { .from = 0, .to = sv[0] }, { .from = sv[0], .to = 1 } };
	while (!p[1].done) {
		struct pollfd pf[5];
		int n = 0, at[2][2] = { { -1, -1 }, { -1, -1 } };
		for (int k = 0; k < 2; k++) {
			if (p[k].done)
				continue;
			at[k][p[k].len ? 1 : 0] = n;
			pf[n++] = p[k].len ? (struct pollfd){ .fd = p[k].to, .events = POLLOUT } : (struct pollfd){ .fd = p[k].from, .events = POLLIN };
		}
		pf[n++] = (struct pollfd){ .fd = sfd, .events = POLLIN };
		if (poll(pf, (nfds_t)n, -1) < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		if (pf[n - 1].revents) {
			struct signalfd_siginfo si;
			while (read(sfd, &si, sizeof si) == (ssize_t)sizeof si)
				if (si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT)
					kill(pid, (int)si.ssi_signo);
			while (waitpid(-1, NULL, WNOHANG) > 0) {
			}
		}
		for (int k = 0; k < 2; k++) {
			struct pump *q = &p[k];
			if (at[k][0] >= 0 && pf[at[k][0]].revents) {
				ssize_t r = read(q->from, q->buf, sizeof q->buf);
				if (r > 0) {
					q->len = (size_t)r;
					q->off = 0;
				} else if (r == 0 || (errno != EINTR && errno != EAGAIN)) {
					/* stdin's EOF: the host is done sending, a half-close; the socket's: the handler is done. */
					q->done = 1;
					if (k == 0)
						shutdown(sv[0], SHUT_WR);
				}
			}
			if (q->len && (at[k][1] < 0 || pf[at[k][1]].revents)) {
				ssize_t w = write(q->to, q->buf + q->off, q->len);
				if (w > 0) {
					q->off += (size_t)w;
					q->len -= (size_t)w;
				} else if (w < 0 && errno != EINTR && errno != EAGAIN) {
					/* The host went away (stdout broke) or the handler did: this direction is over. */
					q->done = 1;
					q->len = 0;
					if (k == 1)
						break;
				}
			}
		}
	}
	/* The handler answered and closed, or the host went away: either way the handler must end. */
	close(sv[0]);
	close(1);
	while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {
	}
	return 0;
}

static void usage(int code)
{
	fprintf(code ? stderr : stdout, "usage: moat-init [--socket PATH | --listen-tcp ADDR:PORT] [--main-file FILE] [--user USER] [--] [CMD ARGS...]\n"
		"       moat-init --stdio | --mux\n");
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
		} else if (strcmp(argv[i], "--user") == 0) {
			if (i + 1 >= argc)
				usage(2);
			g_default_user = argv[++i];
			main_user = 1;
		} else if (strcmp(argv[i], "--stdio") == 0) {
			stdio_mode = 1;
		} else if (strcmp(argv[i], "--mux") == 0) {
			mux_mode = 1;
		} else if (strcmp(argv[i], "--seed-rng") == 0) {
			return i + 1 < argc ? seed_rng(argv[i + 1]) : 2;
		} else if (strcmp(argv[i], "--set-hostname") == 0) {
			return i + 1 < argc ? set_hostname(argv[i + 1]) : 2;
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
	if (!stdio_mode && !mux_mode) {
		sigaddset(&set, SIGUSR1); /* see park_listener */
		sigaddset(&set, SIGUSR2);
	}
	sigprocmask(SIG_BLOCK, &set, NULL);
	sfd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
	if (sfd < 0) {
		logmsg("signalfd: %s", strerror(errno));
		return 1;
	}
	if (stdio_mode || mux_mode) {
		/* Not init: a request without "user" runs as whoever started us, and we reap what our programs leave. */
		static char self[16];
		snprintf(self, sizeof self, "%u", (unsigned)geteuid());
		g_default_user = self;
		prctl(PR_SET_CHILD_SUBREAPER, 1);
		return mux_mode ? serve_mux(sfd) : serve_stdio();
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
