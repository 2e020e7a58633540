#include "ddp/train/tensorboard.h"

#include <unistd.h>

#include <array>
#include <chrono>
#include <cstring>
#include <filesystem>

#include "ddp/core/check.h"
#include "ddp/core/log.h"

namespace ddp::train {

namespace {

std::array<uint32_t, 256> make_table() {
  std::array<uint32_t, 256> t{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
    t[i] = c;
  }
  return t;
}

void put_varint(std::string& s, uint64_t v) {
  while (v >= 0x80) {
    s.push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  s.push_back(static_cast<char>(v));
}
void put_tag(std::string& s, int field, int wire) { put_varint(s, (static_cast<uint64_t>(field) << 3) | wire); }
void put_bytes(std::string& s, int field, const std::string& b) {
  put_tag(s, field, 2);
  put_varint(s, b.size());
  s += b;
}
void put_fixed(std::string& s, const void* p, size_t n) { s.append(static_cast<const char*>(p), n); }

double now_s() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// Event { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5; }
std::string event_header(double wall_time, int64_t step) {
  std::string e;
  put_tag(e, 1, 1);
  put_fixed(e, &wall_time, 8);  // little-endian hosts only (x86-64, aarch64)
  if (step != 0) {
    put_tag(e, 2, 0);
    put_varint(e, static_cast<uint64_t>(step));
  }
  return e;
}

}  // namespace

uint32_t crc32c(const void* data, size_t n, uint32_t crc) {
  static const std::array<uint32_t, 256> table = make_table();
  const auto* p = static_cast<const uint8_t*>(data);
  crc = ~crc;
  for (size_t i = 0; i < n; ++i) crc = table[(crc ^ p[i]) & 0xff] ^ (crc >> 8);
  return ~crc;
}

uint32_t masked_crc32c(const void* data, size_t n) {
  uint32_t c = crc32c(data, n);
  return ((c >> 15) | (c << 17)) + 0xa282ead8u;
}

TensorBoardWriter::TensorBoardWriter(const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  DDP_CHECK(!ec, "cannot create --tensorboard directory '", dir, "': ", ec.message());
  char host[256] = "host";
  gethostname(host, sizeof host - 1);
  path_ = str(dir, "/events.out.tfevents.", static_cast<int64_t>(now_s()), ".", host, ".", getpid());
  f_ = std::fopen(path_.c_str(), "wb");
  DDP_CHECK(f_ != nullptr, "cannot write TensorBoard file '", path_, "': ", std::strerror(errno));
  std::string e = event_header(now_s(), 0);
  put_bytes(e, 3, "brain.Event:2");
  write_record(e);
  flush();
  DDP_CHECK(!failed_ && std::ferror(f_) == 0, "cannot write TensorBoard file '", path_, "' (disk full?)");
  started_ = true;
}

TensorBoardWriter::~TensorBoardWriter() {
  if (f_) std::fclose(f_);
}

void TensorBoardWriter::add_scalar(const std::string& tag, double value, int64_t step, double wall_time) {
  // Summary { repeated Value value = 1; }  Value { string tag = 1; float simple_value = 2; }
  std::string v;
  put_bytes(v, 1, tag);
  float f = static_cast<float>(value);
  put_tag(v, 2, 5);
  put_fixed(v, &f, 4);
  std::string summary;
  put_bytes(summary, 1, v);
  std::string e = event_header(wall_time > 0 ? wall_time : now_s(), step);
  put_bytes(e, 5, summary);
  write_record(e);
}

void TensorBoardWriter::add_session_start(int64_t step) {
  // Event { SessionLog session_log = 7; }  SessionLog { SessionStatus status = 1; }  START = 1
  // (6 is the deprecated LogMessage, which TensorBoard ignores.)
  std::string log;
  put_tag(log, 1, 0);
  put_varint(log, 1);
  std::string e = event_header(now_s(), step);
  put_bytes(e, 7, log);
  write_record(e);
}

void TensorBoardWriter::write_record(const std::string& data) {
  uint64_t len = data.size();
  uint32_t len_crc = masked_crc32c(&len, 8);
  uint32_t data_crc = masked_crc32c(data.data(), data.size());
  if (failed_) return;
  bool ok = std::fwrite(&len, 8, 1, f_) == 1 && std::fwrite(&len_crc, 4, 1, f_) == 1 &&
            std::fwrite(data.data(), 1, data.size(), f_) == data.size() && std::fwrite(&data_crc, 4, 1, f_) == 1;
  if (!ok) fail_once();
}

void TensorBoardWriter::flush() {
  if (!failed_ && std::fflush(f_) != 0) fail_once();
}

void TensorBoardWriter::fail_once() {
  failed_ = true;
  if (started_)
    warn("cannot write TensorBoard file '", path_, "' (", std::strerror(errno),
         "): no more events go to it; training continues (checkpoints are written on their own)");
}

}  // namespace ddp::train
