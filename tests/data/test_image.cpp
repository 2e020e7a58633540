// Image primitives: format sniffing, region/DCT-scaled decode against a full decode, damage
// detection, crop geometry against torchvision's formulas.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <iterator>

#include "data_test_util.h"
#include "ddp/core/check.h"
#include "ddp/core/rng.h"
#include "ddp/core/str.h"
#include "ddp/data/image.h"

using namespace ddp;
using namespace ddp::data;

namespace {
std::vector<uint8_t> smooth(int w, int h, uint32_t seed) {
  Rng rng(seed, rng_stream::kTest);
  float a[6];
  for (auto& x : a) x = rng.uniform(0.01f, 0.08f);
  std::vector<uint8_t> px(static_cast<size_t>(w) * h * 3);
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x)
      for (int c = 0; c < 3; ++c)
        px[(static_cast<size_t>(y) * w + x) * 3 + c] = static_cast<uint8_t>(
            127 + 60 * std::sin(a[c] * x + c) + 60 * std::cos(a[c + 3] * y) * 0.9f + (rng.next_u32() % 5));
  return px;
}
}  // namespace

TEST(Image, SniffsFormatsByContent) {
  const uint8_t jpg[] = {0xFF, 0xD8, 0xFF, 0xE0};
  const uint8_t png[] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  const uint8_t gif[] = {'G', 'I', 'F', '8', '9', 'a'};
  const uint8_t txt[] = {'h', 'e', 'l', 'l', 'o'};
  EXPECT_EQ(sniff_format(jpg, sizeof jpg), ImageFormat::Jpeg);
  EXPECT_EQ(sniff_format(png, sizeof png), ImageFormat::Png);
  EXPECT_EQ(sniff_format(gif, sizeof gif), ImageFormat::Gif);
  EXPECT_EQ(sniff_format(txt, sizeof txt), ImageFormat::Unknown);
  EXPECT_EQ(sniff_format(jpg, 0), ImageFormat::Unknown);
}

// Decoding only a region (crop + skipped rows) gives the pixels of the full decode (atol 2: fancy
// upsampling of chroma at the crop edge sees other neighbours); with
// DCT scaling the result is a faithful smaller view (mean |diff| <= 3 after resampling both to the
// same output).
TEST(Image, RegionDecodeAgreesWithFullDecode) {
  const int W = 301, H = 203;
  auto px = smooth(W, H, 3);
  auto jpg = encode_jpeg(px.data(), W, H, 95);
  Decoded full = decode_jpeg(jpg.data(), jpg.size(), "full", {}, 0, 0, 0, true);
  ASSERT_EQ(full.img.w, W);
  ASSERT_EQ(full.img.h, H);
  ASSERT_EQ(full.scale_denom, 1);
  for (Box b : {Box{17, 33, 150, 120}, Box{0, 0, 301, 203}, Box{200, 100, 101, 103}, Box{64, 8, 40, 40}}) {
    // Needs full resolution: no scaling, exact pixels.
    Decoded d = decode_jpeg(jpg.data(), jpg.size(), "region", b, static_cast<int>(b.w), static_cast<int>(b.h));
    EXPECT_EQ(d.scale_denom, 1);
    const int bx = static_cast<int>(b.x), by = static_cast<int>(b.y);
    ASSERT_NEAR(d.box.w, b.w, 1e-4);
    int maxd = 0;
    for (int y = 0; y < static_cast<int>(b.h); ++y)
      for (int x = 0; x < static_cast<int>(b.w); ++x)
        for (int c = 0; c < 3; ++c) {
          int xi = static_cast<int>(d.box.x) + x, yi = static_cast<int>(d.box.y) + y;
          int a = d.img.px[(static_cast<size_t>(yi) * d.img.w + xi) * 3 + c];
          int e = full.img.px[(static_cast<size_t>(by + y) * W + bx + x) * 3 + c];
          maxd = std::max(maxd, std::abs(a - e));
        }
    EXPECT_LE(maxd, 2) << "box " << b.x << "," << b.y;
    // Small output: DCT scaling kicks in.
    Decoded s = decode_jpeg(jpg.data(), jpg.size(), "scaled", b, 32, 32);
    if (b.w >= 64 && b.h >= 64) {
      EXPECT_GT(s.scale_denom, 1);
    }
    std::vector<uint8_t> o1(32 * 32 * 3), o2(32 * 32 * 3);
    resample(full.img.px.data(), W, H, b, o1.data(), 32, 32);
    resample(s.img.px.data(), s.img.w, s.img.h, s.box, o2.data(), 32, 32);
    auto df = ddp::test::diff(o1.data(), o2.data(), o1.size());
    EXPECT_LE(df.mean, 3.0) << "box " << b.x << "," << b.y << " denom " << s.scale_denom;
  }
}

// Files with restart markers (encode_jpeg(restarts)'s, jpeg_add_restarts') decode a crop from the restart
// intervals around it only: exactly the pixels libjpeg's own region decode (full_check, which reads
// the file as it is) gives, at every DCT scale, for boxes at the edges and in the middle.
TEST(Image, RestartIntervalCropsEqualRegionDecode) {
  const int W = 203, H = 151;  // not whole MCUs
  auto px = smooth(W, H, 8);
  Rng noise(6, rng_stream::kTest);
  for (auto& v : px) v = static_cast<uint8_t>(std::clamp(int(v) + int(noise.next_u32() % 31) - 15, 0, 255));
  auto jpg = encode_jpeg(px.data(), W, H, 90, true);
  Rng rng(7, rng_stream::kTest);
  for (int k = 0; k < 400; ++k) {
    Box b = k == 0 ? Box{0, 0, 203, 151} : k == 1 ? Box{180, 130, 23, 21} : random_resized_crop(rng, W, H, 0.02f, 1.0f);
    const int out = 8 + (k % 4) * 12;  // 8..44: DCT scales 1 to 8
    Decoded a = decode_jpeg(jpg.data(), jpg.size(), "spliced", b, out, out);
    Decoded e = decode_jpeg(jpg.data(), jpg.size(), "region", b, out, out, 0, true);
    ASSERT_EQ(a.scale_denom, e.scale_denom) << k;
    // The same window of the image: compare where both decoded, box-relative.
    const float s = 1.0f / static_cast<float>(a.scale_denom);
    // Image pixel (X, Y) at this scale is pixel (X + ax, Y + ay) of a.img, (X + ex, Y + ey) of e.img.
    auto offset = [](float v) { return static_cast<int>(std::lround(v)); };
    const int ax = offset(a.box.x - b.x * s), ay = offset(a.box.y - b.y * s);
    const int ex = offset(e.box.x - b.x * s), ey = offset(e.box.y - b.y * s);
    ASSERT_NEAR(a.box.x - b.x * s, ax, 1e-3) << k;
    ASSERT_NEAR(a.box.y - b.y * s, ay, 1e-3) << k;
    ASSERT_NEAR(e.box.x - b.x * s, ex, 1e-3) << k;
    ASSERT_NEAR(e.box.y - b.y * s, ey, 1e-3) << k;
    // a.img covers image pixels -ax.., e.img -ex..; the box plus a pixel each side lies in both.
    const int x0 = std::max(-ax, -ex), y0 = std::max(-ay, -ey);
    const int x1 = std::min(a.img.w - ax, e.img.w - ex), y1 = std::min(a.img.h - ay, e.img.h - ey);
    ASSERT_LE(x0, std::max(0, static_cast<int>(std::floor(b.x * s)) - 1)) << k;
    ASSERT_GE(x1, std::min(a.img.w - ax, static_cast<int>(std::ceil((b.x + b.w) * s)) + 1)) << k;
    ASSERT_LE(y0, std::max(0, static_cast<int>(std::floor(b.y * s)) - 1)) << k;
    ASSERT_GE(y1, std::min(a.img.h - ay, static_cast<int>(std::ceil((b.y + b.h) * s)) + 1)) << k;
    int maxd = 0;
    for (int y = y0; y < y1; ++y)
      for (int x = x0; x < x1; ++x)
        for (int c = 0; c < 3; ++c) {
          const int va = a.img.px[(static_cast<size_t>(y + ay) * a.img.w + (x + ax)) * 3 + c];
          const int ve = e.img.px[(static_cast<size_t>(y + ey) * e.img.w + (x + ex)) * 3 + c];
          maxd = std::max(maxd, std::abs(va - ve));
        }
    EXPECT_EQ(maxd, 0) << "box " << b.x << "," << b.y << " " << b.w << "x" << b.h << " denom " << a.scale_denom;
  }
}

// jpeg_add_restarts is lossless: baseline 4:2:0, 4:4:4 and progressive files made by PIL decode to
// exactly the same pixels before and after; a truncated file is an error naming it.
TEST(Image, AddRestartsKeepsPixels) {
  if (!test::have_pil()) GTEST_SKIP() << "/usr/bin/python3 with PIL + numpy needed";
  auto dir = test::make_temp_dir("restarts");
  std::ofstream(dir / "make.py")
      << "import sys,numpy as np; from PIL import Image\n"
         "r=np.random.default_rng(3)\n"
         "a=(r.random((97,130,3))*60+np.linspace(0,180,130)[None,:,None]).astype(np.uint8)\n"
         "im=Image.fromarray(a); d=sys.argv[1]\n"
         "im.save(d+'/b420.jpg',quality=90); im.save(d+'/b444.jpg',quality=85,subsampling=0)\n"
         "im.save(d+'/prog.jpg',quality=90,progressive=True)\n";
  auto r = test::run("/usr/bin/python3 " + test::q(dir / "make.py") + " " + test::q(dir));
  ASSERT_EQ(r.rc, 0) << r.out;
  for (const char* f : {"b420.jpg", "b444.jpg", "prog.jpg"}) {
    std::ifstream in(dir / f, std::ios::binary);
    std::vector<uint8_t> src((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    ASSERT_FALSE(src.empty()) << f;
    auto rst = jpeg_add_restarts(src.data(), src.size(), f);
    EXPECT_FALSE(read_jpeg_header(rst.data(), rst.size(), f).progressive) << f;
    Decoded a = decode_jpeg(src.data(), src.size(), f, {}, 0, 0, 0, true);
    Decoded b = decode_jpeg(rst.data(), rst.size(), f, {}, 0, 0, 0, true);
    ASSERT_EQ(a.img.w, b.img.w) << f;
    ASSERT_EQ(a.img.h, b.img.h) << f;
    EXPECT_EQ(a.img.px, b.img.px) << f;
    // Crops through the restart intervals too.
    Decoded c = decode_jpeg(rst.data(), rst.size(), f, Box{33, 20, 50, 40}, 50, 40);
    Decoded e = decode_jpeg(src.data(), src.size(), f, Box{33, 20, 50, 40}, 50, 40);
    std::vector<uint8_t> oc(50 * 40 * 3), oe(50 * 40 * 3);
    resample(c.img.px.data(), c.img.w, c.img.h, c.box, oc.data(), 50, 40);
    resample(e.img.px.data(), e.img.w, e.img.h, e.box, oe.data(), 50, 40);
    EXPECT_EQ(oc, oe) << f;
    std::vector<uint8_t> cut(src.begin(), src.begin() + static_cast<long>(src.size() / 2));
    try {
      jpeg_add_restarts(cut.data(), cut.size(), std::string("cut_") + f);
      ADD_FAILURE() << "truncated " << f << " transcoded";
    } catch (const Error& err) {
      EXPECT_NE(std::string(err.what()).find(std::string("cut_") + f), std::string::npos) << err.what();
    }
  }
  std::filesystem::remove_all(dir);
}

TEST(Image, DamagedAndForeignDataAreErrorsNamingTheImage) {
  auto px = smooth(120, 80, 5);
  auto jpg = encode_jpeg(px.data(), 120, 80, 90);
  std::vector<uint8_t> cut(jpg.begin(), jpg.begin() + static_cast<long>(jpg.size() * 6 / 10));
  try {
    decode_jpeg(cut.data(), cut.size(), "cut.jpg", {}, 0, 0, 0, true);
    FAIL() << "truncated JPEG decoded";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cut.jpg"), std::string::npos) << e.what();
  }
  std::vector<uint8_t> junk = {0xFF, 0xD8, 0xFF, 0x00, 1, 2, 3};
  EXPECT_THROW(decode_jpeg(junk.data(), junk.size(), "junk", {}), Error);
  EXPECT_THROW(decode_jpeg(jpg.data(), 0, "empty", {}), Error);
  EXPECT_THROW(decode_jpeg(jpg.data(), jpg.size(), "big", {}, 0, 0, 1000), Error);  // 9600 px > 1000
}

TEST(Image, ResampleIdentityAndFlip) {
  auto px = smooth(16, 12, 9);
  std::vector<uint8_t> o(16 * 12 * 3), f(16 * 12 * 3);
  resample(px.data(), 16, 12, Box{0, 0, 16, 12}, o.data(), 16, 12);
  EXPECT_EQ(o, px);
  resample(px.data(), 16, 12, Box{0, 0, 16, 12}, f.data(), 16, 12, true);
  for (int y = 0; y < 12; ++y)
    for (int x = 0; x < 16; ++x)
      for (int c = 0; c < 3; ++c) ASSERT_EQ(f[(y * 16 + x) * 3 + c], px[(y * 16 + 15 - x) * 3 + c]);
  // A constant image stays constant under any resampling.
  std::vector<uint8_t> k(40 * 30 * 3, 77), ko(13 * 17 * 3);
  resample(k.data(), 40, 30, Box{3.5f, 2.25f, 30.1f, 20.7f}, ko.data(), 13, 17);
  for (uint8_t v : ko) ASSERT_EQ(v, 77);
}

// The resampler against PIL's Image.resize(box=..., BILINEAR) (+ FLIP_LEFT_RIGHT): enlarging,
// shrinking, mixed and large shrinks, widths that are not multiples of the SIMD widths. PIL weights
// in 22-bit fixed point, we in 14 bits (as Pillow-SIMD), and when shrinking vertically we run the
// vertical pass first (PIL: horizontal first), rounding the intermediate image differently: atol 1,
// mean |diff| <= 0.3.
TEST(Image, ResampleMatchesPil) {
  if (!test::have_pil()) GTEST_SKIP() << "/usr/bin/python3 with PIL + numpy needed";
  const int W = 203, H = 151;
  auto px = smooth(W, H, 21);
  Rng noise(5, rng_stream::kTest);
  for (auto& v : px) v = static_cast<uint8_t>(std::clamp(int(v) + int(noise.next_u32() % 41) - 20, 0, 255));
  struct Case {
    Box b;
    int dw, dh;
    bool flip;
  };
  const std::vector<Case> cases = {
      {{10.5f, 7.25f, 60.f, 45.5f}, 97, 83, false},  // enlarging both ways (horizontal pass first)
      {{0, 0, 203, 151}, 61, 45, true},              // shrinking both ways (vertical pass first)
      {{3, 2, 190, 40}, 77, 120, true},              // shrink x, enlarge y
      {{20.7f, 1, 30, 149}, 150, 19, false},         // enlarge x, shrink y
      {{0, 0, 203, 151}, 11, 7, true},               // large shrink: many taps
      {{100.2f, 50.9f, 1.5f, 2.5f}, 33, 17, false},  // box of a few pixels
  };
  auto dir = test::make_temp_dir("resample");
  std::ofstream(dir / "src.bin", std::ios::binary)
      .write(reinterpret_cast<const char*>(px.data()), static_cast<std::streamsize>(px.size()));
  std::string spec;
  for (const auto& c : cases)
    spec += str(c.b.x, ",", c.b.y, ",", c.b.x + c.b.w, ",", c.b.y + c.b.h, ",", c.dw, ",", c.dh, ",", c.flip, ";");
  std::ofstream(dir / "ref.py")
      << "import sys,numpy as np; from PIL import Image\n"
         "d=sys.argv[1]; im=Image.fromarray(np.fromfile(d+'/src.bin',np.uint8).reshape("
      << H << "," << W << ",3))\n"
         "for k,c in enumerate(sys.argv[2].strip(';').split(';')):\n"
         "  x0,y0,x1,y1,dw,dh,f=[float(v) for v in c.split(',')]\n"
         "  o=im.resize((int(dw),int(dh)),Image.BILINEAR,box=(x0,y0,x1,y1))\n"
         "  if f: o=o.transpose(Image.FLIP_LEFT_RIGHT)\n"
         "  np.asarray(o).tofile(d+'/ref%d.bin'%k)\n";
  auto r = test::run("/usr/bin/python3 " + test::q(dir / "ref.py") + " " + test::q(dir) + " '" + spec + "'");
  ASSERT_EQ(r.rc, 0) << r.out;
  for (size_t k = 0; k < cases.size(); ++k) {
    const auto& c = cases[k];
    std::vector<uint8_t> out(static_cast<size_t>(c.dw) * c.dh * 3), ref(out.size());
    std::ifstream(dir / ("ref" + std::to_string(k) + ".bin"), std::ios::binary)
        .read(reinterpret_cast<char*>(ref.data()), static_cast<std::streamsize>(ref.size()));
    resample(px.data(), W, H, c.b, out.data(), c.dw, c.dh, c.flip);
    test::Diff d = test::diff(out.data(), ref.data(), out.size());
    EXPECT_LE(d.max, 1) << "case " << k << ", mean " << d.mean;
    EXPECT_LE(d.mean, 0.3) << "case " << k << ", max " << d.max;
    // The portable kernels compute the same bytes as the AVX2 ones (where the CPU has AVX2).
    std::vector<uint8_t> portable(out.size());
    set_resample_simd(false);
    resample(px.data(), W, H, c.b, portable.data(), c.dw, c.dh, c.flip);
    set_resample_simd(true);
    EXPECT_EQ(portable, out) << "case " << k;
  }
  std::filesystem::remove_all(dir);
}

// torchvision's RandomResizedCrop: area in [0.08, 1] of the image, aspect in [3/4, 4/3] (up to
// rounding to whole pixels), inside the image; fallback centre crop for extreme shapes.
TEST(Image, RandomResizedCropGeometry) {
  Rng rng(11, rng_stream::kTest);
  for (int t = 0; t < 2000; ++t) {
    const int W = 50 + static_cast<int>(rng.below(500)), H = 50 + static_cast<int>(rng.below(500));
    Box b = random_resized_crop(rng, W, H, 0.08f, 1.0f);
    ASSERT_GE(b.x, 0);
    ASSERT_GE(b.y, 0);
    ASSERT_LE(b.x + b.w, W);
    ASSERT_LE(b.y + b.h, H);
    const double area = b.w * b.h / (double(W) * H);
    const double ratio = b.w / b.h;
    const bool fallback = area > 0.999 || std::fabs(ratio - 0.75) < 1e-3 || std::fabs(ratio - 4.0 / 3) < 1e-3;
    if (!fallback) {
      EXPECT_GE(area, 0.08 * 0.9);
      EXPECT_LE(ratio, 4.0 / 3 * (1 + 2.0 / b.h) + 1e-6);
      EXPECT_GE(ratio, 0.75 / (1 + 2.0 / b.w) - 1e-6);
    }
  }
  Box f = random_resized_crop(rng, 1000, 10, 0.08f, 1.0f);  // ratio 100: centre crop of ratio 4/3
  EXPECT_FLOAT_EQ(f.h, 10);
  EXPECT_FLOAT_EQ(f.w, 13);
  EXPECT_FLOAT_EQ(f.x, (1000 - 13) / 2);
}

TEST(Image, CenterCropBoxMatchesResizeThenCrop) {
  // torchvision: Resize(256) of 500x375 -> 341x256 (scales 500/341 and 375/256), CenterCrop(224)
  // from column int(round(117 / 2.0)) = 58 (Python: halves to even), row 16, in resized pixels.
  Box b = center_crop_box(500, 375, 224, 224, 0.875f);
  EXPECT_NEAR(b.w, 224 * 500 / 341.0, 1e-3);
  EXPECT_NEAR(b.h, 224 * 375 / 256.0, 1e-3);
  EXPECT_NEAR(b.x, 58 * 500 / 341.0, 1e-3);
  EXPECT_NEAR(b.y, 16 * 375 / 256.0, 1e-3);
  // Already at the resized size: a whole-pixel crop, halves rounded to even (58.5 -> 58, 59.5 -> 60).
  Box c = center_crop_box(341, 256, 224, 224, 0.875f);
  EXPECT_FLOAT_EQ(c.x, 58);
  EXPECT_FLOAT_EQ(c.y, 16);
  EXPECT_FLOAT_EQ(c.w, 224);
  c = center_crop_box(256, 343, 224, 224, 0.875f);
  EXPECT_FLOAT_EQ(c.x, 16);
  EXPECT_FLOAT_EQ(c.y, 60);
  EXPECT_FLOAT_EQ(c.h, 224);
  Box id = center_crop_box(32, 32, 32, 32, 1.0f);
  EXPECT_FLOAT_EQ(id.x, 0);
  EXPECT_FLOAT_EQ(id.w, 32);
  int w, h;
  resize_shorter_dims(500, 375, 256, w, h);
  EXPECT_EQ(w, 341);  // int(256 * 500 / 375), as torchvision
  EXPECT_EQ(h, 256);
}
