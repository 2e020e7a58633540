// Convolutions whose kernel taps partly fall in the padding for every output position: tiny images,
// such as ResNet18's layer4 at 32 px input (3x3 pad 1 on a 1x1 map reads 1 of its 9 taps, the stride-2
// conv from 2x2 reads 4). conv2d_forward / conv2d_backward_* (ops.h) already skip such dead taps; these
// entry points let a model gather the live-tap weights once per step and use them for both forward and
// data gradient, instead of each call reading the whole weight tensor again.
#pragma once

#include <vector>

#include "ddp/backend/cpu/ops.h"

namespace ddp::cpu {

// Kernel taps r * p.s + s (ascending) that read the input for at least one output position. All r * s of
// them except on tiny images; an empty list means every output sees only padding.
std::vector<int> conv2d_live_taps(const Conv2dShape& p);

// wl (k x c x taps.size(), row-major) = w (KCRS) at the taps. taps must be conv2d_live_taps(p) (checked,
// here and below).
void conv2d_gather_taps(const Conv2dShape& p, const std::vector<int>& taps, const float* w, float* wl);

// conv2d_forward and conv2d_backward_data with the weights gathered by conv2d_gather_taps (same results:
// the dead taps only ever multiply zero padding).
void conv2d_forward_gathered(const Conv2dShape& p, const std::vector<int>& taps, const float* x, const float* wl,
                             float* y);
void conv2d_backward_data_gathered(const Conv2dShape& p, const std::vector<int>& taps, const float* dy,
                                   const float* wl, float* dx);

}  // namespace ddp::cpu
