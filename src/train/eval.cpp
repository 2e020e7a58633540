#include "ddp/train/eval.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "ddp/backend/cpu/ops.h"
#include "ddp/core/check.h"

namespace ddp::train {

void mirror_nhwc(const uint8_t* src, uint8_t* dst, int n, int h, int w, int c) {
  DDP_CHECK(src != dst, "mirror_nhwc: source and destination must differ");
  const int64_t row = static_cast<int64_t>(w) * c;
  for (int64_t r = 0; r < static_cast<int64_t>(n) * h; ++r) {
    const uint8_t* s = src + r * row;
    uint8_t* d = dst + r * row;
    for (int x = 0; x < w; ++x) std::copy_n(s + static_cast<int64_t>(w - 1 - x) * c, c, d + static_cast<int64_t>(x) * c);
  }
}

nn::EvalCounts averaged_view_counts(const std::vector<float>& logits_a, const std::vector<float>& logits_b,
                                    const int32_t* labels, int n, int classes, double label_smoothing) {
  const size_t need = static_cast<size_t>(n) * static_cast<size_t>(classes);
  DDP_CHECK(logits_a.size() == need && logits_b.size() == need, "averaged_view_counts: expected ", n, " x ", classes,
            " logits per view, got ", logits_a.size(), " and ", logits_b.size());
  // In log space throughout: an early or diverging model has logits hundreds apart, where the
  // probabilities underflow to 0 and -log p would be infinite although the backends' log-softmax
  // loss is finite.
  auto log_softmax = [classes](const float* row, std::vector<double>& out) {
    const double mx = *std::max_element(row, row + classes);
    double z = 0;
    for (int k = 0; k < classes; ++k) z += std::exp(static_cast<double>(row[k]) - mx);
    const double lse = mx + std::log(z);
    for (int k = 0; k < classes; ++k) out[k] = static_cast<double>(row[k]) - lse;
  };
  nn::EvalCounts e;
  std::vector<double> la(static_cast<size_t>(classes)), lb(la), lp(la);
  for (int i = 0; i < n; ++i) {
    log_softmax(logits_a.data() + static_cast<size_t>(i) * classes, la);
    log_softmax(logits_b.data() + static_cast<size_t>(i) * classes, lb);
    double mean_nll = 0;
    for (int k = 0; k < classes; ++k) {
      // log((pa + pb) / 2), as log-sum-exp of the two log-probabilities. A NaN in either view (a NaN
      // or +inf logit makes its whole row NaN) stays NaN: std::max/min would drop one in the second view and
      // report the first view alone. Both -inf (p = 0 twice) is -inf, not -inf - -inf = NaN.
      const double a = la[k], b = lb[k];
      const double hi = std::max(a, b), lo = std::min(a, b);
      if (std::isnan(a) || std::isnan(b))
        lp[k] = std::numeric_limits<double>::quiet_NaN();
      else
        lp[k] = hi == -std::numeric_limits<double>::infinity() ? hi : hi + std::log1p(std::exp(lo - hi)) - std::log(2.0);
      mean_nll -= lp[k] / classes;
    }
    const int32_t y = labels[i];
    DDP_CHECK(y >= 0 && y < classes, "averaged_view_counts: label ", y, " of image ", i, " is not in [0, ", classes, ")");
    // The backends' rule (cpu::label_rank): ties go to the lowest class index, and a NaN or +inf
    // logit in either view (it makes every lp NaN) makes the image wrong.
    const int32_t rank = cpu::label_rank(lp.data(), classes, y);
    e.top1 += rank == 0;
    e.top5 += rank < 5;
    e.loss_sum += (1.0 - label_smoothing) * -lp[y] + label_smoothing * mean_nll;
  }
  e.count = n;
  return e;
}

}  // namespace ddp::train
