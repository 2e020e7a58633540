// TensorBoard event files written directly, without TensorFlow: a TFRecord stream of Event protos.
//   record = uint64 length (LE) | uint32 masked_crc32c(length bytes) | data | uint32 masked_crc32c(data)
//   masked(crc) = ((crc >> 15) | (crc << 17)) + 0xa282ead8
// The first Event carries file_version "brain.Event:2"; each scalar is an Event with wall_time,
// step and a Summary holding one Value {tag, simple_value}; a resumed run starts its file with a
// SessionLog {status START} event. Weights & Biases ingests the same files.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>

namespace ddp::train {

uint32_t crc32c(const void* data, size_t n, uint32_t crc = 0);  // Castagnoli, reflected, as TF uses
uint32_t masked_crc32c(const void* data, size_t n);

class TensorBoardWriter {
 public:
  // Creates dir (and parents) and a file events.out.tfevents.<unix time>.<host>.<pid>.
  explicit TensorBoardWriter(const std::string& dir);
  ~TensorBoardWriter();
  TensorBoardWriter(const TensorBoardWriter&) = delete;
  TensorBoardWriter& operator=(const TensorBoardWriter&) = delete;

  void add_scalar(const std::string& tag, double value, int64_t step, double wall_time = 0);
  // SessionLog START at `step`: TensorBoard drops what earlier files logged at this step and later (a
  // resumed run logs those steps again), as PyTorch's SummaryWriter(purge_step=step) does.
  void add_session_start(int64_t step);
  void flush();
  const std::string& path() const { return path_; }
  // After a failed write (a full disk) the writer warns once and writes nothing more: metrics are not
  // worth the run. (A failure while creating the file, at start-up, is an error.)
  bool failed() const { return failed_; }

 private:
  void write_record(const std::string& data);
  void fail_once();
  std::string path_;
  FILE* f_ = nullptr;
  bool started_ = false, failed_ = false;
};

}  // namespace ddp::train
