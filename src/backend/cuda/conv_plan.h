// What identifies a cuDNN conv plan, and how one is named in messages: shared by conv.cpp and the
// CPU emulation's conv_emu.cpp (tests/backend/cuda/emu), which keeps the same plan bookkeeping.
#pragma once

#include <string>
#include <tuple>

#include "ddp/backend/cuda/conv.h"
#include "ddp/core/str.h"
#include "ddp/core/tensor.h"

namespace ddp::cuda::conv_plan {

enum class Op { Fprop = 0, Dgrad = 1, Wgrad = 2 };
inline const char* op_name(Op op) { return op == Op::Fprop ? "fprop" : op == Op::Dgrad ? "dgrad" : "wgrad"; }

// Everything a built plan depends on: op, shape, dtype, whether TF32 engines are barred (strict fp32
// only), whether every candidate was built for a timed search, and whether non-deterministic engines
// are barred.
using Key = std::tuple<int, int, int, int, int, int, int, int, int, int, int, bool, bool, bool>;
inline Key make_key(Op op, const ConvShape& p, bool strict_fp32, bool autotune, bool deterministic) {
  return {static_cast<int>(op), p.n, p.c, p.h, p.w, p.k, p.r, p.s, p.stride, p.pad, static_cast<int>(p.dtype),
          strict_fp32, autotune, deterministic};
}

inline std::string describe(Op op, const ConvShape& p) {
  return str("conv ", op_name(op), " n=", p.n, " c=", p.c, " h=", p.h, " w=", p.w, " k=", p.k, " r=", p.r,
             " s=", p.s, " stride=", p.stride, " pad=", p.pad, " dtype=", dtype_name(p.dtype));
}

}  // namespace ddp::cuda::conv_plan
