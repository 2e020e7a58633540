#include "ddp/nn/model.h"

namespace ddp::nn {
const char* backend_name(Backend b) { return b == Backend::CPU ? "cpu" : "cuda"; }
const char* amp_name(Amp a) {
  switch (a) {
    case Amp::Off: return "off";
    case Amp::F16: return "fp16";
    case Amp::BF16: return "bf16";
  }
  return "?";
}
}  // namespace ddp::nn
