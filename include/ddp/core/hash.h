// FNV-1a 64: the project's one non-cryptographic hash, for fingerprints and identities that must be
// equal wherever the same bytes are hashed (pack_imagenet's input and set fingerprints, the trainer's
// shard-set identities). Not for anything an adversary controls.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>

namespace ddp {

class Fnv1a64 {
 public:
  void bytes(const void* p, size_t n) {
    for (size_t i = 0; i < n; ++i) {
      h_ ^= static_cast<const uint8_t*>(p)[i];
      h_ *= 1099511628211ull;
    }
  }
  void text(const std::string& s) { bytes(s.c_str(), s.size() + 1); }  // with the NUL: "ab"+"c" != "a"+"bc"
  void number(int64_t v) { bytes(&v, sizeof v); }
  uint64_t value() const { return h_; }
  // 16 hex digits after "fnv1a64:".
  std::string hex() const {
    char buf[32];
    std::snprintf(buf, sizeof buf, "fnv1a64:%016llx", static_cast<unsigned long long>(h_));
    return buf;
  }

 private:
  uint64_t h_ = 1469598103934665603ull;
};

}  // namespace ddp
