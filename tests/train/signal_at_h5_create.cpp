// Test shim, LD_PRELOADed into train_resnet18: sends this process DDP_TEST_SIGNAL (a signal number,
// default SIGTERM) when it creates an HDF5 file whose path ends with DDP_TEST_SIGNAL_AT_CREATE, so a
// stop request lands inside that file's write at a known point instead of within a timing window
// (TrainE2E.StopDuringAnEveryNCheckpointStopsOnIt: the .tmp of an every-N checkpoint).
#include <dlfcn.h>
#include <hdf5.h>
#include <signal.h>

#include <cstdlib>
#include <cstring>

extern "C" hid_t H5Fcreate(const char* name, unsigned flags, hid_t fcpl, hid_t fapl) {
  using Fn = hid_t (*)(const char*, unsigned, hid_t, hid_t);
  static Fn real = reinterpret_cast<Fn>(dlsym(RTLD_NEXT, "H5Fcreate"));
  const char* want = std::getenv("DDP_TEST_SIGNAL_AT_CREATE");
  const size_t n = name ? std::strlen(name) : 0, w = want ? std::strlen(want) : 0;
  const hid_t f = real(name, flags, fcpl, fapl);
  if (w > 0 && n >= w && std::strcmp(name + n - w, want) == 0) {
    const char* sig = std::getenv("DDP_TEST_SIGNAL");
    raise(sig ? std::atoi(sig) : SIGTERM);
  }
  return f;
}
