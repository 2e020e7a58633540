#include "png_decode.h"

#include <png.h>

#include <cstring>

#include "ddp/core/check.h"

namespace ddp::prep {

data::Rgb decode_png(const uint8_t* data, size_t n, const std::string& name, int64_t max_pixels) {
  png_image img;
  std::memset(&img, 0, sizeof img);
  img.version = PNG_IMAGE_VERSION;
  DDP_CHECK(png_image_begin_read_from_memory(&img, data, n) != 0, "cannot decode PNG '", name, "': ", img.message);
  if (max_pixels > 0 && static_cast<int64_t>(img.width) * img.height > max_pixels) {
    png_image_free(&img);
    DDP_FAIL("'", name, "' is too large: ", img.width, "x", img.height, " pixels exceeds the limit of ", max_pixels,
             " (raise --max-pixels to accept it)");
  }
  img.format = PNG_FORMAT_RGB;
  data::Rgb out;
  out.w = static_cast<int>(img.width);
  out.h = static_cast<int>(img.height);
  out.px.resize(PNG_IMAGE_SIZE(img));
  if (png_image_finish_read(&img, nullptr, out.px.data(), 0, nullptr) == 0) {
    std::string msg = img.message;
    png_image_free(&img);
    DDP_FAIL("cannot decode PNG '", name, "': ", msg);
  }
  return out;
}

}  // namespace ddp::prep
