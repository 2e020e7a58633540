// Evaluation helpers of the trainer: horizontal-flip test-time augmentation (--eval-flip).
#pragma once

#include <cstdint>
#include <vector>

#include "ddp/nn/model.h"

namespace ddp::train {

// dst = src with every row reversed (n images, h x w pixels, c interleaved channels per pixel).
void mirror_nhwc(const uint8_t* src, uint8_t* dst, int n, int h, int w, int c);

// Counts for the average of the softmax probabilities of two views of the same n images (logits
// n x classes, row-major): top-1 / top-5 with ties in the label's favour, as the backends' eval
// counts, and the loss sum with label smoothing eps on the averaged probabilities, the same formula as
// the training loss: (1 - eps) * -log p[label] + eps * mean over classes of -log p[k].
nn::EvalCounts averaged_view_counts(const std::vector<float>& logits_a, const std::vector<float>& logits_b,
                                    const int32_t* labels, int n, int classes, double label_smoothing);

}  // namespace ddp::train
