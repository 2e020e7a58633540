#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>

#include "ddp/core/h5.h"

using namespace ddp;

static std::string tmp_path(const char* name) {
  return std::string(::testing::TempDir()) + "/ddp_h5_" + std::to_string(::getpid()) + "_" + name;
}

TEST(H5, RoundTripDatasetsAttributesStrings) {
  std::string p = tmp_path("rt.h5");
  {
    auto f = h5::create_file(p);
    float a[6] = {1, 2, 3, 4, 5, 6.5f};
    h5::write_f32(f, "group/sub/a", a, {2, 3});
    int64_t n = 123456789012345;
    h5::write_i64(f, "n", &n, {1});
    h5::set_attr(f, "format", std::string("x-test"));
    h5::set_attr(f, "version", int64_t{3});
    h5::set_attr(f, "ratio", 0.25);
    h5::write_strings(f, "names", {"alpha", "", "γ-unicode"});
  }
  auto f = h5::open_file(p);
  EXPECT_TRUE(h5::exists(f, "group/sub/a"));
  EXPECT_FALSE(h5::exists(f, "group/nope/a"));
  float b[6];
  h5::read_f32(f, "group/sub/a", b, {2, 3});
  EXPECT_EQ(b[5], 6.5f);
  int64_t n = 0;
  h5::read_i64(f, "n", &n, {1});
  EXPECT_EQ(n, 123456789012345);
  EXPECT_EQ(h5::get_attr_str(f, "format"), "x-test");
  EXPECT_EQ(h5::get_attr_i64(f, "version"), 3);
  EXPECT_EQ(h5::get_attr_f64(f, "ratio"), 0.25);
  auto names = h5::read_strings(f, "names");
  ASSERT_EQ(names.size(), 3u);
  EXPECT_EQ(names[2], "γ-unicode");
  std::remove(p.c_str());
}

TEST(H5, WrongShapeNamesDatasetAndFile) {
  std::string p = tmp_path("shape.h5");
  {
    auto f = h5::create_file(p);
    float a[4] = {0, 0, 0, 0};
    h5::write_f32(f, "w", a, {4});
  }
  auto f = h5::open_file(p);
  float b[4];
  try {
    h5::read_f32(f, "w", b, {2, 2});
    FAIL();
  } catch (const Error& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("'w'"), std::string::npos) << m;
    EXPECT_NE(m.find(p), std::string::npos) << m;
    EXPECT_NE(m.find("[4]"), std::string::npos) << m;
  }
  EXPECT_THROW(h5::read_f32(f, "missing", b, {4}), Error);
  std::remove(p.c_str());
}

TEST(H5, ForeignAndTruncatedFilesAreRefused) {
  std::string p = tmp_path("foreign.h5");
  { std::ofstream(p) << "this is not an HDF5 file\n"; }
  EXPECT_THROW(h5::open_file(p), Error);
  EXPECT_THROW(h5::open_file(tmp_path("does-not-exist.h5")), Error);
  std::string q = tmp_path("trunc.h5");
  {
    auto f = h5::create_file(q);
    std::vector<float> big(100000, 1.0f);
    h5::write_f32(f, "big", big.data(), {100000});
  }
  ASSERT_EQ(::truncate(q.c_str(), 2000), 0);
  bool refused = false;
  try {
    auto f = h5::open_file(q);
    std::vector<float> big(100000);
    h5::read_f32(f, "big", big.data(), {100000});
  } catch (const Error&) {
    refused = true;
  }
  EXPECT_TRUE(refused);
  std::remove(p.c_str());
  std::remove(q.c_str());
}
