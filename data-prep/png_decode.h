// PNG decoding for pack_imagenet (libpng's simplified API). ImageNet holds PNG files named .JPEG.
#pragma once

#include <cstdint>
#include <string>

#include "ddp/data/image.h"

namespace ddp::prep {
// Any PNG (palette, grey, 16-bit, alpha, interlaced) to 8-bit RGB with the pixels PIL's convert('RGB')
// gives (what torchvision trains on): 16-bit samples keep their high byte, alpha and tRNS are dropped
// (colours kept, not composited), gAMA/sRGB/iCCP are ignored. One exception: PIL clips 16-bit grey to
// 255 (mode I -> L); we keep its high byte as for 16-bit colour. Errors name `name`.
data::Rgb decode_png(const uint8_t* data, size_t n, const std::string& name, int64_t max_pixels);
}  // namespace ddp::prep
