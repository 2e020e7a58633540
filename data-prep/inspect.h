// Shard inspection shared by inspect_shards and pack_imagenet --verify.
#pragma once

#include <ostream>
#include <string>
#include <vector>

namespace ddp::prep {
// Prints each shard's attributes, counts and label histogram, checks that all share one class list,
// and (decode = true) decodes every image to the end. Returns false on any problem (all printed).
bool inspect(const std::vector<std::string>& files, bool decode, std::ostream& out, int show = 0);
}  // namespace ddp::prep
