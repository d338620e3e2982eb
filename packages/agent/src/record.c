/* Records: `key=value\0`... payloads (docs/agent-protocol.md). */
#include "moat-agent.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void rec_add(struct buf *b, const char *key, const char *val)
{
	buf_put(b, key, strlen(key));
	buf_put(b, "=", 1);
	buf_put(b, val, strlen(val) + 1); /* with the terminating NUL */
}

void rec_addf(struct buf *b, const char *key, const char *fmt, ...)
{
	char v[64];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(v, sizeof v, fmt, ap);
	va_end(ap);
	rec_add(b, key, v);
}

/* Parses `key=value\0`... in place. 0, or -1 if malformed. */
int rec_parse(char *p, size_t len, struct rec *r)
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
const char *rec_get(const struct rec *r, const char *key)
{
	const char *v = NULL;
	for (size_t i = 0; i < r->n; i++)
		if (strcmp(r->kv[i].key, key) == 0)
			v = r->kv[i].val;
	return v;
}

int parse_bool(const struct rec *r, const char *key, int *out)
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

int parse_ulong(const char *v, int base, unsigned long max, unsigned long *out)
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
const char *need_path(const struct rec *r, const char *key)
{
	const char *p = rec_get(r, key);
	if (!p || p[0] != '/')
		fail(EINVAL, "%s must be an absolute path", key);
	return p;
}
