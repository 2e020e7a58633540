// arc4random, arc4random_buf and arc4random_uniform for hosts whose glibc predates them (< 2.36).
//
// Why this exists: tools/bundle_deps carries libraries from the build machine (Debian 12, glibc 2.36) to a
// GPU host that may have glibc 2.34 (RHEL 9) or 2.35 (Ubuntu 22.04). Debian's libevent (pulled in by Open
// MPI, so by train_resnet18) imports arc4random@GLIBC_2.36 and arc4random_buf@GLIBC_2.36, and the loader
// refuses the whole process on such a host. bundle_deps builds this file into libddp_glibc_compat.so.1,
// clears those symbols' versions in the carried file and makes it need this library, so the references
// bind to glibc's own functions where glibc has them and to these where it does not (see bundle_deps).
//
// Semantics follow glibc (2.37 onwards, which also reads getrandom directly): the bytes come from the
// kernel's CSPRNG through getrandom(2) with flags 0 (blocks only until the pool is first initialised);
// interrupted or short reads are continued; the functions cannot fail, so if the kernel gives no entropy
// the process aborts with a message, as glibc does ("Fatal glibc error: cannot get entropy for
// arc4random"). There is no state, so fork and threads need no care. The /dev/urandom fallback glibc has
// for kernels without getrandom (before 3.17) is left out: no GPU driver supports such a kernel.
//
// Built with the system cc by bundle_deps: no symbol versions, and nothing from glibc newer than
// getrandom (GLIBC_2.25).
#define _GNU_SOURCE
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#define EXPORT __attribute__((visibility("default")))

__attribute__((noreturn)) static void entropy_failure(int err) {
  // write(2), not stdio: the caller may be anywhere (a signal handler, a half-initialised library).
  static const char head[] = "libddp_glibc_compat: cannot get entropy for arc4random: getrandom failed: ";
  const char* what = strerror(err);
  ssize_t unused = write(STDERR_FILENO, head, sizeof head - 1);
  unused = write(STDERR_FILENO, what, strlen(what));
  unused = write(STDERR_FILENO, "\n", 1);
  (void)unused;
  abort();
}

static void fill(void* buf, size_t n) {
  unsigned char* p = buf;
  while (n > 0) {
    ssize_t got = getrandom(p, n, 0);
    if (got > 0) {
      p += got;          // a short read (a signal, or over 32 MiB at once): go on for the rest
      n -= (size_t)got;
    } else if (got < 0 && errno == EINTR) {
      continue;
    } else {
      entropy_failure(got < 0 ? errno : EIO);  // 0 bytes for a non-empty request never happens; treated as failure
    }
  }
}

EXPORT void arc4random_buf(void* buf, size_t n) { fill(buf, n); }

EXPORT uint32_t arc4random(void) {
  uint32_t v;
  fill(&v, sizeof v);
  return v;
}

// A value in [0, upper) with every value equally likely: draw bits masked to the smallest power of two
// covering upper and reject what falls outside (at most half the draws), as glibc does; no modulo, whose
// bias would favour small values. upper 0 and 1 give 0, as in glibc and the BSDs.
EXPORT uint32_t arc4random_uniform(uint32_t upper) {
  if (upper <= 1) return 0;
  uint32_t mask = UINT32_MAX >> __builtin_clz(upper - 1);  // upper - 1 >= 1, so clz is defined
  for (;;) {
    uint32_t v;
    fill(&v, sizeof v);
    v &= mask;
    if (v < upper) return v;
  }
}
