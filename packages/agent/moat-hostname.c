/*
 * moat-hostname: sets the hostname inside sandboxes' UTS namespaces for the
 * Moat control plane. A sandbox's root has no CAP_SYS_ADMIN, so a pooled
 * sandbox cannot rename itself when a claim takes it; the host does it. One
 * long-lived process (instead of a spawn of nsenter per claim) keeps that off
 * the claim's critical path.
 *
 * Protocol on stdin/stdout, one line each way: "PID HOSTNAME\n" -> "ok\n" or
 * "error: ...\n". PID is the sandbox's init as the OCI runtime reports it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define REPLY(...) (printf(__VA_ARGS__), fflush(stdout))

static int valid_hostname(const char *s)
{
	size_t n = strlen(s);
	if (n == 0 || n > 63)
		return 0;
	for (const char *p = s; *p; p++)
		if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '-'))
			return 0;
	return 1;
}

int main(void)
{
	int home = open("/proc/self/ns/uts", O_RDONLY | O_CLOEXEC);
	struct stat home_st;
	if (home < 0 || fstat(home, &home_st) < 0) {
		perror("moat-hostname: /proc/self/ns/uts");
		return 1;
	}
	char line[512];
	while (fgets(line, sizeof line, stdin)) {
		int pid;
		char name[128];
		if (sscanf(line, "%d %127s", &pid, name) != 2 || pid <= 1 || !valid_hostname(name)) {
			REPLY("error: bad request\n");
			continue;
		}
		char path[64];
		snprintf(path, sizeof path, "/proc/%d/ns/uts", pid);
		int fd = open(path, O_RDONLY | O_CLOEXEC);
		struct stat st;
		if (fd < 0 || fstat(fd, &st) < 0) {
			REPLY("error: %s: %s\n", path, strerror(errno));
			if (fd >= 0)
				close(fd);
			continue;
		}
		/* A reused pid could name a host process: never rename the host. */
		if (st.st_ino == home_st.st_ino && st.st_dev == home_st.st_dev) {
			close(fd);
			REPLY("error: %s is the host's UTS namespace\n", path);
			continue;
		}
		int ok = setns(fd, CLONE_NEWUTS) == 0 && sethostname(name, strlen(name)) == 0;
		int err = errno;
		close(fd);
		if (setns(home, CLONE_NEWUTS) < 0) {
			perror("moat-hostname: returning to the host UTS namespace");
			return 1;
		}
		if (ok)
			REPLY("ok\n");
		else
			REPLY("error: %s\n", strerror(err));
	}
	return 0;
}
