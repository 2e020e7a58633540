// Weights files: HDF5 with one dataset per torchvision state_dict entry, PyTorch layout, fp32
// ("/layer1.0.conv1.weight" [64, 64, 3, 3], ..., "/bn1.running_mean" [64], and
// "/bn1.num_batches_tracked" int64 scalar). File attributes: format = "resnet18-ddp-weights",
// format_version = 1, num_classes. tools/torchvision_to_h5.py and tools/h5_to_torchvision.py
// convert to and from a torchvision .pth state_dict.
#pragma once

#include <cstdint>
#include <string>

#include "ddp/nn/resnet18.h"

namespace ddp::nn {

inline constexpr const char* kWeightsFormat = "resnet18-ddp-weights";
inline constexpr int64_t kWeightsFormatVersion = 1;

// params_torch: spec.param_count floats in PyTorch layout; buffers: spec.buffer_count floats.
// Written to "<path>.tmp" and renamed, so a crash never leaves a half-written file under `path`.
void save_weights(const std::string& path, const ResNet18Spec& spec, const float* params_torch, const float* buffers,
                  int64_t num_batches_tracked);

// Reads every tensor of `spec` from `path`; a missing tensor, a wrong shape, an inf or NaN value, a
// different class count or a file that is not a weights file is a ddp::Error naming the tensor and the
// file. Nothing is written to the outputs unless the whole file reads cleanly. num_batches_tracked
// may be nullptr; it gets the largest of the per-BN counters (they are equal in files we write).
void load_weights(const std::string& path, const ResNet18Spec& spec, float* params_torch, float* buffers,
                  int64_t* num_batches_tracked);

}  // namespace ddp::nn
