// LD_PRELOAD stand-in for getrandom(2), to drive tools/glibc_compat through the kernel's answers it must
// handle. FAKE_GETRANDOM=short: at most 5 bytes a call, every other call EINTR first (the real bytes come
// from /dev/urandom); FAKE_GETRANDOM=fail: every call fails with EIO.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

ssize_t getrandom(void* buf, size_t n, unsigned flags) {
  (void)flags;
  static int calls = 0;
  const char* mode = getenv("FAKE_GETRANDOM");
  if (mode != NULL && strcmp(mode, "fail") == 0) {
    errno = EIO;
    return -1;
  }
  if (calls++ % 2 == 0) {
    errno = EINTR;
    return -1;
  }
  if (n > 5) n = 5;
  int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  ssize_t got = read(fd, buf, n);
  close(fd);
  return got;
}
