/*
 * moat-idmap: idmapped bind mounts (Linux >= 5.12), so that every sandbox
 * sees the shared image layers and its own disks under its own uid range
 * while the files on disk keep one canonical owner range.
 *
 *   moat-idmap bind FROM TO COUNT SRC DST [SRC DST ...]
 *   moat-idmap overlay FSID OPTIONS TARGET
 *   moat-idmap userns-limits NAME=VALUE ... < container-state.json
 *   moat-idmap loop FILE TARGET
 *   moat-idmap umount TARGET...
 *
 * bind: each SRC is bind-mounted at DST (an existing directory) with ids
 * FROM..FROM+COUNT-1 on disk shown (and written) as TO..TO+COUNT-1; ids
 * outside the range show as the overflow id (nobody). The mapping is a user
 * namespace made for the purpose: a child unshares one, this process writes
 * its maps, and the mounts keep a reference to it after the child is gone.
 * overlay: see mount_overlay; userns-limits: see set_userns_limits; loop and umount: see mount_loop.
 * Node has no binding for open_tree, mount_setattr, move_mount, setfsuid or mount(2), hence C.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <linux/loop.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/fsuid.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static void die(const char *what, const char *arg) {
  fprintf(stderr, "moat-idmap: %s%s%s: %s\n", what, arg ? " " : "", arg ? arg : "", strerror(errno));
  exit(1);
}

static unsigned long parse_id(const char *s, const char *what) {
  char *end;
  errno = 0;
  unsigned long v = strtoul(s, &end, 10);
  if (errno || *s == '\0' || *end != '\0' || v > 0xfffffffeUL) {
    fprintf(stderr, "moat-idmap: %s must be a number of 0..4294967294, not \"%s\"\n", what, s);
    exit(2);
  }
  return v;
}

static void write_file(const char *path, const char *text) {
  int fd = open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0) die("open", path);
  if (write(fd, text, strlen(text)) != (ssize_t)strlen(text)) die("write", path);
  close(fd);
}

/* A user namespace with the mapping, held by the returned fd. */
static int make_userns(unsigned long from, unsigned long to, unsigned long count) {
  int ready[2];
  if (pipe2(ready, O_CLOEXEC) < 0) die("pipe", NULL);
  pid_t child = fork();
  if (child < 0) die("fork", NULL);
  if (child == 0) {
    char c;
    close(ready[1]);
    if (unshare(CLONE_NEWUSER) < 0) _exit(1);
    /* Parked until the parent has opened the namespace (EOF on the pipe). */
    while (read(ready[0], &c, 1) > 0) {
    }
    _exit(0);
  }
  close(ready[0]);
  char path[64], map[96], nspath[64];
  snprintf(map, sizeof map, "%lu %lu %lu\n", from, to, count);
  snprintf(nspath, sizeof nspath, "/proc/%d/ns/user", child);
  /* Wait until the child is in its own namespace: its ns link differs from ours. */
  char self[64] = "", other[64] = "";
  if (readlink("/proc/self/ns/user", self, sizeof self - 1) < 0) die("readlink", "/proc/self/ns/user");
  for (int i = 0; i < 10000; i++) {
    memset(other, 0, sizeof other);
    if (readlink(nspath, other, sizeof other - 1) > 0 && strcmp(self, other) != 0) break;
    usleep(100);
  }
  if (strcmp(self, other) == 0) {
    errno = ETIMEDOUT;
    die("waiting for the user namespace of pid", NULL);
  }
  snprintf(path, sizeof path, "/proc/%d/uid_map", child);
  write_file(path, map);
  snprintf(path, sizeof path, "/proc/%d/gid_map", child);
  write_file(path, map);
  int fd = open(nspath, O_RDONLY | O_CLOEXEC);
  if (fd < 0) die("open", nspath);
  close(ready[1]);
  waitpid(child, NULL, 0);
  return fd;
}

/* Mounts overlayfs with the fs ids of the sandbox's root: overlayfs does its own upper-layer work (work dir,
 * copy-up, whiteouts) with the mounter's credentials, which must have a mapping in the idmapped upper. The
 * capabilities setfs[ug]id drops from the effective set are raised again from the permitted one. */
static int mount_overlay(unsigned long fsid, const char *options, const char *target) {
  setfsgid((gid_t)fsid);
  setfsuid((uid_t)fsid);
  struct __user_cap_header_struct header = {_LINUX_CAPABILITY_VERSION_3, 0};
  struct __user_cap_data_struct caps[2];
  if (syscall(SYS_capget, &header, caps) < 0) die("capget", NULL);
  caps[0].effective = caps[0].permitted;
  caps[1].effective = caps[1].permitted;
  if (syscall(SYS_capset, &header, caps) < 0) die("capset", NULL);
  if (mount("overlay", target, "overlay", MS_NOSUID | MS_NODEV, options) < 0) die("mounting the overlay at", target);
  return 0;
}

/* An OCI createRuntime hook: the container's state (JSON with its init's "pid") on stdin. Sets the user
 * namespace's own limits (/proc/sys/user/NAME) before anything of the sandbox runs. A new user namespace
 * starts without any (INT_MAX); its creator, root, owns every sandbox's, so without these one sandbox
 * could use all that the host allows root's namespaces together. */
static int set_userns_limits(int argc, char **argv) {
  char state[65536];
  size_t n = fread(state, 1, sizeof state - 1, stdin);
  state[n] = '\0';
  const char *at = strstr(state, "\"pid\":");
  long pid = at ? strtol(at + 6, NULL, 10) : 0;
  if (pid <= 0) {
    fprintf(stderr, "moat-idmap: no \"pid\" in the container state on stdin\n");
    return 1;
  }
  char path[64];
  snprintf(path, sizeof path, "/proc/%ld/ns/user", pid);
  int ns = open(path, O_RDONLY | O_CLOEXEC);
  if (ns < 0) die("open", path);
  if (setns(ns, CLONE_NEWUSER) < 0) die("setns", path);
  for (int i = 2; i < argc; i++) {
    char *eq = strchr(argv[i], '=');
    if (!eq || eq == argv[i] || strspn(argv[i], "abcdefghijklmnopqrstuvwxyz_") != (size_t)(eq - argv[i])) {
      fprintf(stderr, "moat-idmap: \"%s\" is not NAME=VALUE\n", argv[i]);
      return 2;
    }
    snprintf(path, sizeof path, "/proc/sys/user/%.*s", (int)(eq - argv[i]), argv[i]);
    parse_id(eq + 1, path);
    write_file(path, eq + 1);
  }
  return 0;
}

/* Loop-mounts an ext4 image (nosuid, nodev) on a free loop device that detaches itself at unmount. mount(8)
 * does the same through libmount, which reads the whole mount table and scans every loop device for one
 * with the same backing file: with thousands of sandboxes on a host that costs more than the rest of a
 * sandbox's start. Here it is a handful of system calls, whatever the host holds. */
static int mount_loop(const char *file, const char *target) {
  int backing = open(file, O_RDWR | O_CLOEXEC);
  if (backing < 0) die("open", file);
  int ctl = open("/dev/loop-control", O_RDWR | O_CLOEXEC);
  if (ctl < 0) die("open", "/dev/loop-control");
  struct loop_config config = {.fd = (__u32)backing, .info = {.lo_flags = LO_FLAGS_AUTOCLEAR}};
  char dev[32];
  for (int attempt = 0;; attempt++) {
    int n = ioctl(ctl, LOOP_CTL_GET_FREE);
    if (n < 0) die("LOOP_CTL_GET_FREE", NULL);
    snprintf(dev, sizeof dev, "/dev/loop%d", n);
    int loop = open(dev, O_RDWR | O_CLOEXEC);
    if (loop < 0) die("open", dev);
    if (ioctl(loop, LOOP_CONFIGURE, &config) == 0) {
      /* The mount holds the device from here; closing ours lets autoclear detach it at unmount. */
      if (mount(dev, target, "ext4", MS_NOSUID | MS_NODEV, NULL) < 0) {
        int err = errno;
        close(loop);
        errno = err;
        die("mounting the disk at", target);
      }
      close(loop);
      return 0;
    }
    /* Another process configured that device first: take the next free one. */
    if (errno != EBUSY || attempt >= 100) die("LOOP_CONFIGURE", dev);
    close(loop);
  }
}

/* Unmounts each TARGET; lazily where it is busy, so that a teardown never wedges. */
static int unmount_all(int argc, char **argv) {
  for (int i = 2; i < argc; i++) {
    if (umount2(argv[i], 0) == 0 || errno == EINVAL || errno == ENOENT) continue;
    if (errno != EBUSY || umount2(argv[i], MNT_DETACH) < 0) die("umount", argv[i]);
  }
  return 0;
}

static void usage(void) {
  fprintf(stderr,
          "usage: moat-idmap bind FROM TO COUNT SRC DST [SRC DST ...]\n"
          "       moat-idmap overlay FSID OPTIONS TARGET\n"
          "       moat-idmap userns-limits NAME=VALUE ... < container-state.json\n"
          "       moat-idmap loop FILE TARGET\n"
          "       moat-idmap umount TARGET...\n");
  exit(2);
}

int main(int argc, char **argv) {
  if (argc == 5 && strcmp(argv[1], "overlay") == 0) return mount_overlay(parse_id(argv[2], "FSID"), argv[3], argv[4]);
  if (argc >= 2 && strcmp(argv[1], "userns-limits") == 0) return set_userns_limits(argc, argv);
  if (argc == 4 && strcmp(argv[1], "loop") == 0) return mount_loop(argv[2], argv[3]);
  if (argc >= 3 && strcmp(argv[1], "umount") == 0) return unmount_all(argc, argv);
  if (argc < 7 || (argc - 5) % 2 != 0 || strcmp(argv[1], "bind") != 0) usage();
  unsigned long from = parse_id(argv[2], "FROM"), to = parse_id(argv[3], "TO"), count = parse_id(argv[4], "COUNT");
  if (count == 0 || from + count - 1 > 0xfffffffeUL || to + count - 1 > 0xfffffffeUL) {
    fprintf(stderr, "moat-idmap: the ranges must be non-empty and below 4294967295\n");
    return 2;
  }
  int userns = make_userns(from, to, count);
  for (int i = 5; i + 1 < argc; i += 2) {
    int tree = (int)syscall(SYS_open_tree, AT_FDCWD, argv[i], OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC);
    if (tree < 0) die("open_tree", argv[i]);
    struct mount_attr attr = {.attr_set = MOUNT_ATTR_IDMAP, .userns_fd = (__u64)userns};
    if (syscall(SYS_mount_setattr, tree, "", AT_EMPTY_PATH, &attr, sizeof attr) < 0) die("idmapping (mount_setattr)", argv[i]);
    if (syscall(SYS_move_mount, tree, "", AT_FDCWD, argv[i + 1], MOVE_MOUNT_F_EMPTY_PATH) < 0) die("move_mount to", argv[i + 1]);
    close(tree);
  }
  return 0;
}
