/*
 * Users are resolved by reading the sandbox's /etc/passwd and /etc/group
 * directly: NSS in a static glibc would try to dlopen modules that the
 * image may not have (or have in an incompatible version).
 */
#include "moat-agent.h"

#include <errno.h>
#include <grp.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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
void resolve_user(const char *spec, struct user *u)
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
int become_user(const struct user *u)
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
