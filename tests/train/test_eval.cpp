// Flip test-time augmentation helpers (--eval-flip): the mirror of NHWC batches and the counts of
// two views' averaged probabilities, checked on hand-made cases whose probabilities are chosen so
// that the expected ranks and losses are known in closed form.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "ddp/core/check.h"
#include "ddp/train/eval.h"

using ddp::train::averaged_view_counts;
using ddp::train::mirror_nhwc;

namespace {

// Logits whose softmax is exactly the given probabilities (up to float rounding of the logs).
std::vector<float> logits_of(const std::vector<double>& probs) {
  std::vector<float> l;
  for (double p : probs) l.push_back(static_cast<float>(std::log(p)));
  return l;
}

std::vector<float> concat(const std::vector<float>& a, const std::vector<float>& b) {
  std::vector<float> v = a;
  v.insert(v.end(), b.begin(), b.end());
  return v;
}

}  // namespace

TEST(EvalFlip, MirrorReversesEveryRowAndKeepsChannelOrder) {
  // 2 images of 2 x 3 pixels, 3 channels; pixel (i, y, x) holds (100 i + 10 y + x) * 3 + ch.
  const int n = 2, h = 2, w = 3, c = 3;
  std::vector<uint8_t> src(n * h * w * c), dst(src.size(), 255);
  for (int i = 0; i < n; ++i)
    for (int y = 0; y < h; ++y)
      for (int x = 0; x < w; ++x)
        for (int ch = 0; ch < c; ++ch) src[((i * h + y) * w + x) * c + ch] = static_cast<uint8_t>((i * 20 + y * 4 + x) * 3 + ch);
  mirror_nhwc(src.data(), dst.data(), n, h, w, c);
  // Row 0 of image 1 was pixels 20, 21, 22 (values 60..68); mirrored it reads 22, 21, 20.
  const std::vector<uint8_t> row = {66, 67, 68, 63, 64, 65, 60, 61, 62};
  EXPECT_EQ(std::vector<uint8_t>(dst.begin() + (1 * h + 0) * w * c, dst.begin() + (1 * h + 1) * w * c), row);
  for (int i = 0; i < n; ++i)
    for (int y = 0; y < h; ++y)
      for (int x = 0; x < w; ++x)
        for (int ch = 0; ch < c; ++ch)
          ASSERT_EQ(dst[((i * h + y) * w + x) * c + ch], src[((i * h + y) * w + (w - 1 - x)) * c + ch]);
  EXPECT_THROW(mirror_nhwc(src.data(), src.data(), n, h, w, c), ddp::Error);
}

TEST(EvalFlip, IdenticalViewsGiveThePlainSoftmaxCounts) {
  const auto l = logits_of({0.1, 0.2, 0.7});
  const int32_t label[1] = {2};
  auto e = averaged_view_counts(l, l, label, 1, 3, 0.0);
  EXPECT_EQ(e.count, 1);
  EXPECT_EQ(e.top1, 1);
  EXPECT_EQ(e.top5, 1);
  EXPECT_NEAR(e.loss_sum, -std::log(0.7), 1e-6);
  // Label smoothing 0.1: 0.9 * -log p[y] + 0.1 * mean_k -log p[k].
  e = averaged_view_counts(l, l, label, 1, 3, 0.1);
  const double want = 0.9 * -std::log(0.7) + 0.1 * -(std::log(0.1) + std::log(0.2) + std::log(0.7)) / 3;
  EXPECT_NEAR(e.loss_sum, want, 1e-6);
}

TEST(EvalFlip, DisagreeingViewsAreAveragedInProbability) {
  // View a (0.6, 0.3, 0.1), view b (0.1, 0.3, 0.6): average (0.35, 0.3, 0.35).
  const auto a = logits_of({0.6, 0.3, 0.1}), b = logits_of({0.1, 0.3, 0.6});
  // Image 0 has label 1 (ranked third), image 1 label 0 (tied first with class 2: counts as top-1,
  // as the lowest class index among the tied).
  const int32_t labels[2] = {1, 0};
  auto e = averaged_view_counts(concat(a, a), concat(b, b), labels, 2, 3, 0.0);
  EXPECT_EQ(e.count, 2);
  EXPECT_EQ(e.top1, 1);
  EXPECT_EQ(e.top5, 2);
  EXPECT_NEAR(e.loss_sum, -std::log(0.3) - std::log(0.35), 1e-6);
  // Averaging the log-probabilities instead would give another loss (image 1: -(log 0.6 + log 0.1) / 2).
  EXPECT_GT(std::abs(e.loss_sum - (-0.5 * (std::log(0.3) + std::log(0.3)) - 0.5 * (std::log(0.6) + std::log(0.1)))),
            1e-3);
}

TEST(EvalFlip, TopFiveNeedsFewerThanFiveClassesAbove) {
  // 7 classes; image 0's label (class 0) is seventh in the averaged probabilities -> not top-5;
  // image 1's label (class 2) is fifth -> top-5.
  const auto l = logits_of({0.05, 0.1, 0.15, 0.16, 0.17, 0.18, 0.19});
  const int32_t labels[2] = {0, 2};
  auto e = averaged_view_counts(concat(l, l), concat(l, l), labels, 2, 7, 0.0);
  EXPECT_EQ(e.top1, 0);
  EXPECT_EQ(e.top5, 1);
}

TEST(EvalFlip, LogitsFarApartGiveAFiniteLoss) {
  // Probabilities of e^-1000 underflow; the averaged log-probabilities must not. Views (1, e^-1000)
  // and (e^-1000, 1): both classes average to 1/2 (loss log 2). One view (1, e^-1000) twice with
  // label smoothing 0.1: 0.9 * 0 + 0.1 * (0 + 1000) / 2 = 50.
  const std::vector<float> a = {0.0f, -1000.0f}, b = {-1000.0f, 0.0f};
  const int32_t label[1] = {0};
  auto e = averaged_view_counts(a, b, label, 1, 2, 0.0);
  EXPECT_NEAR(e.loss_sum, std::log(2.0), 1e-9);
  EXPECT_EQ(e.top1, 1);  // a tie, and the label has the lower index
  e = averaged_view_counts(a, a, label, 1, 2, 0.1);
  EXPECT_NEAR(e.loss_sum, 50.0, 1e-6);
}

TEST(EvalFlip, TiesGoToTheLowestClassIndex) {
  // Both views uniform over 7 classes (a zero fc): the averaged probabilities tie exactly, and the
  // label's rank is its class index (a descending sort stable by index), as the backends count it.
  const std::vector<float> u(7, 0.0f);
  std::vector<float> a, b;
  std::vector<int32_t> labels;
  for (int y = 0; y < 7; ++y) {
    a.insert(a.end(), u.begin(), u.end());
    b.insert(b.end(), u.begin(), u.end());
    labels.push_back(y);
  }
  auto e = averaged_view_counts(a, b, labels.data(), 7, 7, 0.0);
  EXPECT_EQ(e.top1, 1);  // class 0
  EXPECT_EQ(e.top5, 5);  // classes 0..4
  EXPECT_NEAR(e.loss_sum, 7 * std::log(7.0), 1e-9);
  // Views (0.5, 0.3, 0.2) and (0.3, 0.5, 0.2) tie classes 0 and 1 at 0.4: label 1 is second.
  const int32_t one[1] = {1};
  e = averaged_view_counts(logits_of({0.5, 0.3, 0.2}), logits_of({0.3, 0.5, 0.2}), one, 1, 3, 0.0);
  EXPECT_EQ(e.top1, 0);
}

TEST(EvalFlip, ANanOrPlusInfLogitInEitherViewMakesTheImageWrong) {
  // A NaN (or a +inf: softmax inf - inf) in one class of one view: the image is wrong for top-1 and
  // top-5 whatever its label, and its loss is NaN (the backends' rule; PyTorch's argmax would pick
  // the NaN class). A NaN in the second view used to be dropped: the first view's figures alone.
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const std::vector<float> good = {3.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
  const int32_t label[1] = {0};
  for (const float v : {nan, std::numeric_limits<float>::infinity()})
  for (const bool bad_in_a : {true, false}) {
    SCOPED_TRACE(std::string(bad_in_a ? "view a: " : "view b: ") + std::to_string(v));
    std::vector<float> bad = good;
    bad[4] = v;
    auto e = averaged_view_counts(bad_in_a ? bad : good, bad_in_a ? good : bad, label, 1, 7, 0.0);
    EXPECT_EQ(e.count, 1);
    EXPECT_EQ(e.top1, 0);
    EXPECT_EQ(e.top5, 0);
    EXPECT_TRUE(std::isnan(e.loss_sum));
  }
  // Every logit NaN (a NaN weight upstream): wrong, also for label 0.
  const std::vector<float> all(7, nan);
  auto e = averaged_view_counts(all, all, label, 1, 7, 0.0);
  EXPECT_EQ(e.top1, 0);
  EXPECT_EQ(e.top5, 0);
}

TEST(EvalFlip, RejectsWrongSizesAndLabels) {
  const auto l = logits_of({0.5, 0.5});
  const int32_t ok[1] = {1}, bad[1] = {2};
  EXPECT_THROW(averaged_view_counts(l, logits_of({0.2, 0.3, 0.5}), ok, 1, 2, 0.0), ddp::Error);
  EXPECT_THROW(averaged_view_counts(l, l, bad, 1, 2, 0.0), ddp::Error);
}
