// pack_imagenet's PNG decoder against PIL's convert('RGB') (what torchvision trains on): 16-bit grey and
// colour, alpha of every level, grey+alpha, palette and grey with tRNS, low bit depths, a gAMA chunk,
// Adam7 interlacing. Inputs and expected pixels come from make_png_cases.py (zlib + PIL, not our code).
#include <gtest/gtest.h>

#include <fstream>
#include <iterator>

#include "data_test_util.h"
#include "ddp/core/check.h"
#include "png_decode.h"

using namespace ddp;
using namespace ddp::test;

namespace {

class PngTest : public ::testing::Test {
 protected:
  static fs::path dir_;
  static bool ok_;
  static std::string fixture_log_;
  static void SetUpTestSuite() {
    ok_ = have_pil();
    if (!ok_) return;
    dir_ = make_temp_dir("png_cases");
    auto r = run("/usr/bin/python3 " + std::string(DDP_PNG_CASES_PY) + " " + q(dir_));
    ok_ = r.rc == 0;
    fixture_log_ = r.out;
  }
  static void TearDownTestSuite() {
    if (!dir_.empty()) fs::remove_all(dir_);
  }
  void SetUp() override {
    if (!have_pil()) GTEST_SKIP() << "/usr/bin/python3 with PIL + numpy is needed to make the test PNGs";
    ASSERT_TRUE(ok_) << "make_png_cases.py failed:\n" << fixture_log_;
  }
  static std::vector<uint8_t> bytes(const fs::path& p) {
    std::ifstream f(p, std::ios::binary);
    return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
  }
  static data::Rgb decode(const std::string& name) {
    auto b = bytes(dir_ / (name + ".png"));
    return prep::decode_png(b.data(), b.size(), name + ".png", 0);
  }
};
fs::path PngTest::dir_;
bool PngTest::ok_ = false;
std::string PngTest::fixture_log_;

// Every case exactly: both sides take the high byte of 16-bit samples and drop alpha, so there is no
// rounding to allow for.
TEST_F(PngTest, EveryCaseMatchesPilExactly) {
  std::ifstream list(dir_ / "cases.txt");
  std::string name;
  int n = 0;
  while (list >> name) {
    ++n;
    SCOPED_TRACE(name);
    const RefImage ref = read_ref(dir_ / (name + ".ref"));
    const data::Rgb got = decode(name);
    ASSERT_EQ(got.w, ref.w);
    ASSERT_EQ(got.h, ref.h);
    ASSERT_EQ(got.px.size(), ref.px.size());
    size_t bad = 0, first = 0;
    for (size_t i = 0; i < ref.px.size(); ++i)
      if (got.px[i] != ref.px[i] && bad++ == 0) first = i;
    EXPECT_EQ(bad, 0u) << "first difference at byte " << first << " (pixel " << first / 3 << "): got "
                       << int(got.px[first]) << ", PIL " << int(ref.px[first]);
  }
  EXPECT_EQ(n, 13) << "cases.txt lists another number of cases than make_png_cases.py writes";
}

// The probe's symptom, by hand: the 16-bit grey ramp 0, 65535/36, 2*65535/36, ... (np.linspace, truncated
// to integers) keeps the high byte of each sample, 0, 7, 14, ... 255.
TEST_F(PngTest, Gray16RampKeepsTheHighByte) {
  const data::Rgb got = decode("gray16");
  ASSERT_EQ(got.w, 37);
  for (int x = 0; x < 37; ++x) {
    const int high = static_cast<int>(65535.0 * x / 36.0) >> 8;  // no sample is near a multiple of 256
    EXPECT_EQ(got.px[x * 3], high) << "x " << x;
    EXPECT_EQ(got.px[x * 3 + 1], high) << "x " << x;
    EXPECT_EQ(got.px[x * 3 + 2], high) << "x " << x;
  }
}

// Fully transparent RGBA keeps its colours (the simplified API made it black).
TEST_F(PngTest, TransparentPixelsKeepTheirColour) {
  const data::Rgb got = decode("rgba8_transparent");
  int nonzero = 0;
  for (auto v : got.px) nonzero += v != 0;
  EXPECT_GT(nonzero, static_cast<int>(got.px.size()) / 2);
}

TEST_F(PngTest, TruncatedFileIsAnErrorNamingIt) {
  auto b = bytes(dir_ / "rgb16.png");
  b.resize(b.size() / 2);
  try {
    prep::decode_png(b.data(), b.size(), "cut.png", 0);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cut.png"), std::string::npos) << e.what();
  }
}

TEST_F(PngTest, MaxPixelsIsEnforced) {
  auto b = bytes(dir_ / "rgb16.png");  // 13x9 = 117 pixels
  EXPECT_NO_THROW(prep::decode_png(b.data(), b.size(), "big.png", 117));
  try {
    prep::decode_png(b.data(), b.size(), "big.png", 116);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'big.png' is too large: 13x9"), std::string::npos) << e.what();
  }
}

}  // namespace
