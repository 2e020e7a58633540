#include "inspect.h"

#include <algorithm>
#include <cstdio>
#include <map>
#include <filesystem>
#include <memory>
#include <set>

#include "ddp/core/check.h"
#include "ddp/data/image.h"
#include "ddp/data/shard.h"

namespace ddp::prep {

bool inspect(const std::vector<std::string>& files_in, bool decode, std::ostream& out, int show,
             bool allow_incomplete, bool allow_empty_classes) {
  bool ok = true;
  std::vector<std::string> classes;
  std::string first;
  std::map<std::string, std::vector<int64_t>> hist_by_split;
  std::map<std::string, int64_t> total_by_split;
  // split -> shard count -> index -> files claiming it (by their attributes)
  std::map<std::string, std::map<int, std::map<int, std::vector<std::string>>>> sets;
  // split -> set_fingerprint -> files: one packing per split (shards without one are not counted)
  std::map<std::string, std::map<std::string, std::vector<std::string>>> packings;
  std::vector<std::string> files;
  std::set<std::string> seen;
  for (const auto& path : files_in) {
    std::error_code ec;
    const auto canon = std::filesystem::weakly_canonical(path, ec);
    if (seen.insert(ec ? path : canon.string()).second) {
      files.push_back(path);
    } else {
      out << path << ": listed twice, read once\n";
    }
  }
  for (const auto& path : files) {
    std::unique_ptr<data::ShardReader> r;
    try {
      r = std::make_unique<data::ShardReader>(path);
    } catch (const std::exception& e) {
      out << path << ": INVALID: " << e.what() << "\n";
      ok = false;
      continue;
    }
    const auto& m = r->meta();
    out << path << ": format " << data::kShardFormat << " v" << data::kShardFormatVersion << ", split " << m.split
        << ", shard " << m.shard_index << "/" << m.num_shards << ", " << m.num_images << " images, "
        << m.classes.size() << " classes, encoding " << m.encoding;
    if (m.encoding == "raw") out << " " << m.width << "x" << m.height;
    out << ", resize_shorter " << m.resize_shorter;
    if (m.encoding == "jpeg") out << ", quality " << m.jpeg_quality;
    out << ", source " << m.source << ", set fingerprint "
        << (m.set_fingerprint.empty() ? std::string("none (older pack_imagenet)") : m.set_fingerprint) << "\n";
    try {
      data::check_shard_name_matches(path, m);
    } catch (const std::exception& e) {
      out << path << ": ERROR: " << e.what() << "\n";
      ok = false;
    }
    if (m.num_images == 0) {
      out << path << ": ERROR: holds no images\n";
      ok = false;
    }
    sets[m.split][m.num_shards][m.shard_index].push_back(path);
    if (!m.set_fingerprint.empty()) packings[m.split][m.set_fingerprint].push_back(path);
    if (classes.empty()) {
      classes = m.classes;
      first = path;
    } else if (m.classes != classes) {
      out << path << ": ERROR: class list differs from " << first << "\n";
      ok = false;
    }
    std::vector<int64_t> hist(m.classes.size(), 0);
    for (int32_t l : r->labels()) ++hist[static_cast<size_t>(l)];
    auto [mn, mx] = std::minmax_element(hist.begin(), hist.end());
    out << "  labels: min " << *mn << " / max " << *mx << " images per class";
    if (*mn == 0) out << " (some classes absent from this shard)";
    out << "\n";
    auto& h = hist_by_split[m.split];
    if (h.empty()) h.assign(hist.size(), 0);
    for (size_t c = 0; c < std::min(h.size(), hist.size()); ++c) h[c] += hist[c];
    total_by_split[m.split] += m.num_images;
    auto names = r->filenames();
    if (static_cast<int64_t>(names.size()) != m.num_images) {
      out << path << ": ERROR: " << names.size() << " file names for " << m.num_images << " images\n";
      ok = false;
    }
    for (int i = 0; i < std::min<int64_t>(show, m.num_images); ++i)
      out << "  [" << i << "] " << names[static_cast<size_t>(i)] << "  label " << r->labels()[static_cast<size_t>(i)]
          << " (" << m.classes[static_cast<size_t>(r->labels()[static_cast<size_t>(i)])] << ")\n";
    if (decode && m.encoding == "jpeg") {
      int64_t bad = 0;
      const int64_t chunk = 256;
      std::vector<std::vector<uint8_t>> bytes;
      for (int64_t s = 0; s < m.num_images; s += chunk) {
        std::vector<int64_t> idx;
        for (int64_t i = s; i < std::min(m.num_images, s + chunk); ++i) idx.push_back(i);
        r->read_jpeg(idx, bytes);
        for (size_t k = 0; k < idx.size(); ++k) {
          try {
            data::decode_jpeg(bytes[k].data(), bytes[k].size(), path + ":" + names[static_cast<size_t>(idx[k])], {},
                              1, 1, 0, true);
          } catch (const std::exception& e) {
            if (bad++ < 10) out << "  ERROR: " << e.what() << "\n";
          }
        }
      }
      out << "  decode check: " << (m.num_images - bad) << " of " << m.num_images << " images decode\n";
      if (bad) ok = false;
    } else if (decode) {
      out << "  decode check: raw pixels (nothing to decode)\n";
    }
  }
  // The set of each split: a trainer given this directory would read all of it.
  std::map<std::string, std::string> set_note;
  for (const auto& [split, by_fp] : packings) {
    if (by_fp.size() < 2) continue;
    out << "ERROR: split '" << split << "' mixes shards of " << by_fp.size() << " packings:";
    for (const auto& [fp, paths] : by_fp) {
      out << " " << fp << " (";
      for (size_t k = 0; k < paths.size(); ++k) out << (k ? ", " : "") << std::filesystem::path(paths[k]).filename().string();
      out << ")";
    }
    out << "; packed from other input files or with other settings, they would repeat some images and leave out "
           "others: pack the set again\n";
    ok = false;
  }
  for (const auto& [split, by_count] : sets) {
    if (by_count.size() > 1) {
      out << "ERROR: split '" << split << "' mixes shard sets of";
      for (const auto& [c, idx] : by_count) {
        out << " " << c << " (";
        int k = 0;
        for (const auto& [i, paths] : idx)
          for (const auto& p : paths) out << (k++ ? ", " : "") << std::filesystem::path(p).filename().string();
        out << ")";
      }
      out << "; a trainer would repeat images: delete the stale set\n";
      ok = false;
    }
    for (const auto& [count, idx] : by_count) {
      for (const auto& [i, paths] : idx) {
        if (paths.size() > 1) {
          out << "ERROR: split '" << split << "' shard " << i << " of " << count << " is in more than one file:";
          for (const auto& p : paths) out << " " << p;
          out << " (the same shard under two names?)\n";
          ok = false;
        }
      }
      std::vector<int> missing;
      for (int i = 0; i < count; ++i)
        if (!idx.count(i)) missing.push_back(i);
      if (missing.empty()) continue;
      set_note[split] = str(" (incomplete set: ", count - static_cast<int>(missing.size()), " of ", count, " shards)");
      out << (allow_incomplete ? "note" : "ERROR") << ": split '" << split << "': " << missing.size() << " of " << count
          << " shards missing:";
      for (size_t k = 0; k < std::min<size_t>(missing.size(), 10); ++k)
        out << " " << data::shard_file_name(split, missing[k], count);
      out << (missing.size() > 10 ? " ..." : "")
          << (allow_incomplete ? " (allowed: --allow-incomplete for a node's own share, or files named one by one)" : " (finish packing, or pass --allow-incomplete for a node's own share)")
          << "\n";
      if (!allow_incomplete) ok = false;
    }
  }
  for (const auto& [split, h] : hist_by_split) {
    auto [mn, mx] = std::minmax_element(h.begin(), h.end());
    out << "total " << split << ": " << total_by_split[split] << " images, " << h.size() << " classes, " << *mn
        << ".." << *mx << " per class" << set_note[split] << "\n";
    // A train class with no images: the model gets an output it is never trained on. In an
    // incomplete set the missing shards may hold it.
    if (split == "train" && *mn == 0) {
      std::vector<size_t> empty;
      for (size_t c = 0; c < h.size(); ++c)
        if (h[c] == 0) empty.push_back(c);
      const bool whole = set_note[split].empty();
      const bool error = whole && !allow_empty_classes;
      out << (error ? "ERROR" : "note") << ": split '" << split << "': " << empty.size()
          << " class(es) with no images" << (whole ? "" : " in these shards") << ":";
      for (size_t k = 0; k < std::min<size_t>(empty.size(), 10); ++k)
        out << (k ? ", " : " ") << (empty[k] < classes.size() ? classes[empty[k]] : "?") << " (label " << empty[k]
            << ")";
      out << (empty.size() > 10 ? ", ..." : "");
      if (error) out << " (the model would never be trained on them; --allow-empty-classes if that is meant)";
      else if (whole) out << " (--allow-empty-classes)";
      out << "\n";
      if (error) ok = false;
    }
  }
  out << (ok ? "OK" : "PROBLEMS FOUND") << "\n";
  return ok;
}

}  // namespace ddp::prep
