#include "ddp/core/file_lock.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>

namespace ddp {

bool FileLock::busy() const { return error == EAGAIN || error == EACCES; }

FileLock lock_file_range(const std::string& path, int64_t start, int64_t len, bool wait) {
  FileLock l;
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) {
    l.error = errno;
    return l;
  }
  struct flock fl {};
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  fl.l_start = static_cast<off_t>(start);
  fl.l_len = static_cast<off_t>(len);
  int rc;
  while ((rc = ::fcntl(fd, wait ? F_OFD_SETLKW : F_OFD_SETLK, &fl)) != 0 && wait && errno == EINTR) {
  }
  if (rc != 0) {
    l.error = errno;
    ::close(fd);
    return l;
  }
  l.fd = fd;
  return l;
}

}  // namespace ddp
