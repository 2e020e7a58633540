// inspect_shards: counts, label histogram, format version and a decode check of every image.
#include <algorithm>
#include <filesystem>
#include <iostream>

#include <boost/program_options.hpp>

#include "ddp/data/shard.h"  // kPartialSuffix: what pack_imagenet names an unfinished shard
#include "inspect.h"

namespace po = boost::program_options;
namespace fs = std::filesystem;

int main(int argc, char** argv) {
  std::vector<std::string> inputs;
  int show = 0;
  po::options_description d(
      "inspect_shards: check resnet18-ddp HDF5 shards\nusage: inspect_shards [options] SHARD.h5|DIR ...\noptions");
  d.add_options()("help,h", "show this help")("no-decode", "skip decoding every image")(
      "show", po::value(&show)->default_value(0), "print the first N file names and labels of each shard")(
      "allow-incomplete",
      "a directory whose set misses shards is fine (a node's own volume holds only its share); shard files "
      "named one by one are always checked as they are")(
      "allow-empty-classes",
      "a class with no images in a whole train set is a note, not an error (pack_imagenet --allow-empty-classes)")(
      "inputs", po::value(&inputs), "shard files or directories (all *.h5 inside)");
  po::positional_options_description pos;
  pos.add("inputs", -1);
  try {
    po::variables_map vm;
    po::store(po::command_line_parser(argc, argv).options(d).positional(pos).run(), vm);
    if (vm.count("help")) {
      std::cout << d << "\n";
      return 0;
    }
    po::notify(vm);
    if (show < 0) {
      std::cerr << "inspect_shards: --show must be 0 or more, got " << show << " (see --help)\n";
      return 2;
    }
    if (inputs.empty()) {
      std::cerr << "inspect_shards: no shard files given (see --help)\n";
      return 2;
    }
    std::vector<std::string> files;
    bool any_dir = false;
    for (const auto& in : inputs) {
      if (fs::is_directory(in)) {
        any_dir = true;
        std::vector<std::string> f;
        int partial = 0;
        for (const auto& e : fs::directory_iterator(in)) {
          if (e.path().extension() == ".h5") f.push_back(e.path().string());
          if (e.path().extension() == ddp::data::kPartialSuffix) ++partial;
        }
        std::sort(f.begin(), f.end());
        // pack_imagenet writes each shard as NAME.h5.partial and renames it when complete.
        const std::string unfinished =
            partial ? " and " + std::to_string(partial) + " unfinished *.partial shard(s): pack_imagenet is still " +
                          "running there or was interrupted (run it again to finish)"
                    : "";
        if (f.empty()) {
          std::cerr << "inspect_shards: no *.h5 files in '" << in << "'" << unfinished << "\n";
          return 1;
        }
        if (partial) std::cout << "note: '" << in << "' holds" << unfinished.substr(4) << "\n";
        files.insert(files.end(), f.begin(), f.end());
      } else if (fs::path(in).extension() == ddp::data::kPartialSuffix) {
        std::cerr << "inspect_shards: '" << in << "' is a shard pack_imagenet has not finished (it renames it to "
                  << fs::path(in).stem().string() << " when complete): run pack_imagenet again to finish it\n";
        return 1;
      } else {
        files.push_back(in);
      }
    }
    // Files named one by one are checked as they are: the shards of their set not named are a note
    // (a directory, or a mix, is a set and must be whole unless --allow-incomplete).
    const bool allow_incomplete = vm.count("allow-incomplete") > 0 || !any_dir;
    return ddp::prep::inspect(files, !vm.count("no-decode"), std::cout, show, allow_incomplete,
                              vm.count("allow-empty-classes") > 0)
               ? 0
               : 1;
  } catch (const po::error& e) {
    std::cerr << "inspect_shards: " << e.what() << " (see --help)\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "inspect_shards: error: " << e.what() << "\n";
    return 1;
  }
}
