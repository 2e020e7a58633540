#include "ddp/data/image.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <csetjmp>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

// jpeglib.h needs size_t and FILE declared first.
#include <jpeglib.h>
#include <jerror.h>

#include "ddp/core/check.h"

namespace ddp::data {

ImageFormat sniff_format(const uint8_t* p, size_t n) {
  if (n >= 3 && p[0] == 0xFF && p[1] == 0xD8 && p[2] == 0xFF) return ImageFormat::Jpeg;
  if (n >= 8 && std::memcmp(p, "\x89PNG\r\n\x1a\n", 8) == 0) return ImageFormat::Png;
  if (n >= 6 && (std::memcmp(p, "GIF87a", 6) == 0 || std::memcmp(p, "GIF89a", 6) == 0)) return ImageFormat::Gif;
  if (n >= 2 && p[0] == 'B' && p[1] == 'M') return ImageFormat::Bmp;
  if (n >= 12 && std::memcmp(p, "RIFF", 4) == 0 && std::memcmp(p + 8, "WEBP", 4) == 0) return ImageFormat::Webp;
  if (n >= 4 && (std::memcmp(p, "II*\0", 4) == 0 || std::memcmp(p, "MM\0*", 4) == 0)) return ImageFormat::Tiff;
  return ImageFormat::Unknown;
}

const char* format_name(ImageFormat f) {
  switch (f) {
    case ImageFormat::Jpeg: return "JPEG";
    case ImageFormat::Png: return "PNG";
    case ImageFormat::Gif: return "GIF";
    case ImageFormat::Bmp: return "BMP";
    case ImageFormat::Webp: return "WebP";
    case ImageFormat::Tiff: return "TIFF";
    default: return "unknown";
  }
}

namespace {

// libjpeg reports fatal errors through error_exit (we longjmp out) and damage it can paper over
// (a truncated file is padded with grey) only as warnings: those we count as fatal too, so a
// truncated image never trains silently as a half-grey picture.
struct ErrorMgr {
  jpeg_error_mgr pub;
  jmp_buf jb;
  char msg[JMSG_LENGTH_MAX] = {0};
  bool damaged = false;
  char damage[JMSG_LENGTH_MAX] = {0};
  int warnings = 0;
  char warning[JMSG_LENGTH_MAX] = {0};
};

void on_error_exit(j_common_ptr c) {
  auto* e = reinterpret_cast<ErrorMgr*>(c->err);
  (*c->err->format_message)(c, e->msg);
  longjmp(e->jb, 1);
}

void on_emit_message(j_common_ptr c, int level) {
  if (level >= 0) return;  // trace messages
  auto* e = reinterpret_cast<ErrorMgr*>(c->err);
  int code = c->err->msg_code;
  bool damage = code == JWRN_JPEG_EOF || code == JWRN_HIT_MARKER || code == JWRN_HUFF_BAD_CODE ||
                code == JWRN_MUST_RESYNC || code == JWRN_NOT_SEQUENTIAL;
  if (damage) {
    if (!e->damaged) (*c->err->format_message)(c, e->damage);
    e->damaged = true;
  } else {
    if (e->warnings == 0) (*c->err->format_message)(c, e->warning);
    ++e->warnings;
  }
}

struct Decompressor {
  jpeg_decompress_struct cinfo;
  ErrorMgr err;
  Decompressor() {
    cinfo.err = jpeg_std_error(&err.pub);
    err.pub.error_exit = on_error_exit;
    err.pub.emit_message = on_emit_message;
    jpeg_create_decompress(&cinfo);
  }
  ~Decompressor() { jpeg_destroy_decompress(&cinfo); }
};

// The coarsest DCT scale (1/8, 1/4, 1/2, 1) at which the box is still at least min_w x min_h.
int choose_denom(const Box& box, int min_w, int min_h) {
  if (min_w <= 0 && min_h <= 0) return 1;
  for (int dd : {8, 4, 2}) {
    if (box.w / dd >= static_cast<float>(min_w) && box.h / dd >= static_cast<float>(min_h) && box.w / dd >= 1 &&
        box.h / dd >= 1)
      return dd;
  }
  return 1;
}

// The pixels decoded for `box` in an ow x oh image at scale 1/denom: the box plus a margin of the
// resampling filter's reach, so that pixels just outside it weigh in as they do when the whole image
// is resized (torchvision's Resize + CenterCrop).
struct Window {
  int x0 = 0, x1 = 0, y0 = 0, y1 = 0;
};
Window decode_window(const Box& box, int denom, int min_w, int min_h, int ow, int oh) {
  const float s = 1.0f / static_cast<float>(denom);
  const float mx = (min_w > 0 ? std::max(1.0f, box.w * s / static_cast<float>(min_w)) : 1.0f) + 1.0f;
  const float my = (min_h > 0 ? std::max(1.0f, box.h * s / static_cast<float>(min_h)) : 1.0f) + 1.0f;
  Window w;
  w.x0 = std::clamp(static_cast<int>(std::floor(box.x * s - mx)), 0, ow - 1);
  w.x1 = std::clamp(static_cast<int>(std::ceil((box.x + box.w) * s + mx)), w.x0 + 1, ow);
  w.y0 = std::clamp(static_cast<int>(std::floor(box.y * s - my)), 0, oh - 1);
  w.y1 = std::clamp(static_cast<int>(std::ceil((box.y + box.h) * s + my)), w.y0 + 1, oh);
  return w;
}

// A baseline JPEG with one interleaved 3-component scan and restart markers at whole-row-aligned
// intervals (what encode_jpeg and jpeg_add_restarts write): every interval's entropy-coded bytes
// decode on their own (DC prediction restarts, bytes aligned), so the intervals covering a crop can
// be spliced into a smaller JPEG of the same blocks, and libjpeg decodes only those.
struct RestartLayout {
  int w = 0, h = 0, mcu_w = 0, mcu_h = 0, mcus_per_row = 0, mcu_rows = 0, interval = 0;
  size_t sof = 0, scan = 0;             // offsets of the SOF marker and of the first entropy-coded byte
  std::vector<uint32_t> begin, end;     // each interval's entropy-coded bytes (end: its RSTn or EOI)
};

// False (and the caller decodes the file as it is) for anything else, damaged files included.
bool parse_restart_layout(const uint8_t* p, size_t n, RestartLayout& L) {
  if (n < 4 || n >= (size_t{1} << 32) || p[0] != 0xFF || p[1] != 0xD8) return false;
  size_t pos = 2;
  int maxh = 0, maxv = 0;
  bool sof = false;
  L.interval = 0;
  for (;;) {
    if (pos + 4 > n || p[pos] != 0xFF) return false;
    const uint8_t m = p[pos + 1];
    if (m == 0xFF || m == 0x01 || (m >= 0xD0 && m <= 0xD9)) return false;  // fill or stray marker
    const size_t len = (static_cast<size_t>(p[pos + 2]) << 8) | p[pos + 3];
    if (len < 2 || pos + 2 + len > n) return false;
    const uint8_t* q = p + pos + 4;
    if (m == 0xC0 || m == 0xC1) {
      if (len != 8 + 3 * 3 || q[0] != 8 || q[5] != 3) return false;
      L.h = (q[1] << 8) | q[2];
      L.w = (q[3] << 8) | q[4];
      for (int c = 0; c < 3; ++c) {
        maxh = std::max(maxh, q[7 + 3 * c] >> 4);
        maxv = std::max(maxv, q[7 + 3 * c] & 15);
      }
      L.sof = pos;
      sof = true;
    } else if (m >= 0xC2 && m <= 0xCF && m != 0xC4 && m != 0xC8 && m != 0xCC) {
      return false;  // progressive, lossless, hierarchical or arithmetic-coded
    } else if (m == 0xDD) {
      if (len != 4) return false;
      L.interval = (q[0] << 8) | q[1];
    } else if (m == 0xDA) {
      if (!sof || q[0] != 3) return false;
      L.scan = pos + 2 + len;
      break;
    }
    pos += 2 + len;
  }
  if (L.interval <= 0 || L.w <= 0 || L.h <= 0 || maxh < 1 || maxv < 1 || maxh > 4 || maxv > 4) return false;
  L.mcu_w = 8 * maxh;
  L.mcu_h = 8 * maxv;
  L.mcus_per_row = (L.w + L.mcu_w - 1) / L.mcu_w;
  L.mcu_rows = (L.h + L.mcu_h - 1) / L.mcu_h;
  if (L.mcus_per_row % L.interval != 0) return false;
  const size_t total = static_cast<size_t>(L.mcus_per_row / L.interval) * static_cast<size_t>(L.mcu_rows);
  L.begin.assign(1, static_cast<uint32_t>(L.scan));
  L.end.clear();
  for (size_t i = L.scan;;) {
    const auto* f = static_cast<const uint8_t*>(std::memchr(p + i, 0xFF, n - i));
    if (!f || f + 1 >= p + n) return false;  // no EOI: truncated
    i = static_cast<size_t>(f - p);
    const uint8_t m = p[i + 1];
    if (m == 0x00) {  // stuffed 0xFF data byte
      i += 2;
      continue;
    }
    if (m == 0xD9) {
      L.end.push_back(static_cast<uint32_t>(i));
      break;
    }
    // Anything but the next RSTn in sequence (another scan, DNL, fill bytes): not spliceable.
    if (m != 0xD0 + (L.begin.size() - 1) % 8 || L.begin.size() >= total) return false;
    L.end.push_back(static_cast<uint32_t>(i));
    i += 2;
    L.begin.push_back(static_cast<uint32_t>(i));
  }
  return L.begin.size() == total;
}

// The JPEG made of interval columns c0..c1-1 of MCU rows r0..r1-1 (the header's SOF resized,
// restart markers renumbered) into out; returns its length.
size_t splice_restart_intervals(const uint8_t* p, const RestartLayout& L, int c0, int c1, int r0, int r1,
                                std::vector<uint8_t>& out) {
  const int per_row = L.mcus_per_row / L.interval;
  const int w = std::min(c1 * L.interval * L.mcu_w, L.w) - c0 * L.interval * L.mcu_w;
  const int h = std::min(r1 * L.mcu_h, L.h) - r0 * L.mcu_h;
  size_t len = L.scan + 2;
  for (int r = r0; r < r1; ++r)
    for (int c = c0; c < c1; ++c) {
      const size_t k = static_cast<size_t>(r) * per_row + c;
      len += L.end[k] - L.begin[k] + 2;
    }
  if (out.size() < len) out.resize(len);
  uint8_t* o = out.data();
  std::memcpy(o, p, L.scan);
  o[L.sof + 5] = static_cast<uint8_t>(h >> 8);
  o[L.sof + 6] = static_cast<uint8_t>(h);
  o[L.sof + 7] = static_cast<uint8_t>(w >> 8);
  o[L.sof + 8] = static_cast<uint8_t>(w);
  size_t at = L.scan;
  int marker = 0;
  for (int r = r0; r < r1; ++r)
    for (int c = c0; c < c1; ++c) {
      const size_t k = static_cast<size_t>(r) * per_row + c;
      if (marker > 0 || r > r0 || c > c0) {
        o[at++] = 0xFF;
        o[at++] = static_cast<uint8_t>(0xD0 + (marker++ % 8));
      }
      std::memcpy(o + at, p + L.begin[k], L.end[k] - L.begin[k]);
      at += L.end[k] - L.begin[k];
    }
  o[at++] = 0xFF;
  o[at++] = 0xD9;
  return at;
}

// The body of decode_jpeg that may longjmp: it modifies only objects reached through pointers.
// Returns false after a libjpeg error (message in d->err.msg).
bool decode_impl(Decompressor* d, const uint8_t* data, size_t n, const Box* want, int min_w, int min_h,
                 int64_t max_pixels, bool full_check, Decoded* out, std::vector<uint8_t>* row, bool* too_big) {
  jpeg_decompress_struct* ci = &d->cinfo;
  if (setjmp(d->err.jb)) return false;
  jpeg_mem_src(ci, data, static_cast<unsigned long>(n));
  jpeg_read_header(ci, TRUE);
  const int W = static_cast<int>(ci->image_width), H = static_cast<int>(ci->image_height);
  if (max_pixels > 0 && static_cast<int64_t>(W) * H > max_pixels) {
    *too_big = true;
    out->img.w = W;
    out->img.h = H;
    jpeg_abort_decompress(ci);
    return true;
  }
  Box box = *want;
  if (box.w <= 0 || box.h <= 0) box = Box{0, 0, static_cast<float>(W), static_cast<float>(H)};
  const bool cmyk = ci->jpeg_color_space == JCS_CMYK || ci->jpeg_color_space == JCS_YCCK;
  ci->out_color_space = cmyk ? JCS_CMYK : JCS_RGB;
  const int denom = choose_denom(box, min_w, min_h);
  ci->scale_num = 1;
  ci->scale_denom = static_cast<unsigned>(denom);
  jpeg_start_decompress(ci);
  const float s = 1.0f / static_cast<float>(denom);
  const int ow = static_cast<int>(ci->output_width), oh = static_cast<int>(ci->output_height);
  const Window win = decode_window(box, denom, min_w, min_h, ow, oh);
  const int x0 = win.x0, x1 = win.x1, y0 = win.y0, y1 = win.y1;
  JDIMENSION xoff = static_cast<JDIMENSION>(x0), cw = static_cast<JDIMENSION>(x1 - x0);
  if (x0 > 0 || x1 < ow) jpeg_crop_scanline(ci, &xoff, &cw);  // widens to iMCU boundaries
  const int comps = static_cast<int>(ci->output_components);
  row->resize(static_cast<size_t>(cw) * static_cast<size_t>(comps));
  out->img.w = static_cast<int>(cw);
  out->img.h = y1 - y0;
  // Grown only: a reused buffer is not refilled with zeros for every image.
  const size_t need = static_cast<size_t>(out->img.w) * static_cast<size_t>(out->img.h) * 3;
  if (out->img.px.size() < need) out->img.px.resize(need);
  if (y0 > 0) jpeg_skip_scanlines(ci, static_cast<JDIMENSION>(y0));
  const bool inverted = ci->saw_Adobe_marker;  // Adobe CMYK stores inverted ink values
  if (!cmyk) {
    // As many rows per call as libjpeg will give.
    thread_local std::vector<JSAMPROW> rows;
    rows.resize(static_cast<size_t>(out->img.h));
    for (int y = 0; y < out->img.h; ++y)
      rows[static_cast<size_t>(y)] = out->img.px.data() + static_cast<size_t>(y) * cw * 3;
    for (int y = 0; y < out->img.h;) {
      const JDIMENSION got =
          jpeg_read_scanlines(ci, rows.data() + y, static_cast<JDIMENSION>(out->img.h - y));
      if (got == 0) ERREXIT(ci, JERR_INPUT_EMPTY);  // cannot happen with a memory source
      y += static_cast<int>(got);
    }
  }
  for (int y = 0; cmyk && y < out->img.h; ++y) {
    JSAMPROW rp = row->data();
    jpeg_read_scanlines(ci, &rp, 1);
    {
      uint8_t* o = out->img.px.data() + static_cast<size_t>(y) * cw * 3;
      const uint8_t* r = row->data();
      for (JDIMENSION x = 0; x < cw; ++x, r += 4, o += 3) {
        int c = r[0], m = r[1], yy = r[2], k = r[3];
        if (!inverted) { c = 255 - c; m = 255 - m; yy = 255 - yy; k = 255 - k; }
        // inverted values are (1-ink): RGB = (1-C)(1-K)
        o[0] = static_cast<uint8_t>((c * k + 127) / 255);
        o[1] = static_cast<uint8_t>((m * k + 127) / 255);
        o[2] = static_cast<uint8_t>((yy * k + 127) / 255);
      }
    }
  }
  if (full_check) {
    if (y1 < oh) jpeg_skip_scanlines(ci, static_cast<JDIMENSION>(oh - y1));
    jpeg_finish_decompress(ci);
  } else {
    jpeg_abort_decompress(ci);
  }
  out->scale_denom = denom;
  out->box = Box{box.x * s - static_cast<float>(xoff), box.y * s - static_cast<float>(y0), box.w * s, box.h * s};
  return true;
}

}  // namespace

JpegHeader read_jpeg_header(const uint8_t* data, size_t n, const std::string& name) {
  DDP_CHECK(n > 0, "'", name, "' is empty (0 bytes)");
  auto d = std::make_unique<Decompressor>();
  JpegHeader h;
  jpeg_decompress_struct* ci = &d->cinfo;
  if (setjmp(d->err.jb)) DDP_FAIL("'", name, "' is not a readable JPEG: ", d->err.msg);
  jpeg_mem_src(ci, data, static_cast<unsigned long>(n));
  jpeg_read_header(ci, TRUE);
  h.w = static_cast<int>(ci->image_width);
  h.h = static_cast<int>(ci->image_height);
  h.components = ci->num_components;
  h.cmyk = ci->jpeg_color_space == JCS_CMYK || ci->jpeg_color_space == JCS_YCCK;
  h.grayscale = ci->jpeg_color_space == JCS_GRAYSCALE;
  h.ycbcr = ci->jpeg_color_space == JCS_YCbCr;
  h.progressive = ci->progressive_mode;
  return h;
}

void decode_jpeg(const uint8_t* data, size_t n, const std::string& name, Box box, int min_w, int min_h,
                 int64_t max_pixels, bool full_check, Decoded& out) {
  DDP_CHECK(n > 0, "'", name, "' is empty (0 bytes)");
  thread_local Decompressor d;
  thread_local std::vector<uint8_t> row, spliced;
  thread_local RestartLayout layout;
  d.err.msg[0] = d.err.damage[0] = d.err.warning[0] = 0;
  d.err.damaged = false;
  d.err.warnings = 0;
  const uint8_t* src = data;
  size_t len = n;
  // A crop of a file with restart markers: decode only the intervals that cover the decoded window
  // plus 2 pixels (at the decode scale) of context for the chroma upsampling, so the pixels equal
  // those of decoding the whole file.
  if (!full_check && box.w > 0 && box.h > 0 && parse_restart_layout(data, n, layout) &&
      (max_pixels <= 0 || static_cast<int64_t>(layout.w) * layout.h <= max_pixels)) {
    const RestartLayout& L = layout;
    const int denom = choose_denom(box, min_w, min_h);
    const Window win = decode_window(box, denom, min_w, min_h, (L.w + denom - 1) / denom, (L.h + denom - 1) / denom);
    const int iw = L.interval * L.mcu_w;
    const int x0 = std::max(0, (win.x0 - 2) * denom), x1 = std::min(L.w, (win.x1 + 2) * denom);
    const int y0 = std::max(0, (win.y0 - 2) * denom), y1 = std::min(L.h, (win.y1 + 2) * denom);
    const int c0 = x0 / iw, c1 = std::min(L.mcus_per_row / L.interval, (x1 + iw - 1) / iw);
    const int r0 = y0 / L.mcu_h, r1 = std::min(L.mcu_rows, (y1 + L.mcu_h - 1) / L.mcu_h);
    len = splice_restart_intervals(data, L, c0, c1, r0, r1, spliced);
    src = spliced.data();
    box.x -= static_cast<float>(c0 * iw);
    box.y -= static_cast<float>(r0 * L.mcu_h);
  }
  bool too_big = false;
  const bool ok = decode_impl(&d, src, len, &box, min_w, min_h, max_pixels, full_check, &out, &row, &too_big);
  if (!ok) {
    jpeg_abort_decompress(&d.cinfo);  // ready for the next image
    DDP_FAIL("cannot decode JPEG '", name, "': ", d.err.msg);
  }
  DDP_CHECK(!too_big, "'", name, "' is too large: ", out.img.w, "x", out.img.h, " pixels exceeds the limit of ",
            max_pixels, " (raise --max-pixels to accept it)");
  DDP_CHECK(!d.err.damaged, "JPEG '", name, "' is damaged: ", d.err.damage);
  out.warnings = d.err.warnings;
  out.warning = d.err.warning;
}

Decoded decode_jpeg(const uint8_t* data, size_t n, const std::string& name, Box box, int min_w, int min_h,
                    int64_t max_pixels, bool full_check) {
  Decoded out;
  decode_jpeg(data, n, name, box, min_w, min_h, max_pixels, full_check, out);
  out.img.px.resize(static_cast<size_t>(out.img.w) * static_cast<size_t>(out.img.h) * 3);
  return out;
}

namespace {
struct Compressor {
  jpeg_compress_struct cinfo;
  ErrorMgr err;
  Compressor() {
    cinfo.err = jpeg_std_error(&err.pub);
    err.pub.error_exit = on_error_exit;
    err.pub.emit_message = on_emit_message;
    jpeg_create_compress(&cinfo);
  }
  ~Compressor() { jpeg_destroy_compress(&cinfo); }
};

// jpeg_mem_dest's buffer (malloc'ed by libjpeg, also when an error cuts the encode short).
struct MemDest {
  unsigned char* buf = nullptr;
  unsigned long size = 0;
  ~MemDest() { std::free(buf); }
  std::vector<uint8_t> bytes() const { return std::vector<uint8_t>(buf, buf + size); }
};

bool encode_impl(Compressor* c, const uint8_t* rgb, int w, int h, int quality, bool restarts, MemDest* dest) {
  jpeg_compress_struct* ci = &c->cinfo;
  if (setjmp(c->err.jb)) return false;
  jpeg_mem_dest(ci, &dest->buf, &dest->size);
  ci->image_width = static_cast<JDIMENSION>(w);
  ci->image_height = static_cast<JDIMENSION>(h);
  ci->input_components = 3;
  ci->in_color_space = JCS_RGB;
  jpeg_set_defaults(ci);  // YCbCr 4:2:0, Huffman tables of the standard
  jpeg_set_quality(ci, quality, TRUE);
  ci->dct_method = JDCT_ISLOW;
  ci->restart_interval = restarts ? 1 : 0;
  jpeg_start_compress(ci, TRUE);
  while (ci->next_scanline < ci->image_height) {
    JSAMPROW r = const_cast<uint8_t*>(rgb) + static_cast<size_t>(ci->next_scanline) * static_cast<size_t>(w) * 3;
    jpeg_write_scanlines(ci, &r, 1);
  }
  jpeg_finish_compress(ci);
  return true;
}

// The compressor reports through the decompressor's error manager, so one setjmp covers both.
bool transcode_impl(Decompressor* d, Compressor* c, const uint8_t* data, size_t n, MemDest* dest) {
  if (setjmp(d->err.jb)) return false;
  jpeg_mem_src(&d->cinfo, data, static_cast<unsigned long>(n));
  jpeg_read_header(&d->cinfo, TRUE);
  jvirt_barray_ptr* coefs = jpeg_read_coefficients(&d->cinfo);
  jpeg_copy_critical_parameters(&d->cinfo, &c->cinfo);
  c->cinfo.restart_interval = 1;
  // Standard tables: optimised ones are 5% smaller and decode 2% faster, but double the cost of
  // packing (a second pass over the coefficients).
  c->cinfo.optimize_coding = FALSE;
  jpeg_mem_dest(&c->cinfo, &dest->buf, &dest->size);
  jpeg_write_coefficients(&c->cinfo, coefs);
  jpeg_finish_compress(&c->cinfo);
  jpeg_finish_decompress(&d->cinfo);
  return true;
}
}  // namespace

std::vector<uint8_t> encode_jpeg(const uint8_t* rgb, int w, int h, int quality, bool restarts) {
  DDP_CHECK(quality >= 1 && quality <= 100, "JPEG quality must be in 1..100, got ", quality);
  DDP_CHECK(w > 0 && h > 0, "JPEG encoding: empty image (", w, "x", h, ")");
  Compressor c;
  MemDest dest;
  if (!encode_impl(&c, rgb, w, h, quality, restarts, &dest))
    DDP_FAIL("JPEG encoding failed (", w, "x", h, "): ", c.err.msg);
  return dest.bytes();
}

std::vector<uint8_t> jpeg_add_restarts(const uint8_t* data, size_t n, const std::string& name, std::string* warning) {
  DDP_CHECK(n > 0, "'", name, "' is empty (0 bytes)");
  Decompressor d;
  Compressor c;
  c.cinfo.err = &d.err.pub;
  MemDest dest;
  if (!transcode_impl(&d, &c, data, n, &dest)) DDP_FAIL("cannot read JPEG '", name, "': ", d.err.msg);
  DDP_CHECK(!d.err.damaged, "JPEG '", name, "' is damaged: ", d.err.damage);
  if (warning) *warning = d.err.warnings > 0 ? std::string(d.err.warning) : std::string();
  return dest.bytes();
}

namespace {
// Weights in fixed point, as PIL does for 8-bit images: scaled by 2^14, accumulated in int32 from
// kHalf (rounding), shifted back and clipped to 0..255.
constexpr int kBits = 14;
constexpr int32_t kHalf = 1 << (kBits - 1);

// PIL's precompute_coeffs for the bilinear (triangle) filter: for each output index, the first
// input index and normalised weights. Support grows with the shrink factor (antialiasing).
struct Coeffs {
  int taps = 0;
  std::vector<int> first, count;  // per output: first input index, number of non-zero taps
  std::vector<int16_t> w;         // out x taps, fixed point (<= 2^14, so int16 holds them)
};

void coeffs(int in_size, float in0, float in1, int out_size, Coeffs& c) {
  const double scale = (static_cast<double>(in1) - in0) / out_size;
  const double filterscale = std::max(scale, 1.0);
  const double support = 1.0 * filterscale;
  c.taps = static_cast<int>(std::ceil(support)) * 2 + 1;
  c.first.resize(static_cast<size_t>(out_size));
  c.count.resize(static_cast<size_t>(out_size));
  c.w.assign(static_cast<size_t>(out_size) * c.taps, 0);
  const double ss = 1.0 / filterscale;
  thread_local std::vector<float> wf;
  wf.resize(static_cast<size_t>(c.taps));
  for (int xx = 0; xx < out_size; ++xx) {
    const double center = in0 + (xx + 0.5) * scale;
    int xmin = std::max(static_cast<int>(center - support + 0.5), 0);
    int xmax = std::min(static_cast<int>(center + support + 0.5), in_size) - xmin;
    xmax = std::clamp(xmax, 1, c.taps);
    if (xmin > in_size - 1) xmin = in_size - 1;
    if (xmin + xmax > in_size) xmax = in_size - xmin;
    double total = 0;
    for (int x = 0; x < xmax; ++x) {
      double t = std::fabs((x + xmin - center + 0.5) * ss);
      double v = t < 1.0 ? 1.0 - t : 0.0;
      wf[static_cast<size_t>(x)] = static_cast<float>(v);
      total += v;
    }
    int16_t* w = &c.w[static_cast<size_t>(xx) * c.taps];
    if (total <= 0) {  // degenerate (box narrower than a pixel): nearest neighbour
      w[0] = 1 << kBits;
    } else {
      for (int x = 0; x < xmax; ++x) {
        const float f = static_cast<float>(wf[static_cast<size_t>(x)] / total);
        w[x] = static_cast<int16_t>(std::lround(f * (1 << kBits)));
      }
    }
    c.first[static_cast<size_t>(xx)] = xmin;
    c.count[static_cast<size_t>(xx)] = xmax;
  }
}

// The two building blocks of the resampler, each in a portable and an AVX2 version (picked at run
// time) that compute the same integers.
//
// filter_rows: out row j (j < c.first.size()) = clip((kHalf + sum_k w[j][k] * in row (first[j]+k-base))
// >> kBits), over `bytes` bytes of each row. Both passes use it: the vertical one on image rows, the
// horizontal one on transposed rows (so that it, too, runs over long contiguous vectors).
void filter_rows_portable(const uint8_t* in, size_t in_stride, int base, const Coeffs& c, int bytes, uint8_t* out,
                          size_t out_stride) {
  thread_local std::vector<int32_t> acc;
  acc.resize(static_cast<size_t>(bytes));
  const int n_out = static_cast<int>(c.first.size());
  for (int j = 0; j < n_out; ++j) {
    const int f = c.first[static_cast<size_t>(j)] - base;
    const int n = c.count[static_cast<size_t>(j)];
    const int16_t* w = &c.w[static_cast<size_t>(j) * c.taps];
    int32_t* a = acc.data();
    for (int i = 0; i < bytes; ++i) a[i] = kHalf;
    for (int k = 0; k < n; ++k) {
      const uint8_t* t = in + static_cast<size_t>(f + k) * in_stride;
      const int32_t wk = w[k];
      for (int i = 0; i < bytes; ++i) a[i] += wk * t[i];
    }
    uint8_t* o = out + static_cast<size_t>(j) * out_stride;
    for (int i = 0; i < bytes; ++i) o[i] = static_cast<uint8_t>(std::clamp(a[i] >> kBits, 0, 255));
  }
}

// transpose3: dst row c, pixel r' = src row r, pixel c, for 3-byte pixels (rows x cols of src);
// r' = rows-1-r when reverse (a horizontal flip of dst).
void transpose3_portable(const uint8_t* src, size_t src_stride, int rows, int cols, uint8_t* dst, size_t dst_stride,
                         bool reverse) {
  for (int c = 0; c < cols; ++c) {
    uint8_t* d = dst + static_cast<size_t>(c) * dst_stride;
    for (int r = 0; r < rows; ++r) {
      const uint8_t* s = src + static_cast<size_t>(r) * src_stride + static_cast<size_t>(c) * 3;
      std::memcpy(d + static_cast<size_t>(reverse ? rows - 1 - r : r) * 3, s, 3);
    }
  }
}

#if defined(__x86_64__) && defined(__GNUC__)
#define DDP_RESAMPLE_AVX2 1
// Pairs of taps go through one pmaddwd: the bytes of two input rows are interleaved and widened to
// int16 (x0 y0 x1 y1 ...) and multiplied by (w_k, w_k+1) into int32 sums, as Pillow-SIMD does. The
// unpacks and packs work within 128-bit lanes and undo each other, so bytes come out in order.
__attribute__((target("avx2"))) void filter_rows_avx2(const uint8_t* in, size_t in_stride, int base,
                                                      const Coeffs& c, int bytes, uint8_t* out, size_t out_stride) {
  thread_local std::vector<int32_t> pairs;
  pairs.resize(static_cast<size_t>(c.taps) / 2 + 1);
  const int n_out = static_cast<int>(c.first.size());
  const __m256i half = _mm256_set1_epi32(kHalf), zero = _mm256_setzero_si256();
  const __m128i half4 = _mm_set1_epi32(kHalf), zero4 = _mm_setzero_si128();
  for (int j = 0; j < n_out; ++j) {
    const uint8_t* r0 = in + static_cast<size_t>(c.first[static_cast<size_t>(j)] - base) * in_stride;
    const int n = c.count[static_cast<size_t>(j)];
    const int16_t* w = &c.w[static_cast<size_t>(j) * c.taps];
    const int np = (n + 1) / 2;
    for (int p = 0; p < np; ++p) {
      const uint32_t lo = static_cast<uint16_t>(w[2 * p]);
      const uint32_t hi = 2 * p + 1 < n ? static_cast<uint16_t>(w[2 * p + 1]) : 0u;
      pairs[static_cast<size_t>(p)] = static_cast<int32_t>(lo | (hi << 16));
    }
    uint8_t* o = out + static_cast<size_t>(j) * out_stride;
    int i = 0;
    for (; i + 32 <= bytes; i += 32) {
      __m256i a0 = half, a1 = half, a2 = half, a3 = half;
      for (int p = 0; p < np; ++p) {
        const uint8_t* t = r0 + static_cast<size_t>(2 * p) * in_stride + i;
        const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(t));
        const __m256i y = 2 * p + 1 < n ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(t + in_stride)) : zero;
        const __m256i wp = _mm256_set1_epi32(pairs[static_cast<size_t>(p)]);
        const __m256i lo = _mm256_unpacklo_epi8(x, y), hi = _mm256_unpackhi_epi8(x, y);
        a0 = _mm256_add_epi32(a0, _mm256_madd_epi16(_mm256_unpacklo_epi8(lo, zero), wp));
        a1 = _mm256_add_epi32(a1, _mm256_madd_epi16(_mm256_unpackhi_epi8(lo, zero), wp));
        a2 = _mm256_add_epi32(a2, _mm256_madd_epi16(_mm256_unpacklo_epi8(hi, zero), wp));
        a3 = _mm256_add_epi32(a3, _mm256_madd_epi16(_mm256_unpackhi_epi8(hi, zero), wp));
      }
      const __m256i p01 = _mm256_packs_epi32(_mm256_srai_epi32(a0, kBits), _mm256_srai_epi32(a1, kBits));
      const __m256i p23 = _mm256_packs_epi32(_mm256_srai_epi32(a2, kBits), _mm256_srai_epi32(a3, kBits));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(o + i), _mm256_packus_epi16(p01, p23));
    }
    for (; i + 16 <= bytes; i += 16) {
      __m128i a0 = half4, a1 = half4, a2 = half4, a3 = half4;
      for (int p = 0; p < np; ++p) {
        const uint8_t* t = r0 + static_cast<size_t>(2 * p) * in_stride + i;
        const __m128i x = _mm_loadu_si128(reinterpret_cast<const __m128i*>(t));
        const __m128i y = 2 * p + 1 < n ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(t + in_stride)) : zero4;
        const __m128i wp = _mm_set1_epi32(pairs[static_cast<size_t>(p)]);
        const __m128i lo = _mm_unpacklo_epi8(x, y), hi = _mm_unpackhi_epi8(x, y);
        a0 = _mm_add_epi32(a0, _mm_madd_epi16(_mm_unpacklo_epi8(lo, zero4), wp));
        a1 = _mm_add_epi32(a1, _mm_madd_epi16(_mm_unpackhi_epi8(lo, zero4), wp));
        a2 = _mm_add_epi32(a2, _mm_madd_epi16(_mm_unpacklo_epi8(hi, zero4), wp));
        a3 = _mm_add_epi32(a3, _mm_madd_epi16(_mm_unpackhi_epi8(hi, zero4), wp));
      }
      const __m128i p01 = _mm_packs_epi32(_mm_srai_epi32(a0, kBits), _mm_srai_epi32(a1, kBits));
      const __m128i p23 = _mm_packs_epi32(_mm_srai_epi32(a2, kBits), _mm_srai_epi32(a3, kBits));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(o + i), _mm_packus_epi16(p01, p23));
    }
    for (; i < bytes; ++i) {
      int32_t a = kHalf;
      for (int k = 0; k < n; ++k) a += w[k] * r0[static_cast<size_t>(k) * in_stride + i];
      o[i] = static_cast<uint8_t>(std::clamp(a >> kBits, 0, 255));
    }
  }
}

// 4x4 blocks of pixels: each row's 12 bytes widened to 4 dwords (pshufb), a 4x4 dword transpose,
// narrowed back to 12 bytes (reversed when asked) and stored exactly (8 + 4 bytes). The 16-byte
// loads read 4 bytes past a block's pixels, which stay inside src except on its last row: that row
// is done by the portable loop.
__attribute__((target("avx2"))) void transpose3_avx2(const uint8_t* src, size_t src_stride, int rows, int cols,
                                                     uint8_t* dst, size_t dst_stride, bool reverse) {
  const __m128i widen = _mm_setr_epi8(0, 1, 2, -1, 3, 4, 5, -1, 6, 7, 8, -1, 9, 10, 11, -1);
  const __m128i narrow = reverse ? _mm_setr_epi8(12, 13, 14, 8, 9, 10, 4, 5, 6, 0, 1, 2, -1, -1, -1, -1)
                                 : _mm_setr_epi8(0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14, -1, -1, -1, -1);
  const int rb = std::max(0, (rows - 1) / 4 * 4);  // rows done in blocks (never the last one)
  const int cb = cols / 4 * 4;
  for (int r = 0; r < rb; r += 4) {
    const uint8_t* s = src + static_cast<size_t>(r) * src_stride;
    const size_t dr = static_cast<size_t>(reverse ? rows - 4 - r : r) * 3;
    for (int c = 0; c < cb; c += 4) {
      const uint8_t* sc = s + static_cast<size_t>(c) * 3;
      const __m128i v0 = _mm_shuffle_epi8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sc)), widen);
      const __m128i v1 = _mm_shuffle_epi8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sc + src_stride)), widen);
      const __m128i v2 =
          _mm_shuffle_epi8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sc + 2 * src_stride)), widen);
      const __m128i v3 =
          _mm_shuffle_epi8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sc + 3 * src_stride)), widen);
      const __m128i t0 = _mm_unpacklo_epi32(v0, v1), t1 = _mm_unpacklo_epi32(v2, v3);
      const __m128i t2 = _mm_unpackhi_epi32(v0, v1), t3 = _mm_unpackhi_epi32(v2, v3);
      const __m128i col[4] = {_mm_unpacklo_epi64(t0, t1), _mm_unpackhi_epi64(t0, t1), _mm_unpacklo_epi64(t2, t3),
                              _mm_unpackhi_epi64(t2, t3)};
      for (int k = 0; k < 4; ++k) {
        const __m128i b = _mm_shuffle_epi8(col[k], narrow);
        uint8_t* d = dst + static_cast<size_t>(c + k) * dst_stride + dr;
        _mm_storel_epi64(reinterpret_cast<__m128i*>(d), b);
        const int32_t tail = _mm_extract_epi32(b, 2);
        std::memcpy(d + 8, &tail, 4);
      }
    }
    // Columns past the last whole block.
    for (int c = cb; c < cols; ++c)
      for (int k = 0; k < 4; ++k)
        std::memcpy(
            dst + static_cast<size_t>(c) * dst_stride + static_cast<size_t>(reverse ? rows - 1 - r - k : r + k) * 3,
            s + static_cast<size_t>(k) * src_stride + static_cast<size_t>(c) * 3, 3);
  }
  // Rows past the last whole block (the last row always among them).
  for (int c = 0; c < cols; ++c) {
    uint8_t* d = dst + static_cast<size_t>(c) * dst_stride;
    for (int r = rb; r < rows; ++r)
      std::memcpy(d + static_cast<size_t>(reverse ? rows - 1 - r : r) * 3,
                  src + static_cast<size_t>(r) * src_stride + static_cast<size_t>(c) * 3, 3);
  }
}
#endif

struct Kernels {
  void (*filter_rows)(const uint8_t*, size_t, int, const Coeffs&, int, uint8_t*, size_t) = filter_rows_portable;
  void (*transpose3)(const uint8_t*, size_t, int, int, uint8_t*, size_t, bool) = transpose3_portable;
};
bool cpu_has_avx2() {
#ifdef DDP_RESAMPLE_AVX2
  return __builtin_cpu_supports("avx2");
#else
  return false;
#endif
}
std::atomic<bool> g_simd{cpu_has_avx2()};
Kernels kernels() {
  Kernels k;
#ifdef DDP_RESAMPLE_AVX2
  if (g_simd.load(std::memory_order_relaxed)) {
    k.filter_rows = filter_rows_avx2;
    k.transpose3 = transpose3_avx2;
  }
#endif
  return k;
}

}  // namespace

bool set_resample_simd(bool enable) {
  g_simd.store(enable && cpu_has_avx2());
  return g_simd.load();
}

void resample(const uint8_t* src, int sw, int sh, Box box, uint8_t* dst, int dw, int dh, bool flip) {
  DDP_CHECK(sw > 0 && sh > 0 && dw > 0 && dh > 0, "resample: empty image (", sw, "x", sh, " -> ", dw, "x", dh, ")");
  DDP_CHECK(box.w > 0 && box.h > 0, "resample: empty box");
  // Exact copy when the box is the identity (raw shards at the training size).
  if (box.x == std::floor(box.x) && box.y == std::floor(box.y) && box.w == static_cast<float>(dw) &&
      box.h == static_cast<float>(dh) && box.x >= 0 && box.y >= 0 && box.x + box.w <= static_cast<float>(sw) &&
      box.y + box.h <= static_cast<float>(sh)) {
    const int bx = static_cast<int>(box.x), by = static_cast<int>(box.y);
    for (int y = 0; y < dh; ++y) {
      const uint8_t* s = src + (static_cast<size_t>(by + y) * sw + bx) * 3;
      uint8_t* d = dst + static_cast<size_t>(y) * dw * 3;
      if (!flip) {
        std::memcpy(d, s, static_cast<size_t>(dw) * 3);
      } else {
        for (int x = 0; x < dw; ++x) std::memcpy(d + (dw - 1 - x) * 3, s + x * 3, 3);
      }
    }
    return;
  }
  const Kernels kn = kernels();
  thread_local Coeffs cx, cy;
  coeffs(sw, box.x, box.x + box.w, dw, cx);
  coeffs(sh, box.y, box.y + box.h, dh, cy);
  // Rows and columns of the source the filters touch.
  int ylo = sh, yhi = 0;
  for (int y = 0; y < dh; ++y) {
    ylo = std::min(ylo, cy.first[static_cast<size_t>(y)]);
    yhi = std::max(yhi, cy.first[static_cast<size_t>(y)] + cy.count[static_cast<size_t>(y)]);
  }
  int xlo = sw, xhi = 0;
  for (int x = 0; x < dw; ++x) {
    xlo = std::min(xlo, cx.first[static_cast<size_t>(x)]);
    xhi = std::max(xhi, cx.first[static_cast<size_t>(x)] + cx.count[static_cast<size_t>(x)]);
  }
  const int rows = yhi - ylo, m = dw * 3, mc = (xhi - xlo) * 3;
  // Horizontal pass over R rows of pixels xlo..xhi-1 (row stride in_stride bytes) into R rows of dw
  // pixels (stride out_stride), mirrored when asked: transpose, filter the transposed rows, transpose
  // back. Transposed rows are padded so the 16-byte loads of the transposes stay inside the buffers.
  thread_local std::vector<uint8_t> tin, tout, mid;
  auto hpass = [&](const uint8_t* in, size_t in_stride, int R, uint8_t* out, size_t out_stride, bool mirror) {
    const int C = xhi - xlo;
    const size_t ts = static_cast<size_t>(R) * 3 + 16;
    tin.resize(static_cast<size_t>(C) * ts);
    tout.resize(static_cast<size_t>(dw) * ts);
    kn.transpose3(in, in_stride, R, C, tin.data(), ts, false);
    kn.filter_rows(tin.data(), ts, xlo, cx, R * 3, tout.data(), ts);
    kn.transpose3(tout.data(), ts, dw, R, out, out_stride, mirror);
  };
  if (dh < rows) {
    // Shrinking vertically: the vertical pass first leaves fewer rows for the horizontal one. Same
    // filters; only the intermediate rounding differs from PIL's order.
    mid.resize(static_cast<size_t>(dh) * mc);
    kn.filter_rows(src + static_cast<size_t>(xlo) * 3, static_cast<size_t>(sw) * 3, 0, cy, mc, mid.data(), mc);
    hpass(mid.data(), mc, dh, dst, m, flip);
  } else {
    // The flip is horizontal, so it commutes with the vertical pass and is done by the first.
    mid.resize(static_cast<size_t>(rows) * m);
    hpass(src + (static_cast<size_t>(ylo) * sw + xlo) * 3, static_cast<size_t>(sw) * 3, rows, mid.data(), m, flip);
    kn.filter_rows(mid.data(), m, ylo, cy, m, dst, m);
  }
}

Box random_resized_crop(Rng& rng, int W, int H, float min_scale, float max_scale, float min_ratio, float max_ratio) {
  const double area = static_cast<double>(W) * H;
  const double lr0 = std::log(min_ratio), lr1 = std::log(max_ratio);
  for (int attempt = 0; attempt < 10; ++attempt) {
    const double target = area * rng.uniform(min_scale, max_scale);
    const double aspect = std::exp(rng.uniform(static_cast<float>(lr0), static_cast<float>(lr1)));
    const int w = static_cast<int>(std::lround(std::sqrt(target * aspect)));
    const int h = static_cast<int>(std::lround(std::sqrt(target / aspect)));
    if (w > 0 && w <= W && h > 0 && h <= H) {
      const int y = static_cast<int>(rng.below(static_cast<uint32_t>(H - h + 1)));
      const int x = static_cast<int>(rng.below(static_cast<uint32_t>(W - w + 1)));
      return Box{static_cast<float>(x), static_cast<float>(y), static_cast<float>(w), static_cast<float>(h)};
    }
  }
  // Fallback to a central crop, clamping the aspect ratio (torchvision does the same).
  const double in_ratio = static_cast<double>(W) / H;
  int w = W, h = H;
  if (in_ratio < min_ratio) {
    h = static_cast<int>(std::lround(w / static_cast<double>(min_ratio)));
  } else if (in_ratio > max_ratio) {
    w = static_cast<int>(std::lround(h * static_cast<double>(max_ratio)));
  }
  h = std::clamp(h, 1, H);
  w = std::clamp(w, 1, W);
  return Box{static_cast<float>((W - w) / 2), static_cast<float>((H - h) / 2), static_cast<float>(w),
             static_cast<float>(h)};
}

Box center_crop_box(int W, int H, int out_w, int out_h, float ratio) {
  DDP_CHECK(ratio > 0 && ratio <= 1, "eval crop ratio must be in (0, 1], got ", ratio);
  // Whole pixels, as timm and torchvision's recipes do: int(224 / 0.875) = 256.
  const double target_short = std::floor(std::min(out_w, out_h) / static_cast<double>(ratio) + 1e-6);
  int rw = 0, rh = 0;
  resize_shorter_dims(W, H, static_cast<int>(target_short), rw, rh);
  if (rw >= out_w && rh >= out_h) {
    // torchvision's CenterCrop starts at int(round((side - crop) / 2.0)): a whole pixel of the resized
    // image, with Python's rounding of halves to even (58.5 -> 58, 59.5 -> 60). A fractional start
    // would interpolate the whole image half a pixel off. Resize gave rw x rh (the longer side
    // floored), so each axis has its own scale.
    auto start = [](int d) { return d % 2 == 0 || (d / 2) % 2 == 0 ? d / 2 : d / 2 + 1; };
    const double sx = static_cast<double>(W) / rw, sy = static_cast<double>(H) / rh;
    return Box{static_cast<float>(start(rw - out_w) * sx), static_cast<float>(start(rh - out_h) * sy),
               static_cast<float>(out_w * sx), static_cast<float>(out_h * sy)};
  }
  // The resized image is smaller than the crop (a non-square output at a ratio near 1), where
  // torchvision's CenterCrop pads with zeros: scale up until the crop fits instead.
  double f = target_short / std::min(W, H);  // source -> resized scale
  f = std::max({f, static_cast<double>(out_w) / W, static_cast<double>(out_h) / H});
  const double bw = out_w / f, bh = out_h / f;
  return Box{static_cast<float>((W - bw) / 2), static_cast<float>((H - bh) / 2), static_cast<float>(bw),
             static_cast<float>(bh)};
}

void resize_shorter_dims(int W, int H, int S, int& out_w, int& out_h) {
  if (W <= H) {
    out_w = S;
    out_h = static_cast<int>(static_cast<int64_t>(S) * H / W);
  } else {
    out_h = S;
    out_w = static_cast<int>(static_cast<int64_t>(S) * W / H);
  }
}

}  // namespace ddp::data
