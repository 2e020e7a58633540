#pragma once
#include <sstream>
#include <string>

namespace ddp {
template <class... A>
std::string str(const A&... a) {
  std::ostringstream os;
  (os << ... << a);
  return os.str();
}
}  // namespace ddp
