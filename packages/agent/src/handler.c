/* A connection's handler: reads the request and runs its operation. */
#include "moat-agent.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* A connection must deliver its request within this time, so idle connections cannot pile up handlers. */
#define REQUEST_TIMEOUT_MS 30000

const char *g_default_user = "0";

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

void handler_child(int sock, int close_a, int close_b)
{
	/* The handler's stdin and stdout are the host's stream: it must not hold that open. */
	int nul = open("/dev/null", O_RDWR | O_CLOEXEC);
	if (nul < 0 || dup2(nul, 0) < 0 || dup2(nul, 1) < 0)
		_exit(1);
	close(nul);
	close(close_a);
	close(close_b);
	set_nonblock(sock);
	handler_main(sock);
}

void handler_main(int sock)
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
	rd.buf = xmalloc(HEADER_SIZE + MAX_FRAME);
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
	resolve_user(user ? user : g_default_user, &u);
	int e = become_user(&u);
	if (e)
		fail(e, "cannot switch to user %s: %s", user ? user : g_default_user, strerror(e));
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
