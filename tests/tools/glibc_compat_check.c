// Checks tools/glibc_compat's arc4random functions as a host without them would use them: the library is
// dlopen'ed and the functions taken from it (dladdr confirms they are its own, not glibc's).
// Usage: glibc_compat_check LIB [fill]   -- fill: only call arc4random_buf on 4096 bytes (for the
// getrandom fault tests, run with fake_getrandom.so preloaded). Prints OK and exits 0, or names the failure.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

typedef uint32_t (*rand_fn)(void);
typedef void (*buf_fn)(void*, size_t);
typedef uint32_t (*uniform_fn)(uint32_t);

static int failures = 0;
#define EXPECT(cond, ...)                          \
  do {                                             \
    if (!(cond)) {                                 \
      fprintf(stderr, "FAILED: " __VA_ARGS__);     \
      fputc('\n', stderr);                         \
      failures++;                                  \
    }                                              \
  } while (0)

static void* from_lib(void* lib, const char* lib_path, const char* name) {
  void* f = dlsym(lib, name);
  Dl_info info;
  if (f == NULL || dladdr(f, &info) == 0 || info.dli_fname == NULL) {
    fprintf(stderr, "FAILED: %s not found in %s\n", name, lib_path);
    return NULL;
  }
  // dlsym on a handle searches that library first; make sure it did not fall through to glibc.
  const char* base = strrchr(lib_path, '/');
  base = base ? base + 1 : lib_path;
  if (strstr(info.dli_fname, base) == NULL) {
    fprintf(stderr, "FAILED: %s came from %s, not %s\n", name, info.dli_fname, lib_path);
    return NULL;
  }
  return f;
}

static int all_zero(const unsigned char* p, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (p[i]) return 0;
  return 1;
}

int main(int argc, char** argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s LIB [fill]\n", argv[0]);
    return 2;
  }
  void* lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  if (lib == NULL) {
    fprintf(stderr, "FAILED: dlopen %s: %s\n", argv[1], dlerror());
    return 1;
  }
  rand_fn r = (rand_fn)from_lib(lib, argv[1], "arc4random");
  buf_fn b = (buf_fn)from_lib(lib, argv[1], "arc4random_buf");
  uniform_fn u = (uniform_fn)from_lib(lib, argv[1], "arc4random_uniform");
  if (!r || !b || !u) return 1;

  static unsigned char buf[4096];
  if (argc > 2 && strcmp(argv[2], "fill") == 0) {
    b(buf, sizeof buf);
    EXPECT(!all_zero(buf, sizeof buf), "arc4random_buf left 4096 bytes zero");
    // every 64-byte stretch written (a short read continued, not dropped)
    for (size_t i = 0; i < sizeof buf; i += 64) {
      if (all_zero(buf + i, 64)) {
        EXPECT(0, "arc4random_buf left bytes %zu..%zu zero", i, i + 63);
        break;
      }
    }
    if (failures) return 1;
    puts("OK");
    return 0;
  }

  // arc4random_buf: every length fills, and only the bytes asked for
  size_t lens[] = {0, 1, 7, 64, 300, 4000};
  for (size_t k = 0; k < sizeof lens / sizeof lens[0]; k++) {
    memset(buf, 0, sizeof buf);
    b(buf, lens[k]);
    EXPECT(all_zero(buf + lens[k], sizeof buf - lens[k]), "arc4random_buf(%zu) wrote past the end", lens[k]);
    if (lens[k] >= 64) EXPECT(!all_zero(buf, lens[k]), "arc4random_buf(%zu) left it all zero", lens[k]);
  }
  // arc4random: 64 draws are not all the same
  uint32_t first = r(), differ = 0;
  for (int i = 0; i < 64; i++) differ |= r() ^ first;
  EXPECT(differ != 0, "arc4random returned %u 65 times", first);
  // arc4random_uniform(n) < n; 0 and 1 give 0 (as glibc)
  EXPECT(u(0) == 0 && u(1) == 0, "arc4random_uniform(0) or (1) is not 0");
  uint32_t bounds[] = {2, 3, 7, 1000, 0x80000001u, 0xC0000000u, UINT32_MAX};
  for (size_t k = 0; k < sizeof bounds / sizeof bounds[0]; k++) {
    for (int i = 0; i < 20000; i++) {
      uint32_t v = u(bounds[k]);
      if (v >= bounds[k]) {
        EXPECT(0, "arc4random_uniform(%u) gave %u", bounds[k], v);
        break;
      }
    }
  }
  // every value of a small range turns up
  int seen[7] = {0};
  for (int i = 0; i < 7000; i++) seen[u(7)]++;
  for (int v = 0; v < 7; v++) EXPECT(seen[v] > 700, "arc4random_uniform(7) gave %d only %d times in 7000", v, seen[v]);
  // No modulo bias: with n = 3 * 2^30, value % n of a uniform 32-bit value lands below 2^30 half the time;
  // unbiased it is a third. 60000 draws: standard error 0.002, so 0.333 +- 0.02 tells them apart.
  int below = 0;
  const int draws = 60000;
  for (int i = 0; i < draws; i++) below += u(0xC0000000u) < 0x40000000u;
  double frac = (double)below / draws;
  EXPECT(frac > 0.313 && frac < 0.353, "arc4random_uniform(3*2^30): %.4f of draws below 2^30, expected 1/3 (modulo bias?)", frac);
  if (failures) return 1;
  puts("OK");
  return 0;
}
