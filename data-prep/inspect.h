// Shard inspection shared by inspect_shards and pack_imagenet --verify.
#pragma once

#include <ostream>
#include <string>
#include <vector>

namespace ddp::prep {
// Prints each shard's attributes, counts and label histogram, checks that all share one class list,
// and (decode = true) decodes every image to the end. Checks the set per split: one shard count,
// every index present (allow_incomplete: a missing index is only noted, for a node's own volume),
// no index twice, attributes matching each file name, no empty shard, and in a whole train set no
// class without images (allow_empty_classes: only a note; in an incomplete set always a note). A
// file listed twice is read once. Returns false on any problem (all printed).
bool inspect(const std::vector<std::string>& files, bool decode, std::ostream& out, int show = 0,
             bool allow_incomplete = false, bool allow_empty_classes = false);
}  // namespace ddp::prep
