#include "png_decode.h"

#include <png.h>

#include <csetjmp>
#include <cstdio>
#include <cstring>

#include "ddp/core/check.h"

namespace ddp::prep {

namespace {

// libpng's low-level API, not the simplified one: png_image_finish_read treats 16-bit samples as
// linear light (a grey ramp came out gamma-brightened), applies gAMA, and composites alpha onto
// black. PIL's convert('RGB'), which torchvision's ImageFolder uses, does none of that: it keeps the
// high byte of 16-bit samples and drops alpha, keeping the colours. We match it.
//
// libpng reports errors by longjmp. Everything that must survive one lives in ReadCtx (owned by the
// caller, outside the setjmp frame), and no C++ object with a destructor is created between the setjmp
// and the libpng calls, so the jump skips no destructor.
struct ReadCtx {
  const uint8_t* data = nullptr;
  size_t n = 0, pos = 0;
  std::jmp_buf jmp;
  char err[256] = {};
  png_structp png = nullptr;
  png_infop info = nullptr;
  png_uint_32 w = 0, h = 0;
  bool too_large = false;
};

void on_error(png_structp p, png_const_charp msg) {
  auto* c = static_cast<ReadCtx*>(png_get_error_ptr(p));
  if (c->err[0] == '\0') std::snprintf(c->err, sizeof c->err, "%s", msg);
  std::longjmp(c->jmp, 1);
}

// Warnings (a damaged ancillary chunk, an unknown profile) do not change the pixels PIL gives either.
void on_warning(png_structp, png_const_charp) {}

void on_read(png_structp p, png_bytep out, size_t len) {
  auto* c = static_cast<ReadCtx*>(png_get_io_ptr(p));
  if (len > c->n - c->pos) {
    std::snprintf(c->err, sizeof c->err, "the file is truncated (%zu bytes)", c->n);
    png_error(p, c->err);
  }
  std::memcpy(out, c->data + c->pos, len);
  c->pos += len;
}

// Reads the header; returns false (c.err set) on error. Sets c.too_large instead of reading on.
bool read_header(ReadCtx& c, int64_t max_pixels) {
  if (setjmp(c.jmp)) return false;
  png_set_read_fn(c.png, &c, on_read);
  png_read_info(c.png, c.info);
  c.w = png_get_image_width(c.png, c.info);
  c.h = png_get_image_height(c.png, c.info);
  if (max_pixels > 0 && static_cast<int64_t>(c.w) * c.h > max_pixels) {
    c.too_large = true;
    return true;
  }
  png_set_strip_16(c.png);  // the high byte, as PIL (not png_set_scale_16, which rounds)
  png_set_palette_to_rgb(c.png);
  png_set_expand_gray_1_2_4_to_8(c.png);  // 1/2/4-bit grey scaled to 0..255, as PIL's L mode
  png_set_gray_to_rgb(c.png);
  png_set_strip_alpha(c.png);  // also the alpha that palette/grey tRNS would expand to
  png_set_interlace_handling(c.png);
  png_read_update_info(c.png, c.info);
  if (png_get_rowbytes(c.png, c.info) != static_cast<size_t>(c.w) * 3) {
    std::snprintf(c.err, sizeof c.err, "unexpected layout after conversion to RGB (%zu bytes per row)",
                  static_cast<size_t>(png_get_rowbytes(c.png, c.info)));
    return false;
  }
  return true;
}

// Reads every pass of every row into px (w*h*3 bytes); returns false (c.err set) on error.
bool read_rows(ReadCtx& c, uint8_t* px) {
  if (setjmp(c.jmp)) return false;
  const int passes = png_set_interlace_handling(c.png);
  const size_t stride = static_cast<size_t>(c.w) * 3;
  for (int p = 0; p < passes; ++p)
    for (png_uint_32 y = 0; y < c.h; ++y) png_read_row(c.png, px + y * stride, nullptr);
  // Not png_read_end: chunks after the image data change nothing, and PIL accepts a file whose IEND is
  // missing; the last IDAT's CRC has been checked by now.
  return true;
}

}  // namespace

data::Rgb decode_png(const uint8_t* data, size_t n, const std::string& name, int64_t max_pixels) {
  ReadCtx c;
  c.data = data;
  c.n = n;
  c.png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &c, on_error, on_warning);
  DDP_CHECK(c.png, "cannot decode PNG '", name, "': out of memory");
  c.info = png_create_info_struct(c.png);
  if (!c.info) {
    png_destroy_read_struct(&c.png, nullptr, nullptr);
    DDP_FAIL("cannot decode PNG '", name, "': out of memory");
  }
  auto fail = [&](const std::string& msg) {
    png_destroy_read_struct(&c.png, &c.info, nullptr);
    DDP_FAIL("cannot decode PNG '", name, "': ", msg);
  };
  if (!read_header(c, max_pixels)) fail(c.err);
  if (c.too_large) {
    png_destroy_read_struct(&c.png, &c.info, nullptr);
    DDP_FAIL("'", name, "' is too large: ", c.w, "x", c.h, " pixels exceeds the limit of ", max_pixels,
             " (raise --max-pixels to accept it)");
  }
  data::Rgb out;
  out.w = static_cast<int>(c.w);
  out.h = static_cast<int>(c.h);
  out.px.resize(static_cast<size_t>(c.w) * c.h * 3);
  if (!read_rows(c, out.px.data())) fail(c.err);
  png_destroy_read_struct(&c.png, &c.info, nullptr);
  return out;
}

}  // namespace ddp::prep
