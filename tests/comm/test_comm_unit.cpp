// In-process tests of the bucketer and the replica guard against a communicator that records calls
// (no MPI needed), so bucket order and coverage are checked exactly.
#include <gtest/gtest.h>

#include <cstring>
#include <limits>

#include "ddp/comm/bucketer.h"
#include "ddp/comm/replica_guard.h"
#include "ddp/core/check.h"

using namespace ddp;

namespace {

class RecordingComm final : public comm::Communicator {
 public:
  struct Call {
    int64_t offset;
    size_t count;
    void* ready;
  };
  explicit RecordingComm(float* base, int world = 2) : base_(base), world_(world) {}
  const char* name() const override { return "recording"; }
  int rank() const override { return 0; }
  int size() const override { return world_; }
  void allreduce_avg_async(float* data, size_t count, void* ready) override {
    calls.push_back({data - base_, count, ready});
  }
  void wait_all(void*) override { ++waits; }
  void broadcast(void*, size_t, int) override {}
  void barrier() override {}
  void allreduce_sum(double* v, int n) override {
    for (int i = 0; i < n; ++i) v[i] *= world_;  // every rank holds the same values
  }
  void allreduce_max(double*, int) override {}
  void allreduce_min(int64_t* v, int n) override {
    for (int i = 0; i < n; ++i) v[i] = std::min(v[i], other_min);
  }
  std::vector<double> allgather(double v) override {
    std::vector<double> out(world_, v);
    for (auto& [r, x] : gathered_override) out[r] = x;
    return out;
  }
  std::vector<Call> calls;
  int waits = 0;
  int64_t other_min = std::numeric_limits<int64_t>::max();
  std::vector<std::pair<int, double>> gathered_override;

 private:
  float* base_;
  int world_;
};

TEST(GradBucketer, BucketsCoverTheBufferFromTheTail) {
  std::vector<float> g(1000);
  RecordingComm c(g.data());
  comm::GradBucketer b(c, g.data(), 1000, 300 * sizeof(float));
  // At most 300 each from the end, starts rounded up to multiples of 64: [704, 1000), [448, 704),
  // [192, 448), [0, 192).
  ASSERT_EQ(b.num_buckets(), 4);
  b.begin_step();
  b.on_ready({750, nullptr});  // [750, 1000) final: the first bucket [704, 1000) is not yet
  EXPECT_TRUE(c.calls.empty());
  b.on_ready({700, nullptr});
  ASSERT_EQ(c.calls.size(), 1u);
  EXPECT_EQ(c.calls[0].offset, 704);
  EXPECT_EQ(c.calls[0].count, 296u);
  b.on_ready({50, nullptr});  // [448, 704) and [192, 448) are final now
  ASSERT_EQ(c.calls.size(), 3u);
  EXPECT_EQ(c.calls[1].offset, 448);
  EXPECT_EQ(c.calls[1].count, 256u);
  EXPECT_EQ(c.calls[2].offset, 192);
  EXPECT_EQ(b.issued_during_backward(), 3);
  b.finish();  // the head [0, 192) is issued by finish
  ASSERT_EQ(c.calls.size(), 4u);
  EXPECT_EQ(c.calls[3].offset, 0);
  EXPECT_EQ(c.calls[3].count, 192u);
  EXPECT_EQ(c.waits, 1);
  size_t total = 0;
  for (auto& k : c.calls) total += k.count;
  EXPECT_EQ(total, 1000u);
}

// ResNet18 with 10 classes has 11,181,642 parameters (not a multiple of 4): cut at count - k * per,
// every bucket would start 8-byte aligned only. Each must start 256-byte aligned, hold at most the
// bucket size, and the buckets must tile the buffer.
TEST(GradBucketer, BucketStartsAre256ByteAlignedAndTileTheBuffer) {
  const int64_t count = 11181642;
  for (size_t bytes : {size_t{25} << 20, size_t{1} << 20, size_t{1000}, size_t{256}}) {
    std::vector<float> g(1);
    RecordingComm c(g.data());
    comm::GradBucketer b(c, g.data(), count, bytes);
    const int64_t per = static_cast<int64_t>(bytes / 4);
    ASSERT_GE(b.num_buckets(), 1);
    EXPECT_EQ(b.bucket_end(0), count);
    EXPECT_EQ(b.bucket_start(b.num_buckets() - 1), 0);
    for (int i = 0; i < b.num_buckets(); ++i) {
      EXPECT_EQ(b.bucket_start(i) % 64, 0) << "bucket " << i << " of " << bytes << "-byte buckets";
      EXPECT_GT(b.bucket_end(i), b.bucket_start(i));
      EXPECT_LE(b.bucket_end(i) - b.bucket_start(i), per);
      if (i > 0) {
        EXPECT_EQ(b.bucket_end(i), b.bucket_start(i - 1));
      }
    }
  }
  // Buckets smaller than 256 bytes cannot be aligned so: cut exactly (4 floats each).
  std::vector<float> g(10);
  RecordingComm c(g.data());
  comm::GradBucketer b(c, g.data(), 10, 4 * sizeof(float));
  ASSERT_EQ(b.num_buckets(), 3);
  EXPECT_EQ(b.bucket_start(0), 6);
  EXPECT_EQ(b.bucket_start(1), 2);
}

TEST(GradBucketer, PassesTheReadyEventAndResetsEachStep) {
  std::vector<float> g(10);
  RecordingComm c(g.data());
  comm::GradBucketer b(c, g.data(), 10, 4 * sizeof(float));
  int ev1 = 0, ev2 = 0;
  for (int step = 0; step < 2; ++step) {
    c.calls.clear();
    b.begin_step();
    b.on_ready({6, &ev1});
    b.on_ready({3, &ev2});
    b.finish();
    ASSERT_EQ(c.calls.size(), 3u);
    EXPECT_EQ(c.calls[0].ready, &ev1);
    EXPECT_EQ(c.calls[1].ready, &ev2);
    EXPECT_EQ(c.calls[2].ready, &ev2);  // the leftover head is ordered after the last event
  }
}

TEST(GradBucketer, DisabledDoesNotCommunicate) {
  std::vector<float> g(10);
  RecordingComm c(g.data());
  comm::GradBucketer b(c, g.data(), 10);
  b.enabled = false;
  b.begin_step();
  b.on_ready({0, nullptr});
  b.finish();
  EXPECT_TRUE(c.calls.empty());
  EXPECT_EQ(c.waits, 0);
}

TEST(GradBucketer, RejectsBadArguments) {
  std::vector<float> g(10);
  RecordingComm c(g.data());
  EXPECT_THROW(comm::GradBucketer(c, g.data(), 10, 2), Error);
  EXPECT_THROW(comm::GradBucketer(c, g.data(), 0), Error);
  comm::GradBucketer b(c, g.data(), 10);
  EXPECT_THROW(b.on_ready({11, nullptr}), Error);
}

TEST(ReplicaGuard, MismatchNamesStepAndRanks) {
  float dummy = 0;
  RecordingComm c(&dummy, 4);
  EXPECT_NO_THROW(comm::check_replicas(c, 1.5, 7));
  c.gathered_override = {{2, 1.5000001}, {3, std::numeric_limits<double>::quiet_NaN()}};
  try {
    comm::check_replicas(c, 1.5, 7);
    FAIL() << "no error";
  } catch (const Error& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("step 7"), std::string::npos) << m;
    EXPECT_NE(m.find("rank 2"), std::string::npos) << m;
    EXPECT_NE(m.find("rank 3"), std::string::npos) << m;
    EXPECT_EQ(m.find("rank 1 "), std::string::npos) << m;
  }
}

TEST(ReplicaGuard, AgreeStepsTakesTheMinimum) {
  float dummy = 0;
  RecordingComm c(&dummy, 3);
  c.other_min = 5;
  EXPECT_EQ(comm::agree_steps(c, 9), 5);
  EXPECT_EQ(comm::agree_steps(c, 3), 3);
  EXPECT_THROW(comm::agree_steps(c, -1), Error);
}

}  // namespace
