/*
 * moat-init --mux: many agent connections (streams) over one stdin/stdout,
 * so the host pays for one pods/exec per pod instead of one per operation.
 * docs/agent-protocol.md ("Multiplexing") specifies the framing.
 *
 * Each OPEN gets a socketpair and a forked handler on one end, exactly as
 * --stdio serves its single connection; this process relays the other end as
 * the stream's DATA, EOF and CLOSE frames. Flow control is per stream and per
 * direction: a sender never has more than its credit in flight, so stdin is
 * always read (whatever a stream's handler does, its buffer is bounded by its
 * window) and one stalled stream never holds up another.
 *
 * The host is trusted here (it is Moat, through the apiserver): a framing
 * error is its bug, reported on stderr, and ends the process. What runs in
 * the sandbox only ever talks to its own handler, as under the listener.
 */
#include "moat-agent.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

/* Output waiting for stdout beyond this stops reading the handlers' sockets; control frames are still queued. */
#define OUT_HIGH (256u * 1024u)
/* How long handlers get to end once their connections are closed at exit, before SIGKILL. */
#define EXIT_GRACE_MS 5000
/* How long exit waits for another of the programs it adopted to end. */
#define ORPHAN_WAIT_MS 200

struct stream {
	uint32_t id;
	int fd;              /* our end of the handler's socketpair */
	struct buf in;       /* from the host, not yet written to fd */
	size_t in_off;
	uint32_t in_window;  /* bytes the host may still send */
	uint32_t unacked;    /* written to fd, not yet granted back to the host */
	uint64_t credit;     /* bytes we may still send the host */
	int host_eof;        /* the host sent EOF */
	int wr_done;         /* fd's write side is over: shut after the host's EOF, or broken */
	int rd_done;         /* fd reached its end and EOF was sent */
};

static struct stream *streams[MUX_MAX_STREAMS];
static size_t nstreams;
/* Ids only increase: a lower id without a stream is one closed already, whose frames may still be in flight. */
static uint32_t last_id;
static int sfd;

static struct buf out;
static size_t out_off;

static uint8_t *ibuf;
static size_t istart, iend;

/* Handlers not reaped yet, so exit can wait for them (orphans we reap as subreaper are not among them). */
static pid_t *kids;
static size_t nkids, kids_cap;

static const char *const names[] = { [M_OPEN] = "OPEN", [M_DATA] = "DATA", [M_EOF] = "EOF", [M_CLOSE] = "CLOSE", [M_WINDOW] = "WINDOW" };

static void queue(uint8_t type, uint32_t id, const void *payload, size_t len)
{
	uint8_t h[MUX_HEADER_SIZE];
	h[0] = type;
	put_be32(h + 1, id);
	put_be32(h + 5, (uint32_t)len);
	buf_put(&out, h, sizeof h);
	buf_put(&out, payload, len);
}

static void reap(void)
{
	pid_t p;
	while ((p = waitpid(-1, NULL, WNOHANG)) > 0) {
		for (size_t k = 0; k < nkids; k++) {
			if (kids[k] == p) {
				kids[k] = kids[--nkids];
				break;
			}
		}
	}
}

/* Closes every connection (each handler then ends what it runs), waits for the handlers, and exits. */
static __attribute__((noreturn)) void finish(int code)
{
	for (size_t k = 0; k < nstreams; k++)
		close(streams[k]->fd);
	close(1);
	for (int64_t deadline = now_ms() + EXIT_GRACE_MS; nkids;) {
		int64_t left = deadline - now_ms();
		if (left <= 0) {
			for (size_t k = 0; k < nkids; k++)
				kill(kids[k], SIGKILL);
			while (nkids && waitpid(kids[0], NULL, 0) == kids[0])
				kids[0] = kids[--nkids];
			break;
		}
		poll_one(sfd, POLLIN, (int)left);
		struct signalfd_siginfo si;
		while (read(sfd, &si, sizeof si) == (ssize_t)sizeof si) {
		}
		reap();
	}
	/*
	 * What the handlers killed is ours now (we are its subreaper): reap it rather than leave zombies to the
	 * sandbox's PID 1, which may never reap. Survivors (background jobs) are left to it after a moment.
	 */
	for (;;) {
		pid_t p = waitpid(-1, NULL, WNOHANG);
		if (p > 0)
			continue;
		if (p < 0 || poll_one(sfd, POLLIN, ORPHAN_WAIT_MS) <= 0)
			break; /* no children left, or the rest lives on */
		struct signalfd_siginfo si;
		while (read(sfd, &si, sizeof si) == (ssize_t)sizeof si) {
		}
	}
	exit(code);
}

/* The host broke the framing: its bug, reported where the host keeps the exec's stderr. */
static __attribute__((noreturn, format(printf, 1, 2))) void protocol_error(const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	logmsg("--mux: protocol error: %s", msg);
	finish(2);
}

static struct stream *find(uint32_t id)
{
	for (size_t k = 0; k < nstreams; k++)
		if (streams[k]->id == id)
			return streams[k];
	return NULL;
}

/* Forgets a stream; `reason` non-NULL also tells the host (CLOSE), with it as the payload. */
static void drop(struct stream *s, const char *reason)
{
	if (reason)
		queue(M_CLOSE, s->id, reason, strlen(reason));
	close(s->fd);
	free(s->in.p);
	for (size_t k = 0; k < nstreams; k++) {
		if (streams[k] == s) {
			streams[k] = streams[--nstreams];
			break;
		}
	}
	free(s);
}

/* Both directions over: the stream is gone. */
static int maybe_done(struct stream *s)
{
	if (!s->rd_done || !s->wr_done)
		return 0;
	drop(s, "");
	return 1;
}

static void open_stream(uint32_t id)
{
	if (nstreams == MUX_MAX_STREAMS) {
		static const char why[] = "too many open streams";
		queue(M_CLOSE, id, why, sizeof why - 1);
		return;
	}
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
		char why[128];
		snprintf(why, sizeof why, "socketpair: %s", strerror(errno));
		queue(M_CLOSE, id, why, strlen(why));
		return;
	}
	pid_t pid = fork();
	if (pid == 0) {
		/* A handler must hold no other stream's socket: their EOFs would never come. */
		for (size_t k = 0; k < nstreams; k++)
			close(streams[k]->fd);
		handler_child(sv[1], sv[0], sfd);
	}
	close(sv[1]);
	if (pid < 0) {
		char why[128];
		snprintf(why, sizeof why, "cannot fork a handler: %s", strerror(errno));
		queue(M_CLOSE, id, why, strlen(why));
		close(sv[0]);
		return;
	}
	if (nkids == kids_cap) {
		kids_cap = kids_cap ? kids_cap * 2 : 64;
		kids = xrealloc(kids, kids_cap * sizeof *kids);
	}
	kids[nkids++] = pid;
	set_nonblock(sv[0]);
	struct stream *s = xmalloc(sizeof *s);
	*s = (struct stream){ .id = id, .fd = sv[0], .in_window = MUX_WINDOW, .credit = MUX_WINDOW };
	streams[nstreams++] = s;
}

static void on_frame(uint8_t type, uint32_t id, const uint8_t *payload, uint32_t len)
{
	if (type == M_OPEN) {
		if (len)
			protocol_error("OPEN of stream %u has a payload", id);
		if (id == 0 || id <= last_id)
			protocol_error("OPEN of stream %u: ids must increase (the last was %u)", id, last_id);
		last_id = id;
		open_stream(id);
		return;
	}
	if (type >= sizeof names / sizeof *names || !names[type])
		protocol_error("unknown frame type 0x%02x (stream %u)", type, id);
	struct stream *s = find(id);
	if (!s) {
		if (id && id <= last_id)
			return; /* sent before the host saw our CLOSE */
		protocol_error("%s for stream %u, which was never opened", names[type], id);
	}
	switch (type) {
	case M_DATA:
		if (s->host_eof)
			protocol_error("DATA after EOF on stream %u", id);
		if (len > s->in_window)
			protocol_error("stream %u: %u bytes of DATA with only %u of window", id, len, s->in_window);
		s->in_window -= len;
		if (!s->wr_done)
			buf_put(&s->in, payload, len); /* else the handler is gone: its CLOSE follows */
		break;
	case M_EOF:
		if (s->host_eof)
			protocol_error("a second EOF on stream %u", id);
		s->host_eof = 1;
		break;
	case M_CLOSE:
		drop(s, NULL);
		break;
	case M_WINDOW:
		if (len != 4)
			protocol_error("WINDOW of stream %u has %u bytes, not 4", id, len);
		s->credit += get_be32(payload);
		break;
	}
}

/* Reads what stdin has and handles each complete frame. 0 on EOF. */
static int read_host(void)
{
	if (istart == iend) {
		istart = iend = 0;
	} else if (istart) {
		memmove(ibuf, ibuf + istart, iend - istart);
		iend -= istart;
		istart = 0;
	}
	ssize_t n = read(0, ibuf + iend, MUX_HEADER_SIZE + MAX_FRAME - iend);
	if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
		return 0;
	if (n > 0)
		iend += (size_t)n;
	while (iend - istart >= MUX_HEADER_SIZE) {
		const uint8_t *h = ibuf + istart;
		uint32_t id = get_be32(h + 1), len = get_be32(h + 5);
		if (len > MAX_FRAME)
			protocol_error("frame of %u bytes for stream %u exceeds the %u-byte limit", len, id, MAX_FRAME);
		if (iend - istart < MUX_HEADER_SIZE + len)
			break;
		istart += MUX_HEADER_SIZE + len;
		on_frame(h[0], id, h + MUX_HEADER_SIZE, len);
	}
	return 1;
}

/* Handler → host, within the stream's credit. 1 if the stream is gone. */
static int stream_read(struct stream *s)
{
	static char chunk[CHUNK];
	size_t want = s->credit < sizeof chunk ? (size_t)s->credit : sizeof chunk;
	ssize_t n = read(s->fd, chunk, want);
	if (n > 0) {
		s->credit -= (size_t)n;
		queue(M_DATA, s->id, chunk, (size_t)n);
	} else if (n == 0) {
		queue(M_EOF, s->id, NULL, 0);
		s->rd_done = 1;
		return maybe_done(s);
	} else if (errno != EAGAIN && errno != EINTR) {
		drop(s, strerror(errno));
		return 1;
	}
	return 0;
}

/* Host → handler; the window is granted back in batches as the handler takes the bytes. 1 if the stream is gone. */
static int stream_write(struct stream *s)
{
	size_t pending = s->in.len - s->in_off;
	if (pending) {
		ssize_t w = write(s->fd, s->in.p + s->in_off, pending);
		if (w < 0 && (errno == EAGAIN || errno == EINTR))
			return 0;
		if (w < 0) {
			/* The handler is gone; what the host still sends is discarded. */
			s->wr_done = 1;
			s->in.len = s->in_off = 0;
			return maybe_done(s);
		}
		s->in_off += (size_t)w;
		s->unacked += (uint32_t)w;
		if (s->in_off == s->in.len)
			s->in.len = s->in_off = 0;
		if (s->unacked >= MUX_WINDOW / 4) {
			uint8_t p[4];
			put_be32(p, s->unacked);
			queue(M_WINDOW, s->id, p, sizeof p);
			s->in_window += s->unacked;
			s->unacked = 0;
		}
	}
	if (s->host_eof && !s->wr_done && s->in.len == 0) {
		shutdown(s->fd, SHUT_WR);
		s->wr_done = 1;
		return maybe_done(s);
	}
	return 0;
}

static void flush_out(void)
{
	while (out_off < out.len) {
		ssize_t w = write(1, out.p + out_off, out.len - out_off);
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0 && errno == EAGAIN)
			break;
		if (w < 0)
			finish(0); /* the host went away */
		out_off += (size_t)w;
	}
	if (out_off == out.len) {
		out.len = out_off = 0;
	} else if (out_off >= OUT_HIGH) {
		memmove(out.p, out.p + out_off, out.len - out_off);
		out.len -= out_off;
		out_off = 0;
	}
}

int serve_mux(int signal_fd)
{
	sfd = signal_fd;
	ibuf = xmalloc(MUX_HEADER_SIZE + MAX_FRAME);
	set_nonblock(0);
	set_nonblock(1);
	queue(M_HELLO, 0, NULL, 0);
	for (;;) {
		flush_out();
		struct pollfd pf[3 + MUX_MAX_STREAMS];
		struct stream *at[MUX_MAX_STREAMS];
		pf[0] = (struct pollfd){ .fd = sfd, .events = POLLIN };
		pf[1] = (struct pollfd){ .fd = 0, .events = POLLIN };
		pf[2] = (struct pollfd){ .fd = 1, .events = out.len > out_off ? POLLOUT : 0 };
		nfds_t n = 3;
		size_t nat = 0;
		int room = out.len - out_off < OUT_HIGH;
		for (size_t k = 0; k < nstreams; k++) {
			struct stream *s = streams[k];
			short ev = (short)((!s->rd_done && s->credit && room ? POLLIN : 0) |
				(s->in.len > s->in_off || (s->host_eof && !s->wr_done) ? POLLOUT : 0));
			if (!ev)
				continue;
			at[nat++] = s;
			pf[n++] = (struct pollfd){ .fd = s->fd, .events = ev };
		}
		if (poll(pf, n, -1) < 0) {
			if (errno == EINTR)
				continue;
			logmsg("--mux: poll: %s", strerror(errno));
			finish(1);
		}
		if (pf[0].revents) {
			struct signalfd_siginfo si;
			while (read(sfd, &si, sizeof si) == (ssize_t)sizeof si)
				if (si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT)
					finish(0);
			reap();
		}
		/* Streams first: each may only drop itself here, so the pointers taken before poll stay valid. */
		for (size_t k = 0; k < nat; k++) {
			struct pollfd *p = &pf[3 + k];
			if (!p->revents || ((p->events & POLLOUT) && stream_write(at[k])))
				continue;
			if (p->events & POLLIN)
				stream_read(at[k]);
		}
		if (pf[1].revents && !read_host())
			finish(0); /* the host is done: so is every stream */
	}
}
