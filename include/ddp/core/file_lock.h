// Advisory locks that guard a directory against a second process of ours (pack_imagenet's output,
// train_resnet18's --checkpoint-dir). Open-file-description locks: released when the process ends,
// however it ends; taken per byte range (unlike flock); NFS carries them as POSIX locks.
#pragma once

#include <cstdint>
#include <string>

namespace ddp {

struct FileLock {
  int fd = -1;     // the locked file's descriptor, kept open (and the lock held) for the process's life
  int error = 0;   // errno of the failed open or lock; 0 when locked
  bool held() const { return fd >= 0; }
  bool busy() const;  // another process holds the range
};

// Write-locks bytes [start, start + len) of `path` (created if missing): without waiting, or with
// `wait` until the holder lets go (a signal does not end the wait).
FileLock lock_file_range(const std::string& path, int64_t start, int64_t len, bool wait = false);

}  // namespace ddp
