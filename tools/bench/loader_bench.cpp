// loader_bench: images/s of ddp::data::Loader over a shard directory (training transform by default).
// Driven by tools/bench/loader_vs_torchvision.sh; the first epoch warms up and is not counted; then
// whole epochs run until at least --epochs of them and --seconds of time are done. Also prints images
// per CPU-second (all threads), which a loaded machine disturbs less than img/s.
#include <sys/resource.h>

#include <chrono>
#include <cstdio>
#include <iostream>
#include <stdexcept>
#include <string>

#include <boost/program_options.hpp>

#include "ddp/data/loader.h"

namespace po = boost::program_options;

// User + system CPU time of the whole process (every thread), in seconds.
static double cpu_seconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         1e-6 * static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec);
}

int main(int argc, char** argv) {
  std::string dir, split = "train";
  int workers = 0, batch = 64, epochs = 3, size = 224;
  double min_seconds = 0;
  bool eval = false;
  po::options_description d("loader_bench: Loader throughput\noptions");
  d.add_options()("help,h", "show this help")("shards", po::value(&dir)->required(), "shard directory")(
      "split", po::value(&split)->default_value(split), "split")(
      "workers", po::value(&workers)->default_value(0), "decode threads (0: all cores)")(
      "batch", po::value(&batch)->default_value(batch), "batch size")(
      "epochs", po::value(&epochs)->default_value(epochs), "least timed epochs (after one warm-up epoch)")(
      "seconds", po::value(&min_seconds)->default_value(0), "least timed seconds (whole epochs)")(
      "size", po::value(&size)->default_value(size), "output resolution")("eval", po::bool_switch(&eval),
                                                                          "evaluation transform");
  try {
    po::variables_map vm;
    const po::parsed_options parsed = po::parse_command_line(argc, argv, d);
    // Words that belong to no flag ("--epochs 1 2") would be dropped by store(): refused instead.
    const auto stray = po::collect_unrecognized(parsed.options, po::include_positional);
    if (!stray.empty())
      throw std::invalid_argument("unexpected argument '" + stray.front() + "' (every setting is a --flag with one value)");
    po::store(parsed, vm);
    if (vm.count("help")) {
      std::cout << d << "\n";
      return 0;
    }
    po::notify(vm);
    // Bad values would time nothing (-nan img/s) or reach the loader as nonsense: refused, named.
    if (workers < 0) throw std::invalid_argument("--workers must be 0 (all cores) or more, got " + std::to_string(workers));
    if (batch < 1) throw std::invalid_argument("--batch must be at least 1, got " + std::to_string(batch));
    if (epochs < 1) throw std::invalid_argument("--epochs must be at least 1 (timed epochs), got " + std::to_string(epochs));
    if (!(min_seconds >= 0)) throw std::invalid_argument("--seconds must be 0 or more, got " + std::to_string(min_seconds));
    if (size < 1) throw std::invalid_argument("--size must be at least 1, got " + std::to_string(size));
    ddp::data::LoaderConfig c;
    c.shards = ddp::data::find_shards(dir, split);
    c.batch_size = batch;
    c.height = c.width = size;
    c.train = !eval;
    c.workers = workers;
    ddp::data::Loader ld(c);
    int64_t images = 0;
    double secs = 0, cpu = 0;
    uint64_t checksum = 0;
    int e = 0;
    for (; e <= epochs || secs < min_seconds; ++e) {
      auto t0 = std::chrono::steady_clock::now();
      const double c0 = cpu_seconds();
      ld.start_epoch(e, ld.local_batches());
      ddp::data::Batch b;
      int64_t n = 0;
      while (ld.next(b)) {
        n += b.n;
        checksum += b.images[0];
      }
      double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      const double c = cpu_seconds() - c0;
      if (e > 0) {
        images += n;
        secs += s;
        cpu += c;
      }
    }
    if (images == 0 || secs <= 0 || cpu <= 0)
      throw std::runtime_error("no whole batch of " + std::to_string(batch) + " images was timed (the '" + split +
                               "' split in '" + dir + "' holds fewer images than one batch?)");
    std::printf(
        "loader_bench: %lld images in %.2f s: %.1f img/s, %.1f img per CPU-second (%d epochs, %d workers, batch %d, "
        "%dx%d, %s) [%llu]\n",
        static_cast<long long>(images), secs, images / secs, images / cpu, e - 1, workers, batch, size, size,
                eval ? "eval" : "train", static_cast<unsigned long long>(checksum % 10));
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "loader_bench: error: " << e.what() << "\n";
    return 1;
  }
}
