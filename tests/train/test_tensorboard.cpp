// TensorBoard files: CRC32C known answers (RFC 3720 / iSCSI test vectors) and a file decoded by an
// independent Python reader (tests/train/read_tfevents.py: its own CRC and protobuf decoding, and
// tensorboard's own EventAccumulator), a resumed run's SessionLog START purging later points; and
// the --jsonl writer's refusal to append to a file that is not JSON lines.
#include <gtest/gtest.h>

#include <sys/mount.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <thread>

#include "ddp/core/check.h"
#include "ddp/train/metrics.h"
#include "ddp/train/tensorboard.h"

using namespace ddp::train;

TEST(Crc32c, KnownAnswers) {
  EXPECT_EQ(crc32c("123456789", 9), 0xE3069283u);
  std::array<uint8_t, 32> zeros{}, ones{};
  ones.fill(0xff);
  EXPECT_EQ(crc32c(zeros.data(), 32), 0x8A9136AAu);
  EXPECT_EQ(crc32c(ones.data(), 32), 0x62A8AB43u);
  std::array<uint8_t, 32> inc{};
  for (int i = 0; i < 32; ++i) inc[i] = static_cast<uint8_t>(i);
  EXPECT_EQ(crc32c(inc.data(), 32), 0x46DD794Eu);
}

namespace {
// with_stderr: its lines too, e.g. what it says of a truncated file.
std::string read_events(const std::string& dir, int& rc, bool with_stderr = false) {
  std::string cmd = std::string("/usr/bin/python3 ") + DDP_SOURCE_DIR + "/tests/train/read_tfevents.py " + dir +
                    (with_stderr ? " 2>&1" : "");
  std::unique_ptr<FILE, int (*)(FILE*)> p(popen(cmd.c_str(), "r"), pclose);
  std::string out;
  if (!p) return out;
  char buf[256];
  while (fgets(buf, sizeof buf, p.get())) out += buf;
  rc = pclose(p.release());
  return out;
}
}  // namespace

// A stopped run logged past its last checkpoint (step 20); the resumed run's file starts with a
// SessionLog START at step 21, and the reader (like TensorBoard) keeps only the resumed run's points
// from there on.
TEST(TensorBoard, ResumedRunPurgesTheStoppedRunsLaterPoints) {
  if (std::system("/usr/bin/python3 -c 'import struct' >/dev/null 2>&1") != 0) GTEST_SKIP() << "no /usr/bin/python3";
  std::string dir = ::testing::TempDir() + "/tb_resume_" + std::to_string(::getpid());
  std::filesystem::remove_all(dir);
  {
    TensorBoardWriter w(dir);
    for (int step : {10, 20, 30}) w.add_scalar("train/loss", step / 10.0, step);
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));  // file names carry the unix second
  {
    TensorBoardWriter w(dir);
    w.add_session_start(21);
    for (int step : {25, 30}) w.add_scalar("train/loss", step / 100.0, step);
  }
  int rc = -1;
  std::string out = read_events(dir, rc);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_EQ(out,
            "session_start 21\n"
            "train/loss 10 1.0\n"
            "train/loss 20 2.0\n"
            "train/loss 25 0.25\n"
            "train/loss 30 0.30000001192092896\n");
  std::filesystem::remove_all(dir);
}

TEST(TensorBoard, FileDecodesWithIndependentReader) {
  if (std::system("/usr/bin/python3 -c 'import struct' >/dev/null 2>&1") != 0) GTEST_SKIP() << "no /usr/bin/python3";
  std::string dir = ::testing::TempDir() + "/tb_test_" + std::to_string(::getpid());
  std::filesystem::remove_all(dir);
  {
    TensorBoardWriter w(dir);
    w.add_scalar("train/loss", 2.5, 10);
    w.add_scalar("train/loss", 1.25, 20);
    w.add_scalar("eval/top1", 0.875, 20);
    w.add_scalar("train/lr", 0.1, 300000000000LL);  // a step that needs a multi-byte varint
  }
  int rc = -1;
  std::string out = read_events(dir, rc);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_EQ(out,
            "train/loss 10 2.5\n"
            "train/loss 20 1.25\n"
            "eval/top1 20 0.875\n"
            "train/lr 300000000000 0.10000000149011612\n");
  std::filesystem::remove_all(dir);
}

// An event file cut short (a full disk, a killed writer) ends in a partial record. TensorBoard reads
// the complete records before it; so must the reader, saying where the file was cut (it used to die
// in a traceback). Cut inside the last record's header, its body and its closing checksum.
TEST(TensorBoard, TruncatedFileIsReadUpToItsLastCompleteRecord) {
  if (std::system("/usr/bin/python3 -c 'import struct' >/dev/null 2>&1") != 0) GTEST_SKIP() << "no /usr/bin/python3";
  const std::string dir = ::testing::TempDir() + "/tb_cut_" + std::to_string(::getpid());
  std::filesystem::remove_all(dir);
  std::string path;
  {
    TensorBoardWriter w(dir + "/whole");
    w.add_scalar("train/loss", 2.5, 10);
    w.add_scalar("train/loss", 1.25, 20);
    w.add_scalar("eval/top1", 0.875, 20);
    path = w.path();
  }
  std::ifstream in(path, std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  // TFRecord framing: u64 length, u32 crc, body, u32 crc; the last record starts where the others end.
  size_t last = 0;
  for (size_t i = 0; i < bytes.size();) {
    uint64_t n = 0;
    std::memcpy(&n, bytes.data() + i, sizeof n);
    last = i;
    i += 16 + n;
  }
  ASSERT_GT(last, 0u);
  const std::string name = std::filesystem::path(path).filename().string();
  for (const size_t cut : {last + 5, last + 14, bytes.size() - 1}) {
    const std::string d = dir + "/cut" + std::to_string(cut);
    std::filesystem::create_directories(d);
    std::ofstream(d + "/" + name, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(cut));
    int rc = -1;
    const std::string out = read_events(d, rc, true);
    EXPECT_EQ(rc, 0) << "cut at " << cut << ":\n" << out;
    EXPECT_EQ(out.find("Traceback"), std::string::npos) << out;
    EXPECT_NE(out.find("train/loss 10 2.5\ntrain/loss 20 1.25\n"), std::string::npos) << out;  // the whole records
    EXPECT_EQ(out.find("eval/top1"), std::string::npos) << out;                      // not the cut one
    EXPECT_NE(out.find(name + ": truncated: the record at byte " + std::to_string(last)), std::string::npos) << out;
  }
  std::filesystem::remove_all(dir);
}

// --jsonl appends (a resumed run continues its file), but not to a file that is not one: a checkpoint
// or a log given by mistake was written into.
TEST(Jsonl, AppendsToMetricsButRefusesOtherFiles) {
  const std::string dir = ::testing::TempDir() + "/jsonl_test_" + std::to_string(::getpid());
  std::filesystem::create_directories(dir);
  const std::string m = dir + "/m.jsonl", other = dir + "/ckpt.h5";
  { JsonlWriter(m).write({{"type", "\"train\""}}); }
  { JsonlWriter(m).write({{"type", "\"resume\""}}); }
  std::ifstream in(m);
  std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(all, "{\"type\": \"train\"}\n{\"type\": \"resume\"}\n");
  // A record cut short by a full disk or a kill: the next run's records start on a line of their own.
  { std::ofstream(m, std::ios::app) << "{\"type\": \"train\", \"step\": "; }
  { JsonlWriter(m).write({{"type", "\"resume\""}}); }
  std::ifstream in2(m);
  std::string all2((std::istreambuf_iterator<char>(in2)), std::istreambuf_iterator<char>());
  EXPECT_EQ(all2, all + "{\"type\": \"train\", \"step\": \n{\"type\": \"resume\"}\n");
  { std::ofstream(other) << "\x89HDF\r\n"; }
  try {
    JsonlWriter w(other);
    FAIL() << "appended to a file that is not JSON lines";
  } catch (const ddp::Error& e) {
    EXPECT_NE(std::string(e.what()).find(other), std::string::npos) << e.what();
  }
  std::ifstream o(other);
  std::string kept((std::istreambuf_iterator<char>(o)), std::istreambuf_iterator<char>());
  EXPECT_EQ(kept, "\x89HDF\r\n");
  std::filesystem::remove_all(dir);
}

// A volume that fills up after the file was created: the writer warns once and stops writing, it does
// not throw (the trainer keeps training). Needs root and mount rights, else skipped.
TEST(TensorBoard, FullDiskTurnsTheWriterOffWithoutThrowing) {
  const std::string mnt = ::testing::TempDir() + "/tb_full_" + std::to_string(::getpid());
  std::filesystem::create_directories(mnt);
  if (mount("tmpfs", mnt.c_str(), "tmpfs", 0, "size=64k") != 0) {
    std::filesystem::remove_all(mnt);
    GTEST_SKIP() << "cannot mount a tmpfs here";
  }
  bool failed = false;
  {
    TensorBoardWriter w(mnt + "/tb");
    { std::ofstream(mnt + "/filler") << std::string(1 << 20, 'x'); }  // fills the volume
    EXPECT_FALSE(w.failed());
    EXPECT_NO_THROW({
      for (int i = 0; i < 5000; ++i) w.add_scalar("train/loss", 1.0, i);
      w.flush();
    });
    failed = w.failed();
  }
  umount(mnt.c_str());
  std::filesystem::remove_all(mnt);
  EXPECT_TRUE(failed);
}
