// JSON values as text, for the JSON lines the trainer writes and the RESULT lines of the benchmarks.
#pragma once

#include <string>

namespace ddp {

std::string json_number(double v);             // finite -> number, else null
std::string json_string(const std::string& s);  // quoted and escaped

}  // namespace ddp
