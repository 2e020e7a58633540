// Test helper: deletes root attributes of HDF5 files, to turn shards of this pack_imagenet into shards
// of an older one (which lacked, e.g., set_fingerprint) for the tests of how those still load.
//   h5_delete_attr ATTR FILE...
#include <cstdio>
#include <exception>

#include "ddp/core/h5.h"

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: h5_delete_attr ATTR FILE...\n");
    return 2;
  }
  try {
    for (int i = 2; i < argc; ++i) {
      ddp::h5::Handle f = ddp::h5::open_file(argv[i], true);
      if (!ddp::h5::has_attr(f, argv[1]) || H5Adelete(f, argv[1]) < 0) {
        std::fprintf(stderr, "h5_delete_attr: %s has no attribute '%s' to delete\n", argv[i], argv[1]);
        return 1;
      }
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "h5_delete_attr: %s\n", e.what());
    return 1;
  }
  return 0;
}
