// The HDF5 shard format (docs/DATA_FORMAT.md): what pack_imagenet writes and the loader reads.
//
//   /images     JPEG: variable-length uint8 [N] (each element one JPEG file's bytes)
//               raw:  uint8 [N, H, W, 3] RGB
//   /labels     int32 [N]      index into /classes
//   /filenames  vlen string [N]  source file name, relative to the split's directory
//   /classes    vlen string [C]  the class list, identical in every shard of a data set
//   root attributes: format = "resnet18-ddp-shard", format_version = 1, split, shard_index,
//   num_shards, num_images, num_classes, encoding ("jpeg" | "raw"), resize_shorter, jpeg_quality,
//   height, width (raw only; 0 for jpeg), source, created_by, allow_upscale, input_fingerprint,
//   set_fingerprint
//
// A shard is written under <name>.partial and renamed when complete, so a file under a final name
// is always whole. The writer keeps its own descriptor of the file it created: what it fsyncs and
// renames is checked to be that file, not one another process put under the same name.
#pragma once

#include <hdf5.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "ddp/core/h5.h"

namespace ddp::data {

inline constexpr const char* kShardFormat = "resnet18-ddp-shard";
inline constexpr int kShardFormatVersion = 1;
inline constexpr const char* kPartialSuffix = ".partial";

struct ShardMeta {
  std::string split;     // "train", "val"
  int shard_index = 0, num_shards = 1;
  int64_t num_images = 0;  // filled in by ShardWriter::commit
  std::string encoding = "jpeg";  // "jpeg" | "raw"
  int resize_shorter = 256;       // 0: images kept at their size
  int jpeg_quality = 90;          // 0 for raw
  int height = 0, width = 0;      // raw image size
  std::string source;             // input directory
  std::vector<std::string> classes;
  bool allow_upscale = false;     // small images were enlarged to the resize target
  // Hash of the shard's input list (relative names, sizes, labels), so that a rerun can tell a
  // shard packed from other input; "" in shards written before it existed.
  std::string input_fingerprint;
  // Hash of what makes the whole set of the split (every input file of the split, the settings, the
  // shard count): the same in every shard of one packing, whichever run (--node-index) wrote it, so
  // that shares held by different nodes can be checked to be one set; "" when absent (written before
  // it existed).
  std::string set_fingerprint;
};

// <split>-NNNNN-of-MMMMM.h5
std::string shard_file_name(const std::string& split, int index, int count);

// What a file name <split>-NNNNN-of-MMMMM.h5 says (no directory); nullopt for any other name.
struct ShardName {
  std::string split;
  int index = 0, count = 0;
};
std::optional<ShardName> parse_shard_file_name(const std::string& file_name);

// Error naming the file if a shard's split/shard_index/num_shards attributes disagree with its file
// name (a shard renamed or copied by hand); names that are not shard names are not checked.
void check_shard_name_matches(const std::string& path, const ShardMeta& meta);

class ShardWriter {
 public:
  // Creates final_path + ".partial" (replacing a stale one).
  ShardWriter(const std::string& final_path, ShardMeta meta);
  ~ShardWriter();  // without commit(): the partial file is removed
  ShardWriter(const ShardWriter&) = delete;
  ShardWriter& operator=(const ShardWriter&) = delete;
  void append_jpeg(std::vector<uint8_t> bytes, int32_t label, const std::string& filename);
  void append_raw(const uint8_t* rgb, int32_t label, const std::string& filename);  // height*width*3
  // Writes what is buffered, the attributes and the class list, flushes, fsyncs and renames.
  void commit();
  int64_t count() const { return count_; }

 private:
  void flush();
  void abandon() noexcept;
  bool partial_is_ours() const;
  std::string final_, partial_;
  int fd_ = -1;  // our own descriptor of the partial file (fsync, identity, truncation on abandon)
  ShardMeta meta_;
  h5::Handle file_, images_, labels_, names_;
  int64_t count_ = 0, written_ = 0;
  std::vector<std::vector<uint8_t>> pend_jpeg_;
  std::vector<uint8_t> pend_raw_;
  std::vector<int32_t> pend_labels_;
  std::vector<std::string> pend_names_;
  bool committed_ = false;
};

// Replaces the set_fingerprint attribute of the complete shard at `path` (pack_imagenet: a shard
// whose own input is unchanged, reused by a run whose listing of the whole split differs) the way a
// shard is written: a copy under <path>.partial, the attribute changed there, fsync, rename over
// `path`, fsync of the directory. Errors name the file (a full disk: the copy is removed).
void rewrite_set_fingerprint(const std::string& path, const std::string& set_fingerprint);

class ShardReader {
 public:
  // Validates the format, version, dataset shapes and labels; errors name the file.
  explicit ShardReader(const std::string& path);
  const std::string& path() const { return path_; }
  const ShardMeta& meta() const { return meta_; }
  int64_t size() const { return meta_.num_images; }
  const std::vector<int32_t>& labels() const { return labels_; }
  std::vector<std::string> filenames() const;
  bool raw() const { return meta_.encoding == "raw"; }
  // JPEG shards: the bytes of images idx[i] into out[i].
  void read_jpeg(const std::vector<int64_t>& idx, std::vector<std::vector<uint8_t>>& out) const;
  // Raw shards: image i (height*width*3 bytes) into dst.
  void read_raw(int64_t i, uint8_t* dst) const;
  // Raw shards: every image, in order (small data sets are held in memory).
  void read_raw_all(uint8_t* dst) const;

 private:
  std::string path_;
  ShardMeta meta_;
  h5::Handle file_, images_;
  std::vector<int32_t> labels_;
};

}  // namespace ddp::data
