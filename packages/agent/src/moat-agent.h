/*
 * What moat-init's source files share. One concern each:
 *
 *   main.c     init: options, the listener, reaping, signals, shutdown
 *   mux.c      --mux: many connections over stdin/stdout, each with its handler
 *   handler.c  a connection's handler: reads the request, runs its operation
 *   exec.c     EXEC: starts the program, relays stdin, output and signals
 *   files.c    READ, WRITE, LIST, STAT, MKDIR, REMOVE (RENAME's answer)
 *   dial.c     DIAL: connects to a loopback port and relays the stream
 *   users.c    users from the sandbox's /etc/passwd and /etc/group
 *   conn.c     the handler's connection: frames in and out, ERROR, the end
 *   record.c   `key=value\0` records and their values
 *   util.c     logging, allocation, time, writes, buffers
 *   protocol.h the wire protocol's numbers, shared with the host
 *
 * Include this first: every system header must see _GNU_SOURCE.
 */
#ifndef MOAT_AGENT_H
#define MOAT_AGENT_H

#define _GNU_SOURCE
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

#include "protocol.h"

#define CHUNK (64u * 1024u)

/* util.c */

void logmsg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
const char *errname(int e);
void *xmalloc(size_t n);
void *xrealloc(void *p, size_t n);
int64_t now_ms(void);
int poll_one(int fd, short events, int timeout_ms);
void set_nonblock(int fd);
int writev_all(int fd, struct iovec *iov, int n);
int write_all(int fd, const void *p, size_t len);

/* Growable byte buffer, used for records and batched frames. */
struct buf {
	char *p;
	size_t len, cap;
};

void buf_put(struct buf *b, const void *d, size_t n);

static inline void put_be32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
}

static inline uint32_t get_be32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* record.c */

struct kv {
	const char *key, *val;
};

struct rec {
	struct kv *kv;
	size_t n;
};

void rec_add(struct buf *b, const char *key, const char *val);
void rec_addf(struct buf *b, const char *key, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
int rec_parse(char *p, size_t len, struct rec *r);
const char *rec_get(const struct rec *r, const char *key);
int parse_bool(const struct rec *r, const char *key, int *out);
int parse_ulong(const char *v, int base, unsigned long max, unsigned long *out);
const char *need_path(const struct rec *r, const char *key);

/* conn.c: the state of a handler's connection, one per handler process */

extern int g_sock;
extern pid_t g_pgid;
extern int g_pty_master;

/* Frame reader over the (non-blocking) connection socket. */
struct frame {
	uint8_t type;
	uint32_t len;
	uint8_t *data;
};

struct reader {
	uint8_t *buf;
	size_t start, end;
};

extern struct reader rd;

void send_frame(uint8_t type, const void *payload, size_t len);
void frame_append(struct buf *b, uint8_t type, const void *payload, size_t len);
__attribute__((noreturn)) void disconnected(void);
__attribute__((noreturn)) void linger_exit(void);
__attribute__((noreturn, format(printf, 2, 3))) void fail(int err, const char *fmt, ...);
ssize_t reader_fill(void);
int frame_next(struct frame *f);
void frame_read(struct frame *f);

/* users.c */

struct user {
	uid_t uid;
	gid_t gid;
	char *name; /* NULL for a numeric uid without a passwd entry */
	char *home;
	gid_t *groups;
	int ngroups;
};

void resolve_user(const char *spec, struct user *u);
int become_user(const struct user *u);

/* exec.c, files.c, dial.c: the operations */

__attribute__((noreturn)) void op_exec(struct rec *req);
void op_read(const char *path);
void op_write(const struct rec *req, const char *path);
void op_list(const char *path);
void op_mkdir(const struct rec *req, const char *path);
void op_remove(const struct rec *req, const char *path);
void send_entry_of(uint8_t type, const char *path);
__attribute__((noreturn)) void op_dial(const struct rec *req);

/* handler.c */

/* Whom a request without "user" runs as: root as PID 1, the caller's own uid under --stdio and --mux. */
extern const char *g_default_user;
__attribute__((noreturn)) void handler_main(int sock);
/* In a forked child of --stdio or --mux: detaches from the host's stdin/stdout, closes the parent's `close_a` and
 * `close_b`, and serves `sock`. */
__attribute__((noreturn)) void handler_child(int sock, int close_a, int close_b);

/* mux.c; `signal_fd` is init's signalfd (SIGCHLD, SIGTERM, SIGINT). */
int serve_mux(int signal_fd);

#endif
