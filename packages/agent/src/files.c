/* File operations: READ, WRITE, LIST, STAT, MKDIR, REMOVE, and the entries that answer them. */
#include "moat-agent.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define LIST_BATCH (64u * 1024u)

static const char *type_name(mode_t m)
{
	if (S_ISREG(m))
		return "file";
	if (S_ISDIR(m))
		return "dir";
	if (S_ISLNK(m))
		return "symlink";
	return "other";
}

/* ENTRY/OK record. dirfd+name locate the entry (for readlinkat). */
static void entry_record(struct buf *b, int dirfd, const char *at, const char *name, const struct stat *st)
{
	rec_add(b, "name", name);
	rec_add(b, "type", type_name(st->st_mode));
	rec_addf(b, "size", "%lld", (long long)st->st_size);
	rec_addf(b, "mode", "%o", (unsigned)(st->st_mode & 07777));
	rec_addf(b, "mtime", "%lld", (long long)st->st_mtim.tv_sec);
	rec_addf(b, "uid", "%u", (unsigned)st->st_uid);
	rec_addf(b, "gid", "%u", (unsigned)st->st_gid);
	if (S_ISLNK(st->st_mode)) {
		char target[PATH_MAX + 1];
		ssize_t n = readlinkat(dirfd, at, target, PATH_MAX);
		if (n >= 0) {
			target[n] = '\0';
			rec_add(b, "target", target);
		}
	}
}

/* The last path component, "/" for the root. */
static char *base_name(const char *path)
{
	size_t len = strlen(path);
	while (len > 1 && path[len - 1] == '/')
		len--;
	size_t start = len;
	while (start > 0 && path[start - 1] != '/')
		start--;
	if (start == len)
		return strdup("/");
	return strndup(path + start, len - start);
}

/* Sends `type` (OK or ENTRY) describing path without following a final symlink. */
void send_entry_of(uint8_t type, const char *path)
{
	struct stat st;
	if (lstat(path, &st) < 0)
		fail(errno, "%s: %s", path, strerror(errno));
	char *name = base_name(path);
	struct buf b = { 0 };
	entry_record(&b, AT_FDCWD, path, name ? name : "", &st);
	send_frame(type, b.p, b.len);
	free(b.p);
	free(name);
}

/* mkdir -p: missing intermediate directories get 0755, the last one `mode`. 0 or errno. */
static int mkdir_p(const char *path, mode_t mode)
{
	size_t len = strlen(path);
	if (len >= PATH_MAX)
		return ENAMETOOLONG;
	char tmp[PATH_MAX];
	memcpy(tmp, path, len + 1);
	while (len > 1 && tmp[len - 1] == '/')
		tmp[--len] = '\0';
	for (char *p = tmp + 1;; p++) {
		if (*p != '/' && *p != '\0')
			continue;
		char c = *p;
		*p = '\0';
		if (p[-1] != '/' && mkdir(tmp, c ? 0755 : mode) < 0) {
			int e = errno;
			struct stat st;
			if (e != EEXIST)
				return e;
			if (stat(tmp, &st) < 0 || !S_ISDIR(st.st_mode))
				return c ? ENOTDIR : EEXIST;
		}
		if (!c)
			return 0;
		*p = c;
	}
}

void op_read(const char *path)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
	if (fd < 0)
		fail(errno, "%s: %s", path, strerror(errno));
	struct stat st;
	if (fstat(fd, &st) == 0 && S_ISDIR(st.st_mode))
		fail(EISDIR, "%s: %s", path, strerror(EISDIR));
	static uint8_t buf[CHUNK];
	for (;;) {
		ssize_t n = read(fd, buf, sizeof buf);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			fail(errno, "%s: %s", path, strerror(errno));
		if (n == 0)
			break;
		send_frame(T_STDOUT, buf, (size_t)n);
	}
	send_frame(T_END, NULL, 0);
}

/* The optional octal `mode` of a request (permission bits only). */
static mode_t req_mode(const struct rec *req, unsigned long dflt)
{
	unsigned long mode = dflt;
	const char *mv = rec_get(req, "mode");
	if (mv && parse_ulong(mv, 8, 07777, &mode) < 0)
		fail(EINVAL, "invalid mode: %s", mv);
	return (mode_t)mode;
}

void op_write(const struct rec *req, const char *path)
{
	int append = 0;
	mode_t mode = req_mode(req, 0644);
	if (parse_bool(req, "append", &append) < 0)
		fail(EINVAL, "append must be 0 or 1");
	int flags = O_WRONLY | O_CREAT | O_CLOEXEC | O_NOCTTY | (append ? O_APPEND : O_TRUNC);
	int fd = open(path, flags, (mode_t)mode);
	if (fd < 0 && errno == ENOENT) {
		/* Parents are only created on demand: the common case pays no extra syscalls. */
		char *dir = strdup(path);
		if (!dir)
			fail(ENOMEM, "out of memory");
		char *slash = strrchr(dir, '/');
		if (slash && slash != dir) {
			*slash = '\0';
			int e = mkdir_p(dir, 0755);
			if (e)
				fail(e, "%s: %s", dir, strerror(e));
		}
		free(dir);
		fd = open(path, flags, (mode_t)mode);
	}
	if (fd < 0)
		fail(errno, "%s: %s", path, strerror(errno));
	/* An explicit mode also applies to a file that already existed (open only uses it on creation). */
	if (rec_get(req, "mode") && fchmod(fd, (mode_t)mode) < 0) { /* not the owner: keep the existing mode */ }
	for (;;) {
		struct frame f;
		frame_read(&f);
		if (f.type == T_EOF)
			break;
		if (f.type != T_DATA)
			fail(EINVAL, "unexpected frame type 0x%02x during WRITE", f.type);
		if (write_all(fd, f.data, f.len) < 0)
			fail(errno, "%s: %s", path, strerror(errno));
	}
	struct stat st;
	if (fstat(fd, &st) < 0)
		fail(errno, "%s: %s", path, strerror(errno));
	if (close(fd) < 0 && errno != EINTR)
		fail(errno, "%s: %s", path, strerror(errno));
	char *name = base_name(path);
	struct buf b = { 0 };
	entry_record(&b, AT_FDCWD, path, name ? name : "", &st);
	send_frame(T_OK, b.p, b.len);
}

void op_list(const char *path)
{
	DIR *d = opendir(path);
	if (!d)
		fail(errno, "%s: %s", path, strerror(errno));
	int dfd = dirfd(d);
	/* Entries are batched into few writes: directories can be large. */
	struct buf out = { 0 }, rec = { 0 };
	for (;;) {
		errno = 0;
		struct dirent *de = readdir(d);
		if (!de) {
			if (errno)
				fail(errno, "%s: %s", path, strerror(errno));
			break;
		}
		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		struct stat st;
		if (fstatat(dfd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0)
			continue; /* removed since readdir */
		rec.len = 0;
		entry_record(&rec, dfd, de->d_name, de->d_name, &st);
		frame_append(&out, T_ENTRY, rec.p, rec.len);
		if (out.len >= LIST_BATCH) {
			if (write_all(g_sock, out.p, out.len) < 0)
				disconnected();
			out.len = 0;
		}
	}
	frame_append(&out, T_END, NULL, 0);
	if (write_all(g_sock, out.p, out.len) < 0)
		disconnected();
}

/* rm -r below dirfd, without following symlinks. 0 or errno. */
static int rm_tree(int dirfd, const char *name)
{
	struct stat st;
	if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
		return errno;
	if (!S_ISDIR(st.st_mode))
		return unlinkat(dirfd, name, 0) < 0 ? errno : 0;
	int fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return errno;
	DIR *d = fdopendir(fd);
	if (!d) {
		int e = errno;
		close(fd);
		return e;
	}
	int err = 0;
	/*
	 * Some filesystems may skip entries when the directory changes during
	 * readdir; a further pass picks up what is left.
	 */
	for (int pass = 0; pass < 3; pass++) {
		rewinddir(d);
		for (;;) {
			errno = 0;
			struct dirent *de = readdir(d);
			if (!de) {
				err = errno;
				break;
			}
			if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
				continue;
			int e = rm_tree(fd, de->d_name);
			if (e && e != ENOENT) {
				err = e;
				break;
			}
		}
		if (err)
			break;
		if (unlinkat(dirfd, name, AT_REMOVEDIR) == 0) {
			closedir(d);
			return 0;
		}
		err = errno;
		if (err != ENOTEMPTY)
			break;
		err = 0;
	}
	closedir(d);
	return err ? err : ENOTEMPTY;
}

void op_remove(const struct rec *req, const char *path)
{
	int recursive = 0;
	if (parse_bool(req, "recursive", &recursive) < 0)
		fail(EINVAL, "recursive must be 0 or 1");
	struct stat st, root;
	if (lstat(path, &st) < 0)
		fail(errno, "%s: %s", path, strerror(errno));
	/* Compared by inode so "/.", "//" or "/a/.." are refused too. */
	if (stat("/", &root) == 0 && st.st_dev == root.st_dev && st.st_ino == root.st_ino)
		fail(EPERM, "refusing to remove /");
	int e = 0;
	if (!S_ISDIR(st.st_mode))
		e = unlink(path) < 0 ? errno : 0;
	else if (recursive)
		e = rm_tree(AT_FDCWD, path);
	else
		e = rmdir(path) < 0 ? errno : 0;
	if (e == EEXIST)
		e = ENOTEMPTY; /* POSIX allows either for a non-empty directory */
	if (e)
		fail(e, "%s: %s", path, strerror(e));
	send_frame(T_OK, NULL, 0);
}

void op_mkdir(const struct rec *req, const char *path)
{
	int parents = 0;
	mode_t mode = req_mode(req, 0755);
	if (parse_bool(req, "parents", &parents) < 0)
		fail(EINVAL, "parents must be 0 or 1");
	int e = parents ? mkdir_p(path, (mode_t)mode) : (mkdir(path, (mode_t)mode) < 0 ? errno : 0);
	if (e)
		fail(e, "%s: %s", path, strerror(e));
	send_entry_of(T_OK, path);
}
