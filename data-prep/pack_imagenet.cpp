// pack_imagenet: an ImageNet-style JPEG tree -> per-node HDF5 shards (docs/DATA_FORMAT.md).
//
// Input layouts: <root>/train/<class>/*; <root>/val/<class>/* (after valprep) or a flat <root>/val/
// with Kaggle's LOC_val_solution.csv; also Kaggle's own tree (<root>/ILSVRC/Data/CLS-LOC/...).
// Decode/resize/encode run in a thread pool; one thread (main) writes HDF5, in input order, so the
// output does not depend on the thread count.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cctype>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <set>
#include <sstream>
#include <system_error>
#include <thread>

#include <boost/program_options.hpp>
#include <hdf5.h>

#include "ddp/core/check.h"
#include "ddp/core/file_lock.h"
#include "ddp/core/hash.h"
#include "ddp/core/log.h"
#include "ddp/data/image.h"
#include "ddp/data/shard.h"
#include "inspect.h"
#include "png_decode.h"

namespace fs = std::filesystem;
namespace po = boost::program_options;
using namespace ddp;
using namespace ddp::data;

namespace {

constexpr const char* kLockFile = ".pack_imagenet.lock";
constexpr int kMaxShards = 99999;
constexpr int kMaxThreads = 1024;  // far above any machine's cores; a typo's 100000 is refused
constexpr int kJpegMaxSide = 65500;  // libjpeg(-turbo)'s largest width or height

struct Options {
  std::string input, output, class_index, val_csv, bad_report;
  std::vector<std::string> splits;
  int shards = 1, node_index = -1, threads = 0, resize = 256, quality = 90;
  std::string encoding = "jpeg";
  bool allow_upscale = false, skip_bad = false, verify = false, progress = true;
  bool quality_given = false;  // --quality on the command line (not the default)
  bool allow_empty_classes = false;
  int64_t max_pixels = 178956970;  // PIL's decompression-bomb limit
};

struct Item {
  std::string path, rel;
  int32_t label = 0;
  std::string error;  // known bad before any decoding (a dangling link, a CSV row without its file)
  int64_t size = -1;  // bytes, as listed (-1: cannot be read, e.g. a dangling link); for the fingerprints
};

struct Result {
  bool done = false, bad = false, passthrough = false;
  std::string error, kind, warning;
  std::vector<uint8_t> bytes;
};

struct Counters {
  int64_t images = 0, passthrough = 0, converted = 0, bad = 0, warned = 0;
  std::map<std::string, int64_t> kinds;  // "PNG", "CMYK JPEG", ...
  std::map<std::string, int64_t> rejected;  // why images were left out: "unreadable", "too large", ...
};

// Why an image was left out, in a word or three for the summary (the report has each full message).
// Not all bad images are unreadable: the size checks here, in decode_jpeg and in decode_png say
// "is too large: ... exceeds", "a JPEG can hold" or "smaller than the raw size".
std::string rejection_kind(const std::string& error) {
  if (error.find("' is too large: ") != std::string::npos) return "too large (--max-pixels)";
  if (error.find("a JPEG can hold") != std::string::npos) return "too elongated for a JPEG";
  if (error.find("smaller than the raw size") != std::string::npos) return "smaller than the raw size";
  return "unreadable or not an image";
}

std::string trim(const std::string& s) {
  size_t a = s.find_first_not_of(" \t\r\n"), b = s.find_last_not_of(" \t\r\n");
  return a == std::string::npos ? "" : s.substr(a, b - a + 1);
}

// A UTF-8 byte order mark (Excel and Notepad start a UTF-8 text file with one) is not part of the
// first line's text.
void strip_bom(std::string& line, int lineno) {
  if (lineno == 1 && line.rfind("\xEF\xBB\xBF", 0) == 0) line = line.substr(3);
}

std::vector<uint8_t> read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary | std::ios::ate);
  DDP_CHECK(f, "cannot read '", path, "': ", std::strerror(errno));
  const std::streamoff size = f.tellg();
  DDP_CHECK(size >= 0, "cannot read '", path, "'");
  std::vector<uint8_t> d(static_cast<size_t>(size));
  f.seekg(0);
  f.read(reinterpret_cast<char*>(d.data()), size);
  DDP_CHECK(f || size == 0, "error reading '", path, "': ", std::strerror(errno));
  return d;
}

// Names go into the shards as UTF-8 strings (h5py decodes them): bytes that are not UTF-8 would make
// a shard that standard tools cannot read.
bool valid_utf8(const std::string& s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    const size_t n = c < 0x80 ? 0 : (c >> 5) == 0x6 ? 1 : (c >> 4) == 0xE ? 2 : (c >> 3) == 0x1E ? 3 : 4;
    if (n == 4 || i + n >= s.size()) return false;  // a lead byte that is none, or a cut sequence
    uint32_t cp = n == 0 ? c : n == 1 ? (c & 0x1Fu) : n == 2 ? (c & 0x0Fu) : (c & 0x07u);
    for (size_t k = 1; k <= n; ++k) {
      const auto d = static_cast<unsigned char>(s[i + k]);
      if ((d >> 6) != 0x2) return false;
      cp = (cp << 6) | (d & 0x3Fu);
    }
    // Overlong forms, UTF-16 surrogates and values past U+10FFFF are not UTF-8.
    if ((n == 1 && cp < 0x80) || (n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) || cp > 0x10FFFF ||
        (cp >= 0xD800 && cp <= 0xDFFF))
      return false;
    i += n + 1;
  }
  return true;
}

// A name for messages and the report: one line, printable; backslash, tab, newline and carriage
// return as C escapes, other control bytes (and every byte >= 0x80 of a name that is not UTF-8)
// as \xNN.
std::string escaped(const std::string& s) {
  std::string out;
  const bool utf8 = valid_utf8(s);
  for (char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    if (c == '\\') out += "\\\\";
    else if (c == '\t') out += "\\t";
    else if (c == '\n') out += "\\n";
    else if (c == '\r') out += "\\r";
    else if (c < 0x20 || c == 0x7F || (c >= 0x80 && !utf8)) {
      char b[8];
      std::snprintf(b, sizeof b, "\\x%02X", c);
      out += b;
    } else {
      out += ch;
    }
  }
  return out;
}

// A directory's entries, hidden ones left out, each list sorted. A symbolic link whose target is
// gone (or that loops) is neither a folder nor a file, and neither is a FIFO, a socket or a device
// (or a link to one, such as /dev/null): each is listed apart, so that it is never skipped unseen.
struct DirList {
  std::vector<std::string> dirs, files, dangling, special;
  size_t hidden = 0;
};
DirList list_dir(const fs::path& dir) {
  DirList l;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    if (name.empty() || name[0] == '.') {
      ++l.hidden;
      continue;
    }
    DDP_CHECK(valid_utf8(name), "'", escaped(e.path().string()),
              "' has a name that is not valid UTF-8 (shards store names as UTF-8); rename it");
    std::error_code ec;
    if (e.is_symlink(ec) && !fs::exists(e.path(), ec)) l.dangling.push_back(name);
    else if (e.is_directory(ec)) l.dirs.push_back(name);
    else if (e.is_regular_file(ec)) l.files.push_back(name);
    else l.special.push_back(name);
  }
  for (auto* v : {&l.dirs, &l.files, &l.dangling, &l.special}) std::sort(v->begin(), v->end());
  return l;
}

std::string dangling_why(const fs::path& p) {
  std::error_code ec, loop;
  const std::string target = escaped(fs::read_symlink(p, ec).string());
  (void)fs::status(p, loop);
  if (loop == std::errc::too_many_symbolic_link_levels)
    return str("'", escaped(p.string()), "' is a symbolic link loop (it points to '", target,
               "', and following the links never reaches a file)");
  return str("'", escaped(p.string()), "' is a dangling symbolic link (its target '", target, "' does not exist)");
}

// A FIFO, socket or device in a class folder is not an image file; it is never opened (reading a
// FIFO would block the run), and is a bad image like any other, named with what it is.
std::string special_why(const fs::path& p) {
  std::error_code ec;
  const bool link = fs::is_symlink(fs::symlink_status(p, ec));
  const std::string via = link ? str(" (a symbolic link to '", escaped(fs::read_symlink(p, ec).string()), "')") : "";
  const fs::file_status st = fs::status(p, ec);
  if (ec) return str("'", escaped(p.string()), "'", via, " cannot be examined: ", ec.message());
  const char* what = st.type() == fs::file_type::fifo        ? "a FIFO (named pipe)"
                     : st.type() == fs::file_type::socket    ? "a socket"
                     : st.type() == fs::file_type::character ? "a character device"
                     : st.type() == fs::file_type::block     ? "a block device"
                                                             : "not a regular file";
  return str("'", escaped(p.string()), "'", via, " is ", what, ", not an image file; it is not read");
}

// Class folders of a split directory: a dangling link there may be a class folder whose target is
// gone, and leaving it out would shift the labels of every later class.
std::vector<std::string> class_folders(const fs::path& dir) {
  DirList l = list_dir(dir);
  DDP_CHECK(l.dangling.empty(), dangling_why(dir / l.dangling.front()),
            ": it may be a class folder, and leaving a class out shifts every later label; fix or remove it");
  return l.dirs;
}

std::vector<std::string> load_class_index(const std::string& path) {
  std::ifstream f(path);
  DDP_CHECK(f, "cannot read --class-index file '", path, "': ", std::strerror(errno));
  std::vector<std::string> out;
  std::set<std::string> seen;
  std::string line;
  int lineno = 0;
  while (std::getline(f, line)) {
    ++lineno;
    strip_bom(line, lineno);
    line = trim(line);
    if (line.empty() || line[0] == '#') continue;
    std::string name = line.substr(0, line.find_first_of(" \t,"));
    DDP_CHECK(valid_utf8(name), "--class-index '", path, "' line ", lineno, ": class name '", escaped(name),
              "' is not valid UTF-8");
    DDP_CHECK(seen.insert(name).second, "--class-index '", path, "' line ", lineno, ": class '", name,
              "' listed twice");
    out.push_back(name);
  }
  DDP_CHECK(!out.empty(), "--class-index file '", path, "' lists no classes");
  return out;
}

// Kaggle: "ImageId,PredictionString" rows "ILSVRC2012_val_00008726,n02119789 255 142 454 329 ...".
std::map<std::string, std::string> load_val_csv(const std::string& path) {
  std::ifstream f(path);
  DDP_CHECK(f, "cannot read validation label file '", path, "': ", std::strerror(errno));
  std::map<std::string, std::string> out;
  std::string line;
  int lineno = 0;
  while (std::getline(f, line)) {
    ++lineno;
    strip_bom(line, lineno);
    line = trim(line);
    if (line.empty() || (lineno == 1 && line.rfind("ImageId", 0) == 0)) continue;
    size_t comma = line.find(',');
    DDP_CHECK(comma != std::string::npos, "'", path, "' line ", lineno, ": expected 'ImageId,PredictionString'");
    std::string id = trim(line.substr(0, comma));
    std::istringstream ps(line.substr(comma + 1));
    std::string cls;
    ps >> cls;
    DDP_CHECK(!id.empty() && !cls.empty(), "'", path, "' line ", lineno, ": empty image id or label");
    auto [at, fresh] = out.emplace(id, cls);
    DDP_CHECK(fresh || at->second == cls, "'", path, "' line ", lineno, ": image '", id, "' is labelled '", cls,
              "', but an earlier row labels it '", at->second, "'");
  }
  DDP_CHECK(!out.empty(), "validation label file '", path, "' has no entries");
  return out;
}

// ---- per-image work (runs in the pool) -------------------------------------------------------
// Every per-image failure names its file: most messages do already; one that does not (from the
// encoder, an allocation) gets it in front.
std::string named(const std::string& path, const std::string& what) {
  if (what.find(path) != std::string::npos || what.find(escaped(path)) != std::string::npos) return what;
  return str("'", escaped(path), "': ", what);
}

Result process(const Item& it, const Options& o, int raw_size) {
  if (!it.error.empty()) throw Error(it.error);
  Result r;
  std::vector<uint8_t> bytes = read_file(it.path);
  DDP_CHECK(!bytes.empty(), "'", it.path, "' is empty (0 bytes)");
  const ImageFormat fmt = sniff_format(bytes.data(), bytes.size());
  const bool raw = o.encoding == "raw";
  Rgb png;
  int W = 0, H = 0;
  JpegHeader hd;
  if (fmt == ImageFormat::Jpeg) {
    hd = read_jpeg_header(bytes.data(), bytes.size(), it.path);
    W = hd.w;
    H = hd.h;
    DDP_CHECK(o.max_pixels <= 0 || static_cast<int64_t>(W) * H <= o.max_pixels, "'", it.path, "' is too large: ", W,
              "x", H, " pixels exceeds --max-pixels ", o.max_pixels);
    r.kind = hd.cmyk ? "CMYK JPEG" : hd.grayscale ? "grayscale JPEG" : hd.progressive ? "progressive JPEG" : "";
  } else if (fmt == ImageFormat::Png) {
    png = prep::decode_png(bytes.data(), bytes.size(), it.path, o.max_pixels);
    W = png.w;
    H = png.h;
    r.kind = "PNG";
  } else {
    DDP_FAIL("'", it.path, "' is not a JPEG or PNG image (format by content: ", format_name(fmt), ")");
  }
  const int shorter = std::min(W, H);
  int tw = W, th = H;
  if (raw) {
    DDP_CHECK(shorter >= raw_size || o.allow_upscale, "'", it.path, "' is ", W, "x", H,
              ", smaller than the raw size ", raw_size, " (pass --allow-upscale to enlarge small images)");
    resize_shorter_dims(W, H, raw_size, tw, th);
  } else if (o.resize > 0 && shorter != o.resize && (shorter > o.resize || o.allow_upscale)) {
    // A very elongated image (a 5000x1 strip: 160000x32 at --resize 32) cannot be stored as a JPEG.
    // It is bad input like an unreadable file (--skip-bad leaves it out), found before any decoding
    // and before its (possibly huge) pixel buffer exists. (64-bit: the longer side may not fit an int.)
    const int64_t longer = int64_t{o.resize} * std::max(W, H) / shorter;
    DDP_CHECK(longer <= kJpegMaxSide, "'", it.path, "' is ", W, "x", H, ": resized to a shorter side of ", o.resize,
              " (--resize) its longer side would be ", longer, " pixels, more than the ", kJpegMaxSide,
              " a JPEG can hold; crop or remove it");
    resize_shorter_dims(W, H, o.resize, tw, th);
  }
  DDP_CHECK(raw || std::max(tw, th) <= kJpegMaxSide, "'", it.path, "' is ", W, "x", H, " (", tw, "x", th,
            " as packed): more than the ", kJpegMaxSide, " pixels a side a JPEG can hold; crop or remove it");
  // Already the right size and plain YCbCr: keep the original DCT coefficients (no second generation
  // loss, the same pixels), re-entropy-coded with restart markers so that the loader's crops decode
  // only what they cover; this reads the whole file, so damage anywhere is found.
  if (!raw && fmt == ImageFormat::Jpeg && tw == W && th == H && hd.ycbcr && hd.components == 3) {
    r.bytes = jpeg_add_restarts(bytes.data(), bytes.size(), it.path, &r.warning);
    r.passthrough = true;
    return r;
  }
  Rgb img;
  Box box;
  if (fmt == ImageFormat::Jpeg) {
    // DCT-domain downscaling only down to twice the target: the rest goes through the antialiased
    // resampler, so packed pixels stay within rounding of PIL's resize.
    Decoded d = decode_jpeg(bytes.data(), bytes.size(), it.path, {}, 2 * tw, 2 * th, o.max_pixels, true);
    r.warning = d.warning;
    img = std::move(d.img);
    box = d.box;
  } else {
    img = std::move(png);
    box = Box{0, 0, static_cast<float>(img.w), static_cast<float>(img.h)};
  }
  if (raw) {
    // Centre square of the source -> raw_size x raw_size, as PIL's resize(box=...) takes it. Taken in
    // the source's W x H and mapped through `box` (the whole source in img's pixels): a DCT-scaled
    // decode is rounded up to whole pixels (1001x701 at 1/4: 251x176 for 250.25x175.25), so img.w x
    // img.h is not the source's shape and its centre square is not the source's.
    const double m = std::min(W, H), sx = box.w / W, sy = box.h / H;
    const Box sq{static_cast<float>(box.x + (W - m) / 2 * sx), static_cast<float>(box.y + (H - m) / 2 * sy),
                 static_cast<float>(m * sx), static_cast<float>(m * sy)};
    r.bytes.resize(static_cast<size_t>(raw_size) * raw_size * 3);
    resample(img.px.data(), img.w, img.h, sq, r.bytes.data(), raw_size, raw_size);
  } else {
    std::vector<uint8_t> out(static_cast<size_t>(tw) * th * 3);
    if (img.w == tw && img.h == th) {
      out = std::move(img.px);
    } else {
      resample(img.px.data(), img.w, img.h, box, out.data(), tw, th);
    }
    r.bytes = encode_jpeg(out.data(), tw, th, o.quality, /*restarts=*/true);  // crops decode only what they cover
  }
  return r;
}

// ---- progress ---------------------------------------------------------------------------------
std::string fmt_secs(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  int t = static_cast<int>(s + 0.5);
  char b[32];
  if (t >= 3600) std::snprintf(b, sizeof b, "%dh%02dm", t / 3600, t / 60 % 60);
  else std::snprintf(b, sizeof b, "%dm%02ds", t / 60, t % 60);
  return b;
}

class Progress {
 public:
  Progress(bool enabled, int64_t total) : on_(enabled), tty_(isatty(2)), total_(total), t0_(clock::now()) {}
  void update(int64_t done, const std::string& what, bool force = false) {
    if (!on_) return;
    auto now = clock::now();
    double since = std::chrono::duration<double>(now - last_).count();
    if (!force && since < (tty_ ? 0.25 : 10.0)) return;
    last_ = now;
    double el = std::chrono::duration<double>(now - t0_).count();
    double rate = el > 0 ? done / el : 0;
    double eta = rate > 0 ? (total_ - done) / rate : NAN;
    int pct = total_ ? static_cast<int>(100.0 * done / total_) : 100;
    char bar[41];
    int fill = pct * 40 / 100;
    for (int i = 0; i < 40; ++i) bar[i] = i < fill ? '#' : '.';
    bar[40] = 0;
    std::fprintf(stderr, "%s%-22s [%s] %3d%% %lld/%lld  %.0f img/s  ETA %s%s", tty_ ? "\r" : "", what.c_str(), bar,
                 pct, static_cast<long long>(done), static_cast<long long>(total_), rate, fmt_secs(eta).c_str(),
                 tty_ ? "" : "\n");
    std::fflush(stderr);
  }
  void finish() {
    if (on_ && tty_) std::fprintf(stderr, "\n");
  }
  double elapsed() const { return std::chrono::duration<double>(clock::now() - t0_).count(); }

 private:
  using clock = std::chrono::steady_clock;
  bool on_, tty_;
  int64_t total_;
  clock::time_point t0_, last_{};
};

// ---- the bad-image report --------------------------------------------------------------------
// It lists the images left out of the shards in --output, one line each (path, tab, reason), once
// each across reruns. Opened (so proven writable) before any work. Before any shard is written, the
// lines of the shards this run packs again, and of images no longer in the input, are dropped (a
// rerun would otherwise list them twice, or list images fixed since), and the lines of the shards it
// reuses are kept. New lines are added shard by shard before each shard is renamed: a shard under its
// final name, which a rerun skips, never holds back a bad image that no report lists. Runs with
// different --node-index may share one report: each change is made under a lock (one byte of the
// output's lock file, waited for), reopening the file by name, so that no run writes into a file
// another has just replaced.
constexpr int64_t kReportLockByte = int64_t{kMaxShards} + 1;  // past every shard's byte

class ReportLock {
 public:
  explicit ReportLock(const std::string& lock_path) : l_(lock_file_range(lock_path, kReportLockByte, 1, true)) {
    DDP_CHECK(l_.held(), "cannot lock ", lock_path, " for the bad-image report: ", std::strerror(l_.error));
  }
  ~ReportLock() { ::close(l_.fd); }  // closing the descriptor releases its lock
  ReportLock(const ReportLock&) = delete;
  ReportLock& operator=(const ReportLock&) = delete;

 private:
  FileLock l_;
};

// How the report names an input file: absolute and lexically normal, so the lines of runs that spelled
// --input differently (relative, absolute, with "..") are one file's line, not two.
std::string report_name(const std::string& path) {
  std::error_code ec;
  const fs::path a = fs::absolute(path, ec);
  return (ec ? fs::path(path) : a).lexically_normal().string();
}

struct BadReport {
  std::string path, lock_path;
  int64_t lines = 0;  // added by this run
  int64_t kept = 0;   // of earlier runs, for shards this run reuses (or other nodes write)

  // skip_bad: this run may add lines (the file is created now, proving it writable); otherwise only
  // an existing report is brought up to date.
  void open(const std::string& p, const std::string& lock, bool skip_bad) {
    path = p;
    lock_path = lock;
    if (!skip_bad) return;
    std::ofstream f(p, std::ios::app);
    DDP_CHECK(f, "cannot write the bad-image report '", p, "' (--bad-report): ", std::strerror(errno));
  }
  // redo: the (escaped) files of the shards this run packs; current: those of every image listed in
  // the splits scanned, whose folders (escaped, with a trailing '/') are `scanned`.
  void prune(const std::set<std::string>& redo, const std::set<std::string>& current,
             const std::vector<std::string>& scanned) {
    if (path.empty()) return;
    ReportLock lk(lock_path);
    std::ifstream in(path);
    if (!in) return;
    std::vector<std::string> keep;
    bool dropped = false;
    for (std::string l; std::getline(in, l);) {
      const std::string file = l.substr(0, l.find('\t'));
      bool stale = redo.count(file) > 0;
      for (size_t k = 0; !stale && k < scanned.size(); ++k)
        stale = file.rfind(scanned[k], 0) == 0 && !current.count(file);
      if (stale) dropped = true;
      else keep.push_back(l);
    }
    kept = static_cast<int64_t>(keep.size());
    if (!dropped) return;
    const std::string tmp = path + ".tmp";
    {
      std::ofstream out(tmp, std::ios::trunc);
      for (const auto& l : keep) out << l << "\n";
      out.flush();
      DDP_CHECK(out, "cannot rewrite the bad-image report '", path, "' (through '", tmp, "'): ", std::strerror(errno));
    }
    std::error_code ec;
    fs::rename(tmp, path, ec);
    DDP_CHECK(!ec, "cannot replace the bad-image report '", path, "' with '", tmp, "': ", ec.message());
  }
  void add(const std::vector<std::pair<std::string, std::string>>& bad) {
    ReportLock lk(lock_path);
    std::ofstream f(path, std::ios::app);
    // One line per image: a name holding a tab or a newline must not break the format.
    for (const auto& [file, why] : bad) f << escaped(file) << "\t" << escaped(why) << "\n";
    f.flush();
    DDP_CHECK(f, "cannot write the bad-image report '", path, "' (disk full?)");
    lines += static_cast<int64_t>(bad.size());
  }
  // A report with no line left describes nothing: removed.
  void finish() noexcept {
    if (path.empty()) return;
    try {
      ReportLock lk(lock_path);
      std::error_code ec;
      if (fs::is_regular_file(path, ec) && fs::file_size(path, ec) == 0 && !ec) fs::remove(path, ec);
    } catch (...) {
    }
  }
  ~BadReport() { finish(); }
};

// ---- one shard: pool decodes, this thread writes in order --------------------------------------
void pack_shard(const std::vector<Item>& items, const std::string& final_path, ShardMeta meta, const Options& o,
                int raw_size, Counters& cnt, BadReport& report, Progress& prog, int64_t& done_total,
                std::vector<int64_t>& written_per_class) {
  std::vector<std::pair<std::string, std::string>> bad;
  ShardWriter w(final_path, meta);
  const int64_t n = static_cast<int64_t>(items.size());
  const int nthreads = o.threads > 0 ? o.threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  const int64_t window = std::max<int64_t>(64, int64_t{16} * nthreads);
  std::vector<Result> ring(static_cast<size_t>(window));
  std::mutex mu;
  std::condition_variable cv_done, cv_room;
  std::atomic<int64_t> next{0};
  int64_t written = 0;
  bool abort = false;
  auto worker = [&] {
    for (;;) {
      const int64_t i = next.fetch_add(1);
      if (i >= n) return;
      {
        std::unique_lock<std::mutex> lk(mu);
        cv_room.wait(lk, [&] { return abort || i < written + window; });
        if (abort) return;
      }
      Result r;
      try {
        r = process(items[static_cast<size_t>(i)], o, raw_size);
      } catch (const std::exception& e) {
        r = Result{};
        r.bad = true;
        r.error = named(items[static_cast<size_t>(i)].path, e.what());
      }
      r.done = true;
      std::lock_guard<std::mutex> lk(mu);
      ring[static_cast<size_t>(i % window)] = std::move(r);
      cv_done.notify_all();
    }
  };
  std::vector<std::thread> pool;
  auto stop_pool = [&] {
    {
      std::lock_guard<std::mutex> lk(mu);
      abort = true;
      cv_room.notify_all();
    }
    for (auto& t : pool) t.join();
  };
  try {
    for (int t = 0; t < nthreads; ++t) pool.emplace_back(worker);
  } catch (const std::system_error& e) {
    // The threads already started must be joined before this frame unwinds (else std::terminate).
    const size_t started = pool.size();
    stop_pool();
    DDP_FAIL("cannot start worker thread ", started + 1, " of ", nthreads, " (--threads): ", e.what(),
             "; use fewer --threads");
  }
  const std::string what = fs::path(final_path).filename().string();
  try {
    for (int64_t i = 0; i < n; ++i) {
      Result r;
      {
        std::unique_lock<std::mutex> lk(mu);
        auto& slot = ring[static_cast<size_t>(i % window)];
        cv_done.wait(lk, [&] { return slot.done; });
        r = std::move(slot);
        slot = Result{};
      }
      const Item& it = items[static_cast<size_t>(i)];
      if (r.bad) {
        if (!o.skip_bad) {
          // The message names the file; the partial shard is removed by ~ShardWriter.
          throw Error(str(r.error, "\n(pass --skip-bad to leave out unreadable images and list them in a report)"));
        }
        bad.emplace_back(report_name(it.path), r.error);
        ++cnt.bad;
        ++cnt.rejected[rejection_kind(r.error)];
      } else {
        if (o.encoding == "raw") {
          w.append_raw(r.bytes.data(), it.label, it.rel);
        } else {
          w.append_jpeg(std::move(r.bytes), it.label, it.rel);
        }
        ++cnt.images;
        ++written_per_class[static_cast<size_t>(it.label)];
        if (r.passthrough) ++cnt.passthrough;
        else ++cnt.converted;
        if (!r.kind.empty()) ++cnt.kinds[r.kind];
        if (!r.warning.empty()) ++cnt.warned;
      }
      {
        std::lock_guard<std::mutex> lk(mu);
        ++written;
        cv_room.notify_all();
      }
      ++done_total;
      prog.update(done_total, what);
    }
  } catch (...) {
    stop_pool();
    throw;
  }
  stop_pool();
  if (!bad.empty()) report.add(bad);
  // Only --skip-bad gets here with nothing written: an empty shard would give its node nothing to
  // train on (and, for a whole split, make a data set without that split).
  DDP_CHECK(w.count() > 0, "all ", n, " images of '", what, "' (split '", meta.split,
            "') are bad (unreadable, too large or too elongated; listed in ", report.path, "); no shard written");
  w.commit();
}

// ---- input discovery -------------------------------------------------------------------------
struct Layout {
  std::string data_root;  // holds train/ and val/
  std::string kaggle_root;
};

Layout find_layout(const std::string& input) {
  DDP_CHECK(fs::is_directory(input), "input directory '", input, "' does not exist or is not a directory");
  if (fs::is_directory(fs::path(input) / "train") || fs::is_directory(fs::path(input) / "val")) return {input, input};
  fs::path k = fs::path(input) / "ILSVRC" / "Data" / "CLS-LOC";
  if (fs::is_directory(k)) return {k.string(), input};
  DDP_FAIL("'", input, "' has neither train/ nor val/ (nor Kaggle's ILSVRC/Data/CLS-LOC/): not an ImageNet-style tree");
}

std::vector<Item> scan_class_folders(const fs::path& dir, const std::vector<std::string>& classes,
                                     const std::map<std::string, int>& label_of, const std::string& class_source,
                                     bool all_required) {
  std::vector<Item> items;
  auto folders = class_folders(dir);
  DDP_CHECK(!folders.empty(), "'", dir.string(), "' has no class folders");
  std::set<std::string> have(folders.begin(), folders.end());
  for (const auto& f : folders)
    DDP_CHECK(label_of.count(f), "class folder '", (dir / f).string(), "' is not in the class list (",
              classes.size(), " classes, from ", class_source, ")");
  if (all_required) {
    for (const auto& c : classes)
      DDP_CHECK(have.count(c), "class '", c, "' has no folder in '", dir.string(), "'");
  }
  // Images must sit directly in their class folder (unlike torchvision's ImageFolder, which also
  // searches subfolders); files further down are not packed, and the user is told.
  int64_t nested = 0;
  std::string first_nested;
  for (const auto& f : folders) {
    DirList l = list_dir(dir / f);
    if (l.files.empty() && l.dangling.empty() && l.special.empty()) {
      DDP_CHECK(l.dirs.empty(), "class folder '", (dir / f).string(), "' holds only subfolders ('", l.dirs.front(),
                "', ...): images must be directly in the class folder (subfolders are not searched)");
      DDP_CHECK(l.hidden == 0, "class folder '", (dir / f).string(), "' has no visible files (only ", l.hidden,
                " hidden one(s), whose names start with '.', which are never packed)");
      DDP_FAIL("class folder '", (dir / f).string(), "' is empty");
    }
    if (!l.dirs.empty() && first_nested.empty()) first_nested = (dir / f / l.dirs.front()).string();
    nested += static_cast<int64_t>(l.dirs.size());
    for (const auto& name : l.files) items.push_back(Item{(dir / f / name).string(), f + "/" + name, label_of.at(f), ""});
    for (const auto& name : l.dangling)
      items.push_back(Item{(dir / f / name).string(), f + "/" + name, label_of.at(f), dangling_why(dir / f / name)});
    for (const auto& name : l.special)
      items.push_back(Item{(dir / f / name).string(), f + "/" + name, label_of.at(f), special_why(dir / f / name)});
  }
  if (nested > 0)
    std::cerr << "pack_imagenet: warning: " << nested << " subfolder(s) inside the class folders of '" << dir.string()
              << "' are not searched (e.g. '" << first_nested << "'); images must be directly in a class folder\n";
  return items;
}

std::vector<Item> scan_split(const Layout& lay, const std::string& split, const std::vector<std::string>& classes,
                             const std::map<std::string, int>& label_of, const std::string& class_source,
                             const Options& o) {
  const fs::path dir = fs::path(lay.data_root) / split;
  DDP_CHECK(fs::is_directory(dir), "split directory '", dir.string(), "' does not exist");
  DirList top = list_dir(dir);
  if (!top.dirs.empty()) return scan_class_folders(dir, classes, label_of, class_source, split == "train");
  DDP_CHECK(split != "train", "'", dir.string(), "' has no class folders");
  // Flat val/: labels from Kaggle's CSV.
  std::string csv = o.val_csv;
  if (csv.empty()) {
    for (const fs::path& p : {fs::path(lay.kaggle_root) / "LOC_val_solution.csv",
                              fs::path(lay.data_root) / "LOC_val_solution.csv", dir / "LOC_val_solution.csv"}) {
      if (fs::is_regular_file(p)) {
        csv = p.string();
        break;
      }
    }
  }
  DDP_CHECK(!csv.empty(), "'", dir.string(),
            "' is flat (no class folders) but no LOC_val_solution.csv was found next to it; pass --val-csv");
  auto labels = load_val_csv(csv);
  DDP_CHECK(!top.files.empty() || !top.dangling.empty() || !top.special.empty(), "'", dir.string(), "' ",
            top.hidden ? str("has no visible files (only ", top.hidden, " hidden one(s))") : std::string("is empty"));
  std::vector<Item> items;
  std::set<std::string> found;
  auto label = [&](const std::string& id, const fs::path& file) {
    auto it = labels.find(id);
    DDP_CHECK(it != labels.end(), "validation image '", file.string(), "' has no label in '", csv, "'");
    auto l = label_of.find(it->second);
    DDP_CHECK(l != label_of.end(), "'", csv, "' labels '", id, "' with class '", it->second,
              "', which is not in the class list (", classes.size(), " classes, from ", class_source, ")");
    found.insert(id);
    return l->second;
  };
  for (const auto& name : top.files) {
    if (name == "LOC_val_solution.csv") continue;
    items.push_back(Item{(dir / name).string(), name, label(fs::path(name).stem().string(), dir / name), ""});
  }
  for (const auto& name : top.dangling)
    items.push_back(Item{(dir / name).string(), name, label(fs::path(name).stem().string(), dir / name),
                         dangling_why(dir / name)});
  for (const auto& name : top.special)
    items.push_back(Item{(dir / name).string(), name, label(fs::path(name).stem().string(), dir / name),
                         special_why(dir / name)});
  // Rows of the CSV without their image: a val set quietly smaller than its labels say.
  std::vector<std::string> missing;
  for (const auto& [id, cls] : labels)
    if (!found.count(id)) missing.push_back(id);
  if (!missing.empty()) {
    if (!o.skip_bad) {
      std::string ids;
      for (size_t k = 0; k < std::min<size_t>(missing.size(), 5); ++k) ids += (k ? ", " : "") + missing[k];
      DDP_FAIL("'", csv, "' lists ", missing.size(), " image(s) with no file in '", dir.string(), "' (", ids,
               missing.size() > 5 ? ", ..." : "", ")\n(pass --skip-bad to pack the rest and list them in a report)");
    }
    for (const auto& id : missing) {
      auto l = label_of.find(labels.at(id));
      DDP_CHECK(l != label_of.end(), "'", csv, "' labels '", id, "' with class '", labels.at(id),
                "', which is not in the class list (", classes.size(), " classes, from ", class_source, ")");
      items.push_back(Item{(dir / id).string(), id, l->second,
                           str("'", csv, "' lists image '", id, "' but '", dir.string(), "' has no file for it")});
    }
  }
  return items;
}

// Class-balanced, deterministic: the k-th file (sorted) of class c goes to shard (k + off[c]) mod N,
// so every shard holds every class that has at least N images, and a class's counts across shards
// differ by at most one. off[c] = c unless that leaves a shard empty (few images per class, many
// shards: 2 classes of 3 images into 5 shards give shard 4 nothing); then off[c] = the number of
// images of the classes before c, which deals the images round robin in (class, name) order and so
// fills every shard whenever there are at least N images. The first rule is kept wherever it fills
// every shard because every earlier pack_imagenet used it: shards they packed still match a rerun
// (their input fingerprints, which follow shard order), and a --node-index run of either version
// writes the same shard.
std::vector<std::vector<Item>> assign(const std::vector<Item>& items, int nshards, int nclasses) {
  std::vector<Item> sorted = items;
  std::stable_sort(sorted.begin(), sorted.end(), [](const Item& a, const Item& b) {
    return a.label != b.label ? a.label < b.label : a.rel < b.rel;
  });
  auto deal = [&](const std::vector<int64_t>& off) {
    std::vector<std::vector<Item>> out(static_cast<size_t>(nshards));
    std::vector<int64_t> k(static_cast<size_t>(nclasses), 0);
    for (const auto& it : sorted) {
      const auto c = static_cast<size_t>(it.label);
      out[static_cast<size_t>((k[c]++ + off[c]) % nshards)].push_back(it);
    }
    return out;
  };
  std::vector<int64_t> off(static_cast<size_t>(nclasses));
  for (int c = 0; c < nclasses; ++c) off[static_cast<size_t>(c)] = c;
  auto out = deal(off);
  if (std::none_of(out.begin(), out.end(), [](const auto& s) { return s.empty(); })) return out;
  std::vector<int64_t> count(static_cast<size_t>(nclasses), 0);
  for (const auto& it : sorted) ++count[static_cast<size_t>(it.label)];
  for (size_t c = 0; c < off.size(); ++c) off[c] = c == 0 ? 0 : off[c - 1] + count[c - 1];
  return deal(off);
}

// Every file's size, once (both fingerprints use it; a node's run lists the whole split).
void read_sizes(std::vector<Item>& items) {
  for (auto& it : items) {
    std::error_code ec;
    const auto size = fs::file_size(it.path, ec);
    it.size = ec ? -1 : static_cast<int64_t>(size);
  }
}

// FNV-1a 64 over each input file's relative name, size and label, in shard order: a rerun whose
// input differs (files added, removed, renamed, resized, relabelled) gets another value. Sizes only,
// not contents: reading every file twice would double the cost of a run.
std::string input_fingerprint(const std::vector<Item>& items) {
  Fnv1a64 h;
  for (const auto& it : items) {
    h.bytes(it.rel.data(), it.rel.size() + 1);
    h.bytes(&it.size, sizeof it.size);
    h.bytes(&it.label, sizeof it.label);
  }
  return h.hex();
}

// What makes the whole set of one split, the same in every run of one packing: each run (--nodes N
// --node-index i too) lists the whole split before it takes its share, so the separate runs of one
// packing agree, and shares of two packings (other input files, other settings, another shard count)
// differ, which the trainer checks across nodes (--shard-scope node). Hashes the split, the shard
// count, the settings that change what is stored (encoding, resize, quality, raw size, upscaling), the
// class list, and every input file of the split (relative name, size, label) sorted as assign() sorts
// them. Not the input directory (each node may mount it elsewhere), nor --threads, --skip-bad or
// --max-pixels, which change no image's shard (they only decide which unreadable images are left out).
std::string set_fingerprint(const std::string& split, const std::vector<Item>& items, const ShardMeta& settings) {
  std::vector<const Item*> sorted;
  sorted.reserve(items.size());
  for (const auto& it : items) sorted.push_back(&it);
  std::stable_sort(sorted.begin(), sorted.end(), [](const Item* a, const Item* b) {
    return a->label != b->label ? a->label < b->label : a->rel < b->rel;
  });
  Fnv1a64 h;
  h.text("resnet18-ddp set v1");
  h.text(split);
  h.number(settings.num_shards);
  h.text(settings.encoding);
  h.number(settings.resize_shorter);
  h.number(settings.jpeg_quality);
  h.number(settings.height);
  h.number(settings.width);
  h.number(settings.allow_upscale ? 1 : 0);
  h.number(static_cast<int64_t>(settings.classes.size()));
  for (const auto& c : settings.classes) h.text(c);
  h.number(static_cast<int64_t>(sorted.size()));
  for (const Item* it : sorted) {
    h.text(it->rel);
    h.number(it->size);
    h.number(it->label);
  }
  return h.hex();
}

// A shard already under its final name: reuse it if it was packed with these settings from this
// input; otherwise stop, saying which setting differs. A reused shard whose own input is this run's
// but whose set_fingerprint is not (files elsewhere in the split changed since, e.g. a bad image
// replaced; or packed before the attribute existed) gets this run's, so that the set's shards agree.
bool complete_and_matching(const std::string& path, const ShardMeta& want, int64_t count) {
  if (!fs::exists(path)) return false;
  std::unique_ptr<ShardReader> r;
  try {
    r = std::make_unique<ShardReader>(path);
  } catch (const std::exception& e) {
    DDP_FAIL("'", path, "' exists but is not a valid shard (", e.what(), "); delete it and rerun");
  }
  const auto& m = r->meta();
  // Shards of an older pack_imagenet recorded neither their input nor --allow-upscale. Refusing them
  // would mean repacking a whole ImageNet to add a split; they are reused as before, with a warning.
  const bool older = m.input_fingerprint.empty();
  if (older)
    warn("'", path, "' was packed by an older pack_imagenet (no input_fingerprint or allow_upscale attribute): its ",
         "input and --allow-upscale cannot be checked; reusing it as it is, without a set_fingerprint, so the set it ",
         "belongs to cannot be checked as a whole either (delete it to repack)");
  std::string diff;
  auto differs = [&](const char* what, const auto& had, const auto& now) {
    if (had == now) return;
    diff += str(diff.empty() ? "" : ", ", what, " ", had, " (this run: ", now, ")");
  };
  differs("split", m.split, want.split);
  differs("shard index", m.shard_index, want.shard_index);
  differs("shards", m.num_shards, want.num_shards);
  differs("--encoding", m.encoding, want.encoding);
  differs("--resize", m.resize_shorter, want.resize_shorter);
  differs("--quality", m.jpeg_quality, want.jpeg_quality);
  differs("raw height", m.height, want.height);
  differs("raw width", m.width, want.width);
  if (!older) differs("--allow-upscale", m.allow_upscale ? "on" : "off", want.allow_upscale ? "on" : "off");
  if (m.classes != want.classes) diff += str(diff.empty() ? "" : ", ", "class list (", m.classes.size(),
                                             " classes; this run: ", want.classes.size(), ")");
  DDP_CHECK(diff.empty(), "'", path, "' exists but was packed with other settings: ", diff,
            "; delete it or choose another --output");
  DDP_CHECK(older || m.input_fingerprint == want.input_fingerprint, "'", path,
            "' exists but was packed from other input files (its input fingerprint differs: files were added, ",
            "removed, renamed, changed in size or moved to another class since); delete it or choose another --output");
  // Fewer images than listed is fine only when --skip-bad dropped some.
  DDP_CHECK(m.num_images <= count, "'", path, "' holds ", m.num_images, " images but the input lists ", count,
            " for it: the input changed; delete the shards and repack");
  if (!older && m.set_fingerprint != want.set_fingerprint) {
    std::cerr << "pack_imagenet: " << path << ": its own input is unchanged, but "
              << (m.set_fingerprint.empty() ? std::string("it has no set_fingerprint (an earlier pack_imagenet)")
                                            : str("its set_fingerprint ", m.set_fingerprint, " is another listing's (",
                                                  "files elsewhere in split '", want.split, "' changed since)"))
              << "; writing this run's, " << want.set_fingerprint << " (a copy of the shard, renamed over it)\n";
    r.reset();
    rewrite_set_fingerprint(path, want.set_fingerprint);
  }
  return true;
}

// Two runs writing the same shards into one directory would each remove and rewrite the other's
// partial files. Each run locks the byte range [first, first + count) of OUTPUT/.pack_imagenet.lock,
// one byte per shard index it writes, for its whole life: a second run that would write any of the
// same shards is refused at once, while runs with different --node-index into one shared directory
// may still go in parallel (ddp/core/file_lock.h).
void lock_output(const std::string& dir, int first, int count) {
  const std::string path = (fs::path(dir) / kLockFile).string();
  const FileLock l = lock_file_range(path, first, count);
  if (l.held()) return;  // the descriptor stays open, and the lock held, until the process exits
  DDP_CHECK(!l.busy(), "another pack_imagenet is writing the same shards into '", dir, "' (it holds the lock on ", path,
            "); wait for it to finish, or use another --output");
  DDP_FAIL("cannot create or lock ", path, " in output directory '", dir, "': ", std::strerror(l.error),
           " (not writable, or a file system without POSIX locks?)");
}

// Complete shards of a set with another shard count in the output directory: a trainer given the
// directory would find two sets of the split, so they must go (or this run go elsewhere) first.
void refuse_other_sets(const std::string& dir, const std::vector<std::string>& splits, int shards) {
  std::vector<std::string> other;
  for (const auto& e : fs::directory_iterator(dir)) {
    const auto n = parse_shard_file_name(e.path().filename().string());
    if (n && n->count != shards && std::find(splits.begin(), splits.end(), n->split) != splits.end())
      other.push_back(e.path().filename().string());
  }
  if (other.empty()) return;
  std::sort(other.begin(), other.end());
  std::string names;
  for (size_t k = 0; k < std::min<size_t>(other.size(), 5); ++k) names += (k ? ", " : "") + other[k];
  DDP_FAIL("'", dir, "' already holds a shard set with another shard count (", names, other.size() > 5 ? ", ..." : "",
           "; this run writes ", shards, "); delete those files or choose another --output");
}

// Every shard in one output directory must share one class list, label for label (the trainer and
// inspect_shards refuse a set that does not). Complete shards already there, of any split, are
// compared with this run's list before anything is written; the first that differs stops the run,
// naming the first class that differs. (Unreadable files are left to the checks that read them.)
void refuse_other_class_lists(const std::string& dir, const std::vector<std::string>& classes,
                              const std::string& class_source) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return;
  std::vector<std::string> files;
  for (const auto& e : fs::directory_iterator(dir))
    if (parse_shard_file_name(e.path().filename().string())) files.push_back(e.path().string());
  std::sort(files.begin(), files.end());
  for (const auto& path : files) {
    std::vector<std::string> had;
    std::string split;
    try {
      ShardReader r(path);
      had = r.meta().classes;
      split = r.meta().split;
    } catch (const std::exception&) {
      continue;
    }
    if (had == classes) continue;
    size_t k = 0;
    while (k < had.size() && k < classes.size() && had[k] == classes[k]) ++k;
    std::string what;
    if (k < had.size() && k < classes.size())
      what = str("class ", k, " is '", escaped(had[k]), "' there but '", escaped(classes[k]), "' in this run");
    else if (k < classes.size())
      what = str("it has ", had.size(), " classes and this run ", classes.size(), ": this run has class ", k, " '",
                 escaped(classes[k]), "', which it lacks");
    else
      what = str("it has ", had.size(), " classes and this run ", classes.size(), ": it has class ", k, " '",
                 escaped(had[k]), "', which this run lacks");
    DDP_FAIL("'", path, "' (split '", split, "', already in --output) has another class list: ", what,
             " (this run's list is from ", class_source, "). Every shard of a data set needs the same list, label "
             "for label: pack with the list that shard has (pass its classes in order with --class-index; "
             "h5dump -d classes shows them), delete the shards that differ, or choose another --output");
  }
}

// An output folder inside a split folder of the input (ROOT/train/shards) would be read as a class
// folder by the next run (or turn a flat val/ into one with class folders): refused before it
// exists. Beside the split folders (ROOT/shards) nothing reads it as input, and it is fine.
void refuse_output_inside_input(const Options& o, const Layout& lay, std::vector<std::string> splits) {
  splits.push_back("train");  // the class list's source, whether packed or not
  splits.push_back("val");
  std::error_code e1;
  const fs::path out = fs::weakly_canonical(fs::absolute(o.output), e1);
  if (e1) return;  // the output checks that follow name the problem
  for (const auto& s : splits) {
    std::error_code e2;
    const fs::path dir = fs::path(lay.data_root) / s;
    const fs::path d = fs::weakly_canonical(fs::absolute(dir), e2);
    if (e2) continue;
    const fs::path rel = out.lexically_relative(d);
    DDP_CHECK(rel.empty() || *rel.begin() == "..", "--output '", o.output, "' is inside the input: it is in '",
              dir.string(), "' of --input '", o.input, "', where a run would read it as a class folder; choose an ",
              "--output outside '", dir.string(), "' (beside it, or elsewhere)");
  }
}

// A class whose every image was rejected (--skip-bad) would be in the class list with no images.
// In the train split of a whole run that is an error unless --allow-empty-classes: the model would
// have an output it is never trained on, almost certainly not what was meant. The shards are left
// as they are (complete and valid), so a rerun with --allow-empty-classes reuses them. Elsewhere
// (val; one node's shard, where other shards may hold the class) it is a warning.
void check_emptied_classes(const Options& o, const std::vector<std::string>& splits,
                           const std::vector<std::string>& classes,
                           const std::map<std::string, std::vector<int64_t>>& in_class,
                           const std::map<std::string, std::vector<int64_t>>& out_class, const std::string& report) {
  const std::string listed = report.empty() ? std::string("rejected by --skip-bad when those shards were packed")
                                            : str("listed in ", report);
  for (const auto& s : splits) {
    const auto& in_c = in_class.at(s);
    const auto& out_c = out_class.at(s);
    std::vector<std::string> lost;
    for (size_t c = 0; c < classes.size(); ++c)
      if (in_c[c] > 0 && out_c[c] == 0)
        lost.push_back(str("class '", escaped(classes[c]), "' (label ", c, "): all ", in_c[c], " of its images",
                           o.node_index >= 0 ? " in this shard" : "", " were rejected"));
    if (lost.empty()) continue;
    std::string what;
    for (size_t k = 0; k < std::min<size_t>(lost.size(), 5); ++k) what += (k ? "; " : "") + lost[k];
    if (lost.size() > 5) what += str("; and ", lost.size() - 5, " more");
    const std::string where =
        o.node_index >= 0 ? str("split '", s, "' (shard ", o.node_index, ")") : str("split '", s, "'");
    if (s == "train" && o.node_index < 0 && !o.allow_empty_classes)
      DDP_FAIL(where, ": ", what, " (", listed, "), so ", lost.size() == 1 ? "that class has" : "those classes have",
               " no training images. The shards are written and valid, but the model would have an output it is never "
               "trained on: fix or remove those images (or the class folder), delete the shards and pack again; or "
               "pass --allow-empty-classes to keep the class without training images (a rerun with it reuses these "
               "shards)");
    std::cerr << "pack_imagenet: warning: " << where << ": " << what << " (" << listed << "), so "
              << (lost.size() == 1 ? "that class has" : "those classes have") << " no images in "
              << (o.node_index >= 0 ? "this shard" : "this split")
              << (s == "train" && o.node_index >= 0
                      ? " (inspect_shards on the whole set tells whether other shards hold some)"
                      : "")
              << "\n";
  }
}

int run(const Options& o) {
  DDP_CHECK(o.encoding == "jpeg" || o.encoding == "raw", "--encoding must be 'jpeg' or 'raw', got '", o.encoding, "'");
  // Shard names carry the index and count in 5 digits (<split>-NNNNN-of-MMMMM.h5, which the loader
  // matches exactly).
  DDP_CHECK(o.shards >= 1 && o.shards <= kMaxShards, "--shards/--nodes must be in 1..", kMaxShards, ", got ",
            o.shards);
  DDP_CHECK(o.node_index >= -1 && o.node_index < o.shards, "--node-index must be in 0..", o.shards - 1,
            " (--nodes ", o.shards, "), or -1 for all shards; got ", o.node_index);
  DDP_CHECK(o.threads >= 0 && o.threads <= kMaxThreads, "--threads must be in 0..", kMaxThreads,
            " (0: all cores), got ", o.threads);
  std::set<std::string> seen_splits;
  for (const auto& s : o.splits) {
    // Split names become file names in --output: no path separators, no '..'.
    DDP_CHECK(!s.empty() && std::all_of(s.begin(), s.end(),
                                        [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-'; }),
              "--splits: '", s, "' is not a plain name (letters, digits, '_' and '-' only)");
    DDP_CHECK(seen_splits.insert(s).second, "--splits names '", s, "' twice");
  }
  DDP_CHECK(o.quality >= 1 && o.quality <= 100, "--quality must be in 1..100, got ", o.quality);
  DDP_CHECK(o.resize >= 0, "--resize must be >= 0, got ", o.resize);
  // A negative limit would mean no limit, silently.
  DDP_CHECK(o.max_pixels >= 0, "--max-pixels must be 0 (no limit) or more, got ", o.max_pixels);
  DDP_CHECK(o.encoding != "raw" || o.resize > 0, "--encoding raw needs --resize S > 0 (images are stored S x S)");
  DDP_CHECK(o.encoding != "raw" || !o.quality_given, "--quality ", o.quality,
            " applies to --encoding jpeg only: --encoding raw stores pixels, with no JPEG quality (drop --quality)");
  DDP_CHECK(o.bad_report.empty() || o.skip_bad, "--bad-report '", o.bad_report,
            "' is only written with --skip-bad (without it, a bad image stops the run)");
  const Layout lay = find_layout(o.input);
  std::vector<std::string> splits = o.splits;
  if (splits.empty()) {
    for (std::string s : {"train", "val"}) {
      const fs::path dir = fs::path(lay.data_root) / s;
      if (fs::is_directory(dir)) {
        splits.push_back(s);
        continue;
      }
      // Packing one split of two without a word would look like success (a val/ named validation/).
      std::vector<std::string> found;  // not list_dir: a folder not packed may have any name
      std::error_code ec;
      for (const auto& e : fs::directory_iterator(lay.data_root, ec)) {
        const std::string d = e.path().filename().string();
        std::error_code ec2;
        if (!d.empty() && d[0] != '.' && d != "train" && d != "val" && e.is_directory(ec2) &&
            !fs::equivalent(e.path(), o.output, ec2))  // ROOT/shards, this run's own --output
          found.push_back(d);
      }
      std::sort(found.begin(), found.end());
      std::string others;
      for (const auto& d : found) others += str(others.empty() ? "" : ", ", "'", escaped(d), "'");
      std::cerr << "pack_imagenet: note: no " << s << " split: '" << dir.string() << "' does not exist"
                << "; packing " << (s == "val" ? "train" : "val") << " only"
                << (others.empty() ? std::string()
                                   : str(" (other folders there: ", others, "; to pack one as ", s, ", rename it ", s,
                                         "/)"))
                << "\n";
    }
  }
  refuse_output_inside_input(o, lay, splits);
  // Classes: --class-index, else sorted train/ folders (torchvision ImageFolder order).
  std::vector<std::string> classes;
  std::string class_source;  // for messages: where the class list came from
  if (!o.class_index.empty()) {
    classes = load_class_index(o.class_index);
    class_source = str("--class-index '", o.class_index, "'");
  } else {
    fs::path tr = fs::path(lay.data_root) / "train";
    DDP_CHECK(fs::is_directory(tr), "no train/ folder in '", lay.data_root,
              "' to take the class list from; pass --class-index");
    classes = class_folders(tr);
    DDP_CHECK(!classes.empty(), "'", tr.string(), "' has no class folders");
    class_source = str("the class folders of '", tr.string(), "'");
  }
  std::map<std::string, int> label_of;
  for (size_t i = 0; i < classes.size(); ++i) label_of[classes[i]] = static_cast<int>(i);
  refuse_other_class_lists(o.output, classes, class_source);
  // Output directory: created, proven writable and locked before any work.
  std::error_code ec;
  fs::create_directories(o.output, ec);
  DDP_CHECK(!ec, "cannot create output directory '", o.output, "': ", ec.message());
  lock_output(o.output, o.node_index >= 0 ? o.node_index : 0, o.node_index >= 0 ? 1 : o.shards);
  refuse_other_sets(o.output, splits, o.shards);
  BadReport report;
  {
    const std::string rp = o.bad_report.empty() ? (fs::path(o.output) / "bad_images.txt").string() : o.bad_report;
    if (o.skip_bad || fs::exists(rp)) report.open(rp, (fs::path(o.output) / kLockFile).string(), o.skip_bad);
  }
  // Scan everything first, so an input error shows before hours of packing.
  const int raw_size = o.encoding == "raw" ? o.resize : 0;
  ShardMeta settings;  // what every shard of this packing records of its settings
  settings.num_shards = o.shards;
  settings.encoding = o.encoding;
  settings.resize_shorter = o.resize;
  settings.jpeg_quality = o.encoding == "jpeg" ? o.quality : 0;
  settings.height = settings.width = raw_size;
  settings.classes = classes;
  settings.allow_upscale = o.allow_upscale;
  std::map<std::string, std::string> set_fp;  // split -> set_fingerprint (of the whole split, whatever this run writes)
  std::map<std::string, std::vector<std::vector<Item>>> plan;
  int64_t total = 0;
  for (const auto& s : splits) {
    auto items = scan_split(lay, s, classes, label_of, class_source, o);
    read_sizes(items);
    // Known before any decoding: stop now rather than after the shards before it.
    if (!o.skip_bad) {
      for (const auto& it : items)
        DDP_CHECK(it.error.empty(), it.error,
                  "\n(pass --skip-bad to leave out unreadable images and list them in a report)");
    }
    // An empty shard would give its node nothing to train on.
    DDP_CHECK(static_cast<int64_t>(items.size()) >= o.shards, "split '", s, "' has ", items.size(),
              " images, fewer than the ", o.shards, " shards asked for (--shards/--nodes): every shard needs at "
              "least one image");
    set_fp[s] = set_fingerprint(s, items, settings);
    plan[s] = assign(items, o.shards, static_cast<int>(classes.size()));
    std::cerr << "pack_imagenet: " << s << ": " << items.size() << " images in " << classes.size() << " classes -> "
              << o.shards << " shard(s)\n";
  }
  struct Job {
    std::string path;
    ShardMeta meta;
    const std::vector<Item>* items;
  };
  std::vector<Job> jobs;
  std::vector<std::string> skipped;
  auto shard_meta = [&](const std::string& split, int index, const std::vector<Item>& items) {
    ShardMeta meta = settings;
    meta.split = split;
    meta.shard_index = index;
    meta.source = fs::absolute(o.input).string();
    meta.input_fingerprint = input_fingerprint(items);
    meta.set_fingerprint = set_fp.at(split);
    return meta;
  };
  // Per split and class: images in the input of the shards of this run, and images in those
  // shards (packed now, or already there): a class with input but nothing packed lost every image
  // to --skip-bad.
  std::map<std::string, std::vector<int64_t>> in_class, out_class;
  for (const auto& s : splits) {
    auto& in_c = in_class[s];
    auto& out_c = out_class[s];
    in_c.assign(classes.size(), 0);
    out_c.assign(classes.size(), 0);
    for (int i = 0; i < o.shards; ++i) {
      if (o.node_index >= 0 && i != o.node_index) continue;
      const auto& items = plan[s][static_cast<size_t>(i)];
      for (const auto& it : items) ++in_c[static_cast<size_t>(it.label)];
      const std::string path = (fs::path(o.output) / shard_file_name(s, i, o.shards)).string();
      ShardMeta meta = shard_meta(s, i, items);
      if (complete_and_matching(path, meta, static_cast<int64_t>(items.size()))) {
        const ShardReader done_shard(path);
        for (int32_t l : done_shard.labels()) ++out_c[static_cast<size_t>(l)];
        skipped.push_back(path);
        continue;
      }
      // --skip-bad: a shard made only of images known bad already (dangling links, CSV rows without
      // their file) would stop the run after the shards before it; stop before any work instead.
      DDP_CHECK(std::any_of(items.begin(), items.end(), [](const Item& it) { return it.error.empty(); }), "all ",
                items.size(), " images of '", shard_file_name(s, i, o.shards), "' (split '", s,
                "') are unreadable (", items.front().error, items.size() > 1 ? "; and the rest" : "",
                "); no shard written: fix them or pack with fewer --shards");
      if (fs::exists(path + kPartialSuffix))
        std::cerr << "pack_imagenet: removing " << path << kPartialSuffix << " left by an interrupted run\n";
      jobs.push_back(Job{path, std::move(meta), &items});
      total += static_cast<int64_t>(items.size());
    }
  }
  for (const auto& p : skipped) std::cerr << "pack_imagenet: " << p << " is already complete, skipped\n";
  {
    std::set<std::string> redo, current;
    std::vector<std::string> scanned;
    for (const auto& j : jobs)
      for (const auto& it : *j.items) redo.insert(escaped(report_name(it.path)));
    for (const auto& s : splits) {
      scanned.push_back(escaped(report_name((fs::path(lay.data_root) / s).string())) + "/");
      for (const auto& shard : plan[s])
        for (const auto& it : shard) current.insert(escaped(report_name(it.path)));
    }
    report.prune(redo, current, scanned);
  }
  Counters cnt;
  Progress prog(o.progress, total);
  int64_t done = 0;
  std::vector<std::pair<std::string, int64_t>> per_shard;
  for (const auto& j : jobs) {
    const int64_t before = cnt.images;
    pack_shard(*j.items, j.path, j.meta, o, raw_size, cnt, report, prog, done, out_class[j.meta.split]);
    per_shard.emplace_back(j.path, cnt.images - before);
  }
  prog.update(done, "done", true);
  prog.finish();
  const double secs = prog.elapsed();
  if (report.lines > 0) {
    std::string why;
    for (const auto& [k, v] : cnt.rejected) why += str(why.empty() ? "" : ", ", v, " ", k);
    std::cerr << "pack_imagenet: " << report.lines << " bad image(s) left out (" << why
              << "), each listed with its reason in " << report.path
              << (report.kept > 0 ? str(", which also keeps ", report.kept, " line(s) for shards packed before")
                                  : std::string())
              << "\n";
  }
  report.finish();
  std::printf("pack_imagenet summary (%.1f s, %.0f images/s with %d threads)\n", secs, secs > 0 ? done / secs : 0.0,
              o.threads > 0 ? o.threads : static_cast<int>(std::thread::hardware_concurrency()));
  for (const auto& [p, c] : per_shard) std::printf("  %-50s %10lld images\n", p.c_str(), static_cast<long long>(c));
  for (const auto& p : skipped) std::printf("  %-50s (already complete)\n", p.c_str());
  const std::string how = o.encoding == "raw"
                              ? str("raw ", raw_size, "x", raw_size, " pixels")
                              : str("re-encoded ", cnt.converted, ", original JPEG kept ", cnt.passthrough);
  std::printf("  written %lld (%s), rejected %lld, with libjpeg warnings %lld\n", static_cast<long long>(cnt.images),
              how.c_str(), static_cast<long long>(cnt.bad), static_cast<long long>(cnt.warned));
  for (const auto& [k, v] : cnt.kinds) std::printf("  input kind %s: %lld\n", k.c_str(), static_cast<long long>(v));
  std::fflush(stdout);
  check_emptied_classes(o, splits, classes, in_class, out_class, report.path);
  if (o.verify) {
    std::vector<std::string> files;
    for (const auto& j : jobs) files.push_back(j.path);
    for (const auto& p : skipped) files.push_back(p);
    // A --node-index run writes one node's share of the set.
    return prep::inspect(files, true, std::cout, 0, o.node_index >= 0, o.allow_empty_classes) ? 0 : 1;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  // A shard abandoned after a write error (a full disk) cannot be closed by HDF5 1.10, and its
  // half-closed file object crashes HDF5's own atexit clean-up (a segfault after the error
  // message). Every HDF5 object here is closed by its owner before exit, so that clean-up has
  // nothing to do: leave it out. Must come before any other HDF5 call.
  H5dont_atexit();
  Options o;
  std::string splits;
  int nodes = 0;
  po::options_description d(
      "pack_imagenet: pack an ImageNet-style JPEG tree into per-node HDF5 shards\n"
      "usage: pack_imagenet --input ROOT --output DIR [--shards N | --nodes N --node-index I] [options]\n"
      "options");
  d.add_options()("help,h", "show this help")
      ("input,i", po::value(&o.input)->required(), "ImageNet root: train/<class>/*, val/<class>/* or flat val/ + LOC_val_solution.csv (Kaggle)")
      ("output,o", po::value(&o.output)->required(), "output directory for <split>-NNNNN-of-MMMMM.h5")
      ("shards", po::value(&o.shards)->default_value(1), "shards per split (one per node)")
      ("nodes", po::value(&nodes), "number of nodes (same as --shards)")
      ("node-index", po::value(&o.node_index)->default_value(-1), "write only this node's shards (0-based)")
      ("splits", po::value(&splits), "comma-separated splits (default: those of train,val present)")
      ("resize", po::value(&o.resize)->default_value(256), "shorter side in pixels (0: keep; raw: stored S x S)")
      ("allow-upscale", po::bool_switch(&o.allow_upscale), "enlarge images smaller than --resize")
      ("encoding", po::value(&o.encoding)->default_value("jpeg"), "jpeg (bytes) or raw (uint8 S x S x 3)")
      ("quality", po::value(&o.quality)->default_value(90), "JPEG quality of re-encoded images")
      ("class-index", po::value(&o.class_index), "file listing class folder names in label order (first token per line)")
      ("val-csv", po::value(&o.val_csv), "Kaggle LOC_val_solution.csv for a flat val/ (default: searched next to it)")
      ("threads,j", po::value(&o.threads)->default_value(0), "worker threads (0: all cores)")
      ("skip-bad", po::bool_switch(&o.skip_bad), "leave out unreadable images (listed in --bad-report) instead of stopping")
      ("bad-report", po::value(&o.bad_report), "report file for --skip-bad (default OUTPUT/bad_images.txt)")
      ("max-pixels", po::value(&o.max_pixels)->default_value(o.max_pixels), "reject images with more pixels (0: no limit)")
      ("allow-empty-classes", po::bool_switch(&o.allow_empty_classes),
       "with --skip-bad: a train class whose images were all rejected is kept (no training images) with a warning, "
       "instead of an error")
      ("verify", po::bool_switch(&o.verify), "after packing, decode-check every shard (as inspect_shards)")
      ("no-progress", "no progress bar");
  try {
    po::variables_map vm;
    const po::parsed_options parsed = po::parse_command_line(argc, argv, d);
    // Boost sets aside words that belong to no flag as positional tokens, which store() drops:
    // "--splits train val" would pack train only and succeed. Refused, as train_resnet18 does.
    const auto stray = po::collect_unrecognized(parsed.options, po::include_positional);
    if (!stray.empty())
      throw po::error("unexpected argument '" + stray.front() + "' (every setting is a --flag with one value; --splits takes a comma-separated list: --splits train,val)");
    po::store(parsed, vm);
    if (vm.count("help")) {
      std::cout << d << "\n";
      return 0;
    }
    po::notify(vm);
    if (vm.count("nodes")) {
      DDP_CHECK(vm["shards"].defaulted() || o.shards == nodes, "--shards and --nodes disagree");
      o.shards = nodes;
    }
    if (vm.count("no-progress")) o.progress = false;
    o.quality_given = !vm["quality"].defaulted();
    std::stringstream ss(splits);
    for (std::string s; std::getline(ss, s, ',');)
      if (!trim(s).empty()) o.splits.push_back(trim(s));
    return run(o);
  } catch (const po::error& e) {
    std::cerr << "pack_imagenet: " << e.what() << " (see --help)\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "pack_imagenet: error: " << e.what() << "\n";
    return 1;
  }
}
