// Small RAII layer over the HDF5 C API shared by weights files, shards and checkpoints.
// Errors go through H5_CHECK (ddp/core/check.h) and name the file and object.
#pragma once

#include <hdf5.h>

#include <string>
#include <vector>

#include "ddp/core/check.h"

namespace ddp::h5 {

// Owns an hid_t and closes it with the right H5*close for its type.
class Handle {
 public:
  Handle() = default;
  explicit Handle(hid_t id) : id_(id) {}
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  Handle(Handle&& o) noexcept : id_(o.id_) { o.id_ = -1; }
  Handle& operator=(Handle&& o) noexcept;
  ~Handle() { close(); }
  hid_t get() const { return id_; }
  operator hid_t() const { return id_; }
  bool valid() const { return id_ >= 0; }
  void close();
  // Gives up ownership (for a close whose result must be checked).
  hid_t release() noexcept {
    hid_t id = id_;
    id_ = -1;
    return id;
  }

 private:
  hid_t id_ = -1;
};

// Turns off HDF5's automatic error-stack printing (we report errors ourselves), once per process.
void silence_errors();

// Call first in main, before any other HDF5 call: HDF5 then does not tear itself down at exit. A
// file whose H5Fclose failed (a checkpoint on a full disk: the close's flush fails) stays in
// HDF5's open list, and HDF5's exit-time teardown closes it again and crashes (SIGSEGV in
// H5F__close_cb, seen with Debian's HDF5), turning a clean "disk full" exit 1 into a segfault. Every
// file is closed by its Handle before exit, so the teardown has nothing else to do.
void skip_teardown_at_exit();

bool exists(hid_t loc, const std::string& path);  // true if a link exists (intermediate groups too)
Handle create_file(const std::string& path);      // truncates
Handle open_file(const std::string& path, bool writable = false);  // clear error if missing/not HDF5
Handle create_group(hid_t loc, const std::string& name);

// Datasets of fixed-size arrays. Shapes are checked on read; the error names the file and dataset.
void write_f32(hid_t loc, const std::string& name, const float* data, const std::vector<hsize_t>& shape);
// The same with a Fletcher-32 checksum that every read verifies (a flipped bit is an error, not a
// silently different value); for checkpoints.
void write_f32_checksummed(hid_t loc, const std::string& name, const float* data, const std::vector<hsize_t>& shape);
void write_i32(hid_t loc, const std::string& name, const int32_t* data, const std::vector<hsize_t>& shape);
void write_i64(hid_t loc, const std::string& name, const int64_t* data, const std::vector<hsize_t>& shape);
void write_u8(hid_t loc, const std::string& name, const uint8_t* data, const std::vector<hsize_t>& shape);
std::vector<hsize_t> dataset_shape(hid_t loc, const std::string& name);
void read_f32(hid_t loc, const std::string& name, float* data, const std::vector<hsize_t>& expect_shape);
void read_i32(hid_t loc, const std::string& name, int32_t* data, const std::vector<hsize_t>& expect_shape);
void read_i64(hid_t loc, const std::string& name, int64_t* data, const std::vector<hsize_t>& expect_shape);
void read_u8(hid_t loc, const std::string& name, uint8_t* data, const std::vector<hsize_t>& expect_shape);

// Scalar attributes on a file, group or dataset.
void set_attr(hid_t obj, const std::string& name, int64_t value);
void set_attr(hid_t obj, const std::string& name, double value);
void set_attr(hid_t obj, const std::string& name, const std::string& value);
bool has_attr(hid_t obj, const std::string& name);
int64_t get_attr_i64(hid_t obj, const std::string& name);
double get_attr_f64(hid_t obj, const std::string& name);
std::string get_attr_str(hid_t obj, const std::string& name);

// Variable-length strings (file names, class lists).
void write_strings(hid_t loc, const std::string& name, const std::vector<std::string>& values);
std::vector<std::string> read_strings(hid_t loc, const std::string& name);

// The file name an object belongs to, for error messages.
std::string file_name(hid_t obj);

}  // namespace ddp::h5
