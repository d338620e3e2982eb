/* DIAL: a connection to a port on the sandbox's loopback, relayed for the host. */
#include "moat-agent.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* DIAL gives up connecting after this (ETIMEDOUT). */
#define DIAL_TIMEOUT_MS 10000

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
void op_dial(const struct rec *req)
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
