#include "ddp/data/shard.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <numeric>
#include <string>

#include "ddp/core/check.h"

namespace ddp::data {

namespace {
constexpr size_t kFlushEvery = 256;   // images buffered between HDF5 writes
constexpr hsize_t kJpegChunk = 1024;  // vlen references per chunk (16 bytes each)

std::string errno_str() { return std::strerror(errno); }

h5::Handle vlen_u8_type() { return h5::Handle(H5_CHECK(H5Tvlen_create(H5T_NATIVE_UINT8))); }

void fsync_parent_dir(const std::string& path) {
  const std::string dir = std::filesystem::path(path).parent_path().string();
  const int dfd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  DDP_CHECK(dfd >= 0, "cannot open directory of ", path, " to fsync it: ", errno_str());
  const int rc = ::fsync(dfd);
  const int e = errno;
  ::close(dfd);
  DDP_CHECK(rc == 0, "fsync of the directory of ", path, " failed: ", std::strerror(e));
}
}  // namespace

std::string shard_file_name(const std::string& split, int index, int count) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "-%05d-of-%05d.h5", index, count);
  return split + buf;
}

std::optional<ShardName> parse_shard_file_name(const std::string& name) {
  // <split>-NNNNN-of-MMMMM.h5, split non-empty: exactly 5 digits each, as shard_file_name writes.
  constexpr size_t kTail = std::char_traits<char>::length("-00000-of-00000.h5");
  if (name.size() <= kTail) return std::nullopt;
  const std::string tail = name.substr(name.size() - kTail);
  auto digits = [&](size_t at) {
    for (size_t i = at; i < at + 5; ++i)
      if (tail[i] < '0' || tail[i] > '9') return -1;
    return std::stoi(tail.substr(at, 5));
  };
  if (tail[0] != '-' || tail.compare(6, 4, "-of-") != 0 || tail.compare(15, 3, ".h5") != 0) return std::nullopt;
  const int index = digits(1), count = digits(10);
  if (index < 0 || count < 0) return std::nullopt;
  return ShardName{name.substr(0, name.size() - kTail), index, count};
}

void check_shard_name_matches(const std::string& path, const ShardMeta& m) {
  const auto n = parse_shard_file_name(std::filesystem::path(path).filename().string());
  if (!n) return;
  DDP_CHECK(n->split == m.split && n->index == m.shard_index && n->count == m.num_shards, "'", path,
            "' is named as shard ", n->index, " of ", n->count, " of split '", n->split, "', but its attributes say ",
            "shard ", m.shard_index, " of ", m.num_shards, " of split '", m.split,
            "' (renamed or copied by hand?); restore its name or repack");
}

ShardWriter::ShardWriter(const std::string& final_path, ShardMeta meta)
    : final_(final_path), partial_(final_path + kPartialSuffix), meta_(std::move(meta)) {
  DDP_CHECK(meta_.encoding == "jpeg" || meta_.encoding == "raw", "unknown shard encoding '", meta_.encoding, "'");
  std::remove(partial_.c_str());  // a stale partial file from an interrupted run is redone from scratch
  file_ = h5::create_file(partial_);
  fd_ = ::open(partial_.c_str(), O_RDWR | O_CLOEXEC);
  if (fd_ < 0) {
    const int e = errno;
    abandon();
    DDP_FAIL("cannot open ", partial_, " just created: ", std::strerror(e));
  }
  if (meta_.encoding == "jpeg") {
    hsize_t dims[1] = {0}, maxd[1] = {H5S_UNLIMITED}, chunk[1] = {kJpegChunk};
    h5::Handle space(H5_CHECK(H5Screate_simple(1, dims, maxd)));
    h5::Handle dcpl(H5_CHECK(H5Pcreate(H5P_DATASET_CREATE)));
    H5_CHECK(H5Pset_chunk(dcpl, 1, chunk));
    h5::Handle ftype(H5_CHECK(H5Tvlen_create(H5T_STD_U8LE)));
    images_ = h5::Handle(H5Dcreate2(file_, "images", ftype, space, H5P_DEFAULT, dcpl, H5P_DEFAULT));
  } else {
    DDP_CHECK(meta_.height > 0 && meta_.width > 0, "raw shards need a fixed image size");
    const hsize_t hw3 = static_cast<hsize_t>(meta_.height) * meta_.width * 3;
    const hsize_t per_chunk = std::max<hsize_t>(1, 65536 / hw3);
    hsize_t dims[4] = {0, static_cast<hsize_t>(meta_.height), static_cast<hsize_t>(meta_.width), 3};
    hsize_t maxd[4] = {H5S_UNLIMITED, dims[1], dims[2], 3};
    hsize_t chunk[4] = {per_chunk, dims[1], dims[2], 3};
    h5::Handle space(H5_CHECK(H5Screate_simple(4, dims, maxd)));
    h5::Handle dcpl(H5_CHECK(H5Pcreate(H5P_DATASET_CREATE)));
    H5_CHECK(H5Pset_chunk(dcpl, 4, chunk));
    images_ = h5::Handle(H5Dcreate2(file_, "images", H5T_STD_U8LE, space, H5P_DEFAULT, dcpl, H5P_DEFAULT));
  }
  DDP_CHECK(images_.valid(), "cannot create dataset 'images' in ", partial_);
}

ShardWriter::~ShardWriter() {
  if (!committed_) abandon();
}

bool ShardWriter::partial_is_ours() const {
  struct stat mine {}, named {};
  return fd_ >= 0 && ::fstat(fd_, &mine) == 0 && ::stat(partial_.c_str(), &named) == 0 &&
         mine.st_dev == named.st_dev && mine.st_ino == named.st_ino;
}

void ShardWriter::abandon() noexcept {
  // After a failed write (a full disk) HDF5 1.10's close fails too and keeps its descriptor open,
  // so the unlinked file would hold its blocks until the process ends: free them here. (That close
  // also leaves HDF5's file object half torn down, which crashes HDF5's atexit handler: programs
  // that write shards call H5dont_atexit, see pack_imagenet.)
  if (fd_ >= 0 && partial_is_ours()) {
    [[maybe_unused]] const int rc = ::ftruncate(fd_, 0);  // best effort: the name goes either way
    std::remove(partial_.c_str());
  }
  images_.close();
  file_.close();
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

void ShardWriter::append_jpeg(std::vector<uint8_t> bytes, int32_t label, const std::string& filename) {
  DDP_CHECK(meta_.encoding == "jpeg", "append_jpeg on a raw shard");
  pend_jpeg_.push_back(std::move(bytes));
  pend_labels_.push_back(label);
  pend_names_.push_back(filename);
  ++count_;
  if (pend_jpeg_.size() >= kFlushEvery) flush();
}

void ShardWriter::append_raw(const uint8_t* rgb, int32_t label, const std::string& filename) {
  DDP_CHECK(meta_.encoding == "raw", "append_raw on a JPEG shard");
  const size_t hw3 = static_cast<size_t>(meta_.height) * meta_.width * 3;
  pend_raw_.insert(pend_raw_.end(), rgb, rgb + hw3);
  pend_labels_.push_back(label);
  pend_names_.push_back(filename);
  ++count_;
  if (pend_raw_.size() / hw3 >= kFlushEvery) flush();
}

void ShardWriter::flush() {
  const hsize_t n = meta_.encoding == "jpeg"
                        ? pend_jpeg_.size()
                        : pend_raw_.size() / (static_cast<size_t>(meta_.height) * meta_.width * 3);
  if (n == 0) return;
  const hsize_t start = static_cast<hsize_t>(written_);
  h5::Handle fspace;
  if (meta_.encoding == "jpeg") {
    hsize_t newdims[1] = {start + n};
    DDP_CHECK(H5Dset_extent(images_, newdims) >= 0, "cannot extend 'images' in ", partial_, " (disk full?)");
    fspace = h5::Handle(H5_CHECK(H5Dget_space(images_)));
    hsize_t off[1] = {start}, cnt[1] = {n};
    H5_CHECK(H5Sselect_hyperslab(fspace, H5S_SELECT_SET, off, nullptr, cnt, nullptr));
    h5::Handle mspace(H5_CHECK(H5Screate_simple(1, cnt, nullptr)));
    std::vector<hvl_t> vl(n);
    for (hsize_t i = 0; i < n; ++i) {
      vl[i].len = pend_jpeg_[i].size();
      vl[i].p = pend_jpeg_[i].data();
    }
    h5::Handle mtype = vlen_u8_type();
    errno = 0;
    DDP_CHECK(H5Dwrite(images_, mtype, mspace, fspace, H5P_DEFAULT, vl.data()) >= 0, "cannot write images to ",
              partial_, ": ", errno ? errno_str() : "HDF5 write failed", " (disk full?)");
    pend_jpeg_.clear();
  } else {
    hsize_t newdims[4] = {start + n, static_cast<hsize_t>(meta_.height), static_cast<hsize_t>(meta_.width), 3};
    DDP_CHECK(H5Dset_extent(images_, newdims) >= 0, "cannot extend 'images' in ", partial_, " (disk full?)");
    fspace = h5::Handle(H5_CHECK(H5Dget_space(images_)));
    hsize_t off[4] = {start, 0, 0, 0}, cnt[4] = {n, newdims[1], newdims[2], 3};
    H5_CHECK(H5Sselect_hyperslab(fspace, H5S_SELECT_SET, off, nullptr, cnt, nullptr));
    h5::Handle mspace(H5_CHECK(H5Screate_simple(4, cnt, nullptr)));
    errno = 0;
    DDP_CHECK(H5Dwrite(images_, H5T_NATIVE_UINT8, mspace, fspace, H5P_DEFAULT, pend_raw_.data()) >= 0,
              "cannot write images to ", partial_, ": ", errno ? errno_str() : "HDF5 write failed", " (disk full?)");
    pend_raw_.clear();
  }
  written_ += static_cast<int64_t>(n);
}

void ShardWriter::commit() {
  DDP_CHECK(!committed_, "shard ", final_, " committed twice");
  flush();
  meta_.num_images = count_;
  h5::write_i32(file_, "labels", pend_labels_.data(), {static_cast<hsize_t>(pend_labels_.size())});
  h5::write_strings(file_, "filenames", pend_names_);
  h5::write_strings(file_, "classes", meta_.classes);
  h5::set_attr(file_, "format", std::string(kShardFormat));
  h5::set_attr(file_, "format_version", int64_t{kShardFormatVersion});
  h5::set_attr(file_, "split", meta_.split);
  h5::set_attr(file_, "shard_index", int64_t{meta_.shard_index});
  h5::set_attr(file_, "num_shards", int64_t{meta_.num_shards});
  h5::set_attr(file_, "num_images", meta_.num_images);
  h5::set_attr(file_, "num_classes", static_cast<int64_t>(meta_.classes.size()));
  h5::set_attr(file_, "encoding", meta_.encoding);
  h5::set_attr(file_, "resize_shorter", int64_t{meta_.resize_shorter});
  h5::set_attr(file_, "jpeg_quality", int64_t{meta_.jpeg_quality});
  h5::set_attr(file_, "height", int64_t{meta_.height});
  h5::set_attr(file_, "width", int64_t{meta_.width});
  h5::set_attr(file_, "source", meta_.source);
  h5::set_attr(file_, "allow_upscale", int64_t{meta_.allow_upscale ? 1 : 0});
  h5::set_attr(file_, "input_fingerprint", meta_.input_fingerprint);
  // Absent rather than empty when unknown: readers take both for "cannot be checked".
  if (!meta_.set_fingerprint.empty()) h5::set_attr(file_, "set_fingerprint", meta_.set_fingerprint);
  h5::set_attr(file_, "created_by", std::string("pack_imagenet (resnet18-ddp)"));
  errno = 0;
  DDP_CHECK(H5Fflush(file_, H5F_SCOPE_GLOBAL) >= 0, "cannot flush ", partial_, ": ",
            errno ? errno_str() : "HDF5 flush failed", " (disk full?)");
  images_.close();
  errno = 0;
  DDP_CHECK(H5Fclose(file_.release()) >= 0, "cannot close ", partial_, ": ",
            errno ? errno_str() : "HDF5 close failed", " (disk full?)");
  // The data must be on disk before the final name appears; fsync through our own descriptor, and
  // rename only the file this writer created (another run may have replaced the name meanwhile).
  DDP_CHECK(::fsync(fd_) == 0, "fsync ", partial_, " failed: ", errno_str(), " (disk full?)");
  DDP_CHECK(partial_is_ours(), partial_, " is no longer the file this run wrote (another pack_imagenet on the "
            "same --output replaced or removed it); this shard is not committed");
  DDP_CHECK(std::rename(partial_.c_str(), final_.c_str()) == 0, "cannot rename ", partial_, " to ", final_, ": ",
            errno_str());
  committed_ = true;
  ::close(fd_);
  fd_ = -1;
  // The rename itself must survive a crash too.
  fsync_parent_dir(final_);
}

void rewrite_set_fingerprint(const std::string& path, const std::string& set_fingerprint) {
  // Never changed in place: a crash inside HDF5's metadata write would leave a damaged file under a
  // final name. The copy costs a read and a write of the shard, far less than packing it again.
  const std::string partial = path + kPartialSuffix;
  std::remove(partial.c_str());
  std::error_code ec;
  std::filesystem::copy_file(path, partial, ec);
  if (ec) {
    std::remove(partial.c_str());
    DDP_FAIL("cannot copy ", path, " to ", partial, " to rewrite its set_fingerprint: ", ec.message(), " (disk full?)");
  }
  try {
    {
      h5::Handle f = h5::open_file(partial, true);
      if (h5::has_attr(f, "set_fingerprint")) H5_CHECK(H5Adelete(f, "set_fingerprint"));
      h5::set_attr(f, "set_fingerprint", set_fingerprint);
      errno = 0;
      DDP_CHECK(H5Fflush(f, H5F_SCOPE_GLOBAL) >= 0, "cannot flush ", partial, ": ",
                errno ? errno_str() : "HDF5 flush failed", " (disk full?)");
      errno = 0;
      DDP_CHECK(H5Fclose(f.release()) >= 0, "cannot close ", partial, ": ", errno ? errno_str() : "HDF5 close failed",
                " (disk full?)");
    }
    const int fd = ::open(partial.c_str(), O_RDONLY | O_CLOEXEC);
    DDP_CHECK(fd >= 0, "cannot open ", partial, " to fsync it: ", errno_str());
    const int rc = ::fsync(fd);
    const int e = errno;
    ::close(fd);
    DDP_CHECK(rc == 0, "fsync ", partial, " failed: ", std::strerror(e), " (disk full?)");
    DDP_CHECK(std::rename(partial.c_str(), path.c_str()) == 0, "cannot rename ", partial, " to ", path, ": ",
              errno_str());
  } catch (...) {
    std::remove(partial.c_str());
    throw;
  }
  fsync_parent_dir(path);
}

ShardReader::ShardReader(const std::string& path) : path_(path) {
  file_ = h5::open_file(path);
  DDP_CHECK(h5::has_attr(file_, "format") && h5::get_attr_str(file_, "format") == kShardFormat, "'", path,
            "' is not a resnet18-ddp shard (no format=\"", kShardFormat, "\" attribute; wrong file?)");
  const int64_t version = h5::get_attr_i64(file_, "format_version");
  DDP_CHECK(version == kShardFormatVersion, "'", path, "' has shard format version ", version,
            "; this build reads version ", kShardFormatVersion, " (repack with this pack_imagenet)");
  meta_.split = h5::get_attr_str(file_, "split");
  meta_.shard_index = static_cast<int>(h5::get_attr_i64(file_, "shard_index"));
  meta_.num_shards = static_cast<int>(h5::get_attr_i64(file_, "num_shards"));
  meta_.num_images = h5::get_attr_i64(file_, "num_images");
  meta_.encoding = h5::get_attr_str(file_, "encoding");
  meta_.resize_shorter = static_cast<int>(h5::get_attr_i64(file_, "resize_shorter"));
  meta_.jpeg_quality = static_cast<int>(h5::get_attr_i64(file_, "jpeg_quality"));
  meta_.height = static_cast<int>(h5::get_attr_i64(file_, "height"));
  meta_.width = static_cast<int>(h5::get_attr_i64(file_, "width"));
  meta_.source = h5::get_attr_str(file_, "source");
  // Added without a version bump (readers need neither): absent in older shards.
  if (h5::has_attr(file_, "allow_upscale")) meta_.allow_upscale = h5::get_attr_i64(file_, "allow_upscale") != 0;
  if (h5::has_attr(file_, "input_fingerprint")) meta_.input_fingerprint = h5::get_attr_str(file_, "input_fingerprint");
  if (h5::has_attr(file_, "set_fingerprint")) meta_.set_fingerprint = h5::get_attr_str(file_, "set_fingerprint");
  meta_.classes = h5::read_strings(file_, "classes");
  // Checked before any use as a size or an index (a negative count printed as 2^64 - 1).
  DDP_CHECK(meta_.num_images >= 0, "'", path, "': attribute num_images is ", meta_.num_images, " (damaged shard)");
  DDP_CHECK(meta_.num_shards >= 1 && meta_.shard_index >= 0 && meta_.shard_index < meta_.num_shards, "'", path,
            "': attributes shard_index ", meta_.shard_index, " and num_shards ", meta_.num_shards,
            " do not describe a shard of a set (damaged shard)");
  DDP_CHECK(h5::get_attr_i64(file_, "num_classes") == static_cast<int64_t>(meta_.classes.size()), "'", path,
            "': attribute num_classes is ", h5::get_attr_i64(file_, "num_classes"), " but /classes lists ",
            meta_.classes.size(), " (damaged shard)");
  const auto n = static_cast<hsize_t>(meta_.num_images);
  DDP_CHECK(!meta_.classes.empty(), "'", path, "' has an empty class list");
  DDP_CHECK(meta_.encoding == "jpeg" || meta_.encoding == "raw", "'", path, "' has unknown encoding '",
            meta_.encoding, "'");
  auto shape = h5::dataset_shape(file_, "images");
  if (meta_.encoding == "jpeg") {
    DDP_CHECK(shape.size() == 1 && shape[0] == n, "'", path, "': /images has ", shape.empty() ? 0 : shape[0],
              " entries, num_images says ", n, " (damaged shard)");
  } else {
    DDP_CHECK(shape.size() == 4 && shape[0] == n && shape[1] == static_cast<hsize_t>(meta_.height) &&
                  shape[2] == static_cast<hsize_t>(meta_.width) && shape[3] == 3,
              "'", path, "': /images shape does not match num_images x height x width x 3 (damaged shard)");
  }
  labels_.resize(n);
  h5::read_i32(file_, "labels", labels_.data(), {n});
  const int32_t nc = static_cast<int32_t>(meta_.classes.size());
  for (size_t i = 0; i < labels_.size(); ++i)
    DDP_CHECK(labels_[i] >= 0 && labels_[i] < nc, "'", path, "': label ", labels_[i], " of image ", i,
              " is outside 0..", nc - 1);
  images_ = h5::Handle(H5_CHECK(H5Dopen2(file_, "images", H5P_DEFAULT)));
  if (meta_.encoding == "jpeg") {
    h5::Handle t(H5_CHECK(H5Dget_type(images_)));
    DDP_CHECK(H5Tget_class(t) == H5T_VLEN, "'", path, "': /images is not variable-length bytes");
  }
}

std::vector<std::string> ShardReader::filenames() const { return h5::read_strings(file_, "filenames"); }

void ShardReader::read_jpeg(const std::vector<int64_t>& idx, std::vector<std::vector<uint8_t>>& out) const {
  DDP_CHECK(!raw(), "read_jpeg on raw shard ", path_);
  out.resize(idx.size());
  if (idx.empty()) return;
  // Read in file order (one pass over the heap), scatter back to the caller's order.
  std::vector<size_t> order(idx.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return idx[a] < idx[b]; });
  std::vector<hsize_t> coords(idx.size());
  for (size_t k = 0; k < order.size(); ++k) {
    const int64_t i = idx[order[k]];
    DDP_CHECK(i >= 0 && i < meta_.num_images, "image index ", i, " out of range in ", path_);
    coords[k] = static_cast<hsize_t>(i);
  }
  h5::Handle fspace(H5_CHECK(H5Dget_space(images_)));
  H5_CHECK(H5Sselect_elements(fspace, H5S_SELECT_SET, coords.size(), coords.data()));
  hsize_t mdims[1] = {coords.size()};
  h5::Handle mspace(H5_CHECK(H5Screate_simple(1, mdims, nullptr)));
  h5::Handle mtype = vlen_u8_type();
  std::vector<hvl_t> vl(coords.size());
  DDP_CHECK(H5Dread(images_, mtype, mspace, fspace, H5P_DEFAULT, vl.data()) >= 0, "cannot read images from ",
            path_, " (damaged shard?)");
  for (size_t k = 0; k < order.size(); ++k) {
    const auto* p = static_cast<const uint8_t*>(vl[k].p);
    out[order[k]].assign(p, p + vl[k].len);
  }
  H5Dvlen_reclaim(mtype, mspace, H5P_DEFAULT, vl.data());
}

void ShardReader::read_raw(int64_t i, uint8_t* dst) const {
  DDP_CHECK(raw(), "read_raw on JPEG shard ", path_);
  DDP_CHECK(i >= 0 && i < meta_.num_images, "image index ", i, " out of range in ", path_);
  h5::Handle fspace(H5_CHECK(H5Dget_space(images_)));
  hsize_t off[4] = {static_cast<hsize_t>(i), 0, 0, 0};
  hsize_t cnt[4] = {1, static_cast<hsize_t>(meta_.height), static_cast<hsize_t>(meta_.width), 3};
  H5_CHECK(H5Sselect_hyperslab(fspace, H5S_SELECT_SET, off, nullptr, cnt, nullptr));
  h5::Handle mspace(H5_CHECK(H5Screate_simple(4, cnt, nullptr)));
  DDP_CHECK(H5Dread(images_, H5T_NATIVE_UINT8, mspace, fspace, H5P_DEFAULT, dst) >= 0, "cannot read image ", i,
            " from ", path_, " (damaged shard?)");
}

void ShardReader::read_raw_all(uint8_t* dst) const {
  DDP_CHECK(raw(), "read_raw_all on JPEG shard ", path_);
  if (meta_.num_images == 0) return;
  DDP_CHECK(H5Dread(images_, H5T_NATIVE_UINT8, H5S_ALL, H5S_ALL, H5P_DEFAULT, dst) >= 0, "cannot read images from ",
            path_, " (damaged shard?)");
}

}  // namespace ddp::data
