/* The connection of a handler: frames in and out, ERROR, and how the handler ends. */
#include "moat-agent.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* How long a finished connection is drained so the host can read our last frame (see linger_exit()). */
#define LINGER_MS 5000

int g_sock = -1;
/* Process group started by EXEC; killed if the host goes away before EXIT. */
pid_t g_pgid;
int g_pty_master = -1;

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
void disconnected(void)
{
	kill_group();
	_exit(0);
}

void send_frame(uint8_t type, const void *payload, size_t len)
{
	uint8_t h[HEADER_SIZE];
	h[0] = type;
	put_be32(h + 1, (uint32_t)len);
	struct iovec iov[2] = {
		{ .iov_base = h, .iov_len = HEADER_SIZE },
		{ .iov_base = (void *)payload, .iov_len = len },
	};
	if (writev_all(g_sock, iov, len ? 2 : 1) < 0)
		disconnected();
}

void frame_append(struct buf *b, uint8_t type, const void *payload, size_t len)
{
	uint8_t h[HEADER_SIZE];
	h[0] = type;
	put_be32(h + 1, (uint32_t)len);
	buf_put(b, h, HEADER_SIZE);
	buf_put(b, payload, len);
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
void linger_exit(void)
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
void fail(int err, const char *fmt, ...)
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

struct reader rd;

/*
 * Reads what the socket has. >0 bytes, 0 on EOF, -1 with errno (EAGAIN: nothing yet).
 * Invalidates the data pointers of frames returned earlier (compaction).
 */
ssize_t reader_fill(void)
{
	if (rd.start == rd.end) {
		rd.start = rd.end = 0;
	} else if (rd.start > 0) {
		memmove(rd.buf, rd.buf + rd.start, rd.end - rd.start);
		rd.end -= rd.start;
		rd.start = 0;
	}
	size_t space = HEADER_SIZE + MAX_FRAME - rd.end;
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
int frame_next(struct frame *f)
{
	size_t avail = rd.end - rd.start;
	if (avail < HEADER_SIZE)
		return 0;
	uint8_t *h = rd.buf + rd.start;
	uint32_t len = get_be32(h + 1);
	if (len > MAX_FRAME)
		return -1;
	if (avail < HEADER_SIZE + len)
		return 0;
	f->type = h[0];
	f->len = len;
	f->data = h + HEADER_SIZE;
	rd.start += HEADER_SIZE + len;
	return 1;
}

/* Blocks until the next frame; EOF or a broken connection ends the handler. */
void frame_read(struct frame *f)
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
