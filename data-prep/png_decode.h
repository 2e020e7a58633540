// PNG decoding for pack_imagenet (libpng's simplified API). ImageNet holds PNG files named .JPEG.
#pragma once

#include <cstdint>
#include <string>

#include "ddp/data/image.h"

namespace ddp::prep {
// Any PNG (palette, grey, 16-bit, alpha) to 8-bit RGB; alpha is dropped. Errors name `name`.
data::Rgb decode_png(const uint8_t* data, size_t n, const std::string& name, int64_t max_pixels);
}  // namespace ddp::prep
