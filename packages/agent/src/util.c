/* Small helpers. */
#include "moat-agent.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

void logmsg(const char *fmt, ...)
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

const char *errname(int e)
{
	const char *n = strerrorname_np(e);
	return n ? n : "EIO";
}

void *xmalloc(size_t n)
{
	/* Only handlers allocate; running out of memory there only loses that connection. */
	void *p = malloc(n ? n : 1);
	if (!p) {
		logmsg("out of memory");
		_exit(1);
	}
	return p;
}

void *xrealloc(void *p, size_t n)
{
	p = realloc(p, n ? n : 1);
	if (!p) {
		logmsg("out of memory");
		_exit(1);
	}
	return p;
}

int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}


int poll_one(int fd, short events, int timeout_ms)
{
	struct pollfd p = { .fd = fd, .events = events };
	for (;;) {
		int r = poll(&p, 1, timeout_ms);
		if (r < 0 && errno == EINTR)
			continue;
		return r;
	}
}

void set_nonblock(int fd)
{
	int fl = fcntl(fd, F_GETFL);
	if (fl >= 0)
		fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

/* Writes everything, also to non-blocking fds (waits for POLLOUT). 0, or -1 with errno. */
int writev_all(int fd, struct iovec *iov, int n)
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

int write_all(int fd, const void *p, size_t len)
{
	struct iovec iov = { .iov_base = (void *)p, .iov_len = len };
	return writev_all(fd, &iov, 1);
}


void buf_put(struct buf *b, const void *d, size_t n)
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
