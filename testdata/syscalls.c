/* Calls the syscalls a build step must not be able to use and prints NAME=ok|error for each
   (testdata for tests/test_security.py; built with gcc -static so it runs in busybox). */
#define _GNU_SOURCE
#include <stdio.h>
#include <errno.h>
#include <string.h>
#include <unistd.h>
#include <sched.h>
#include <sys/syscall.h>
#include <sys/mount.h>
static void show(const char *n, long r) { printf("%s=%s\n", n, r == 0 ? "ok" : strerror(errno)); }
int main(void) {
  show("keyctl", syscall(SYS_keyctl, 0, 0, 0, 0, 0));
  show("add_key", syscall(SYS_add_key, "user", "x", "y", 1, -2));
  show("unshare_user", syscall(SYS_unshare, CLONE_NEWUSER));
  show("mount", mount("x", "/mnt", "tmpfs", 0, 0));
  show("swapoff", syscall(SYS_swapoff, "/dev/null"));
  show("bpf", syscall(SYS_bpf, 0, 0, 0));
  show("perf_event_open", syscall(SYS_perf_event_open, 0, 0, -1, -1, 0));
  show("userfaultfd", syscall(SYS_userfaultfd, 0));
  show("init_module", syscall(SYS_init_module, 0, 0, ""));
  show("kexec_load", syscall(SYS_kexec_load, 0, 0, 0, 0));
  show("personality_norandom", syscall(SYS_personality, 0x0040000) == -1 ? -1 : 0);
  return 0;
}
