#include <gtest/gtest.h>

#include "ddp/core/check.h"
#include "ddp/core/log.h"
#include "ddp/core/tensor.h"

using namespace ddp;

TEST(Tensor, ShapeAndBytes) {
  Tensor t = Tensor::empty({2, 3, 4, 5}, DType::F16, Device::CPU, Layout::NHWC);
  EXPECT_EQ(t.numel(), 120);
  EXPECT_EQ(t.nbytes(), 240u);
  EXPECT_EQ(t.dim(-1), 5);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(t.raw()) % 64, 0u);
  EXPECT_EQ(t.describe(), "f16[2, 3, 4, 5] NHWC cpu");
}

TEST(Tensor, TypedAccessChecksDtype) {
  Tensor t = Tensor::zeros({4}, DType::F32);
  EXPECT_NO_THROW(t.data<float>());
  EXPECT_THROW(t.data<int32_t>(), Error);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(t.data<float>()[i], 0.0f);
}

TEST(Tensor, ReshapeKeepsStorageAndRejectsWrongCount) {
  Tensor t = Tensor::empty({2, 6}, DType::I32);
  t.data<int32_t>()[7] = 42;
  Tensor r = t.reshape({3, 4});
  EXPECT_EQ(r.data<int32_t>()[7], 42);
  EXPECT_THROW(t.reshape({5}), Error);
}

TEST(Tensor, NchwNeedsFourDims) { EXPECT_THROW(Tensor::empty({2, 3}, DType::F32, Device::CPU, Layout::NCHW), Error); }

TEST(Tensor, CopyFromChecksShape) {
  Tensor a = Tensor::empty({3}, DType::F32), b = Tensor::empty({3}, DType::F32), c = Tensor::empty({4}, DType::F32);
  a.data<float>()[2] = 1.5f;
  b.copy_from(a);
  EXPECT_EQ(b.data<float>()[2], 1.5f);
  EXPECT_THROW(c.copy_from(a), Error);
}

TEST(Check, ErrorNamesFileLineAndRank) {
  set_log_rank(3, 4);
  try {
    DDP_CHECK(1 == 2, "bad value ", 7, " for --flag");
    FAIL() << "no throw";
  } catch (const Error& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("bad value 7 for --flag"), std::string::npos) << m;
    EXPECT_NE(m.find("test_tensor.cpp"), std::string::npos) << m;
    EXPECT_NE(m.find("rank 3"), std::string::npos) << m;
  }
  set_log_rank(0, 1);
}

TEST(Check, CudaTensorWithoutGpuIsAClearError) {
  if (cuda_available()) GTEST_SKIP() << "a GPU is present";
  EXPECT_THROW(Tensor::empty({4}, DType::F32, Device::CUDA), Error);
}
