// Image primitives shared by the loader and pack_imagenet: format sniffing, libjpeg-turbo decoding
// of just the region a crop needs (DCT-domain scaling, horizontal crop, skipped rows), JPEG
// encoding, an antialiased bilinear resampler that matches PIL's, and the crop geometry of
// torchvision's RandomResizedCrop / Resize+CenterCrop.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "ddp/core/rng.h"

namespace ddp::data {

enum class ImageFormat { Unknown, Jpeg, Png, Gif, Bmp, Webp, Tiff };
// By magic bytes, never by the file name (ImageNet has PNG and CMYK files named .JPEG).
ImageFormat sniff_format(const uint8_t* p, size_t n);
const char* format_name(ImageFormat f);

// Interleaved 8-bit RGB, rows of w*3 bytes.
struct Rgb {
  int w = 0, h = 0;
  std::vector<uint8_t> px;
};

// A rectangle in pixel coordinates (floats: a crop of a DCT-scaled decode is fractional).
struct Box {
  float x = 0, y = 0, w = 0, h = 0;
};

struct JpegHeader {
  int w = 0, h = 0, components = 0;
  bool cmyk = false, grayscale = false, progressive = false, ycbcr = false;
};
// Throws ddp::Error naming `name` if the data is not a readable JPEG header.
JpegHeader read_jpeg_header(const uint8_t* data, size_t n, const std::string& name);

struct Decoded {
  Rgb img;
  Box box;           // the requested box, in img's pixel coordinates
  int scale_denom = 1;  // DCT scaling used: img is (part of) the image at 1/scale_denom
  int warnings = 0;     // libjpeg warnings that are not signs of damage (e.g. extraneous bytes)
  std::string warning;  // the first of them
};

// Decodes the part of a JPEG that covers `box` (the whole image when box.w <= 0) to RGB, at the
// coarsest DCT scale (1/8, 1/4, 1/2, 1) at which that part is still at least min_w x min_h pixels
// (pass the size the box will be resampled to; 0, 0: full resolution). A margin of the resampling
// filter's reach around the box is decoded too.
// Grayscale, CMYK/YCCK and progressive files all come out as RGB. Damage (truncation, bad Huffman
// data) and images over max_pixels (0: no limit) throw ddp::Error naming `name`.
// full_check reads the entropy data to the end of the file (so damage anywhere is found); otherwise
// decoding stops after the box's last row.
// A crop of a file with restart markers (as encode_jpeg(restarts) and jpeg_add_restarts write them) decodes
// only the restart intervals around the crop, the same pixels at a fraction of the entropy decoding.
Decoded decode_jpeg(const uint8_t* data, size_t n, const std::string& name, Box box = {}, int min_w = 0,
                    int min_h = 0, int64_t max_pixels = 0, bool full_check = false);
// The same into `out`, reusing its buffers (for loops over many images): out.img.px keeps its largest
// size, so it holds at least img.w * img.h * 3 bytes.
void decode_jpeg(const uint8_t* data, size_t n, const std::string& name, Box box, int min_w, int min_h,
                 int64_t max_pixels, bool full_check, Decoded& out);

// Lossless: the same DCT coefficients (so the same decoded pixels) re-entropy-coded as a baseline
// JPEG with a restart marker after every MCU (about 3.5% larger), which lets decode_jpeg skip
// everything outside a crop. Progressive files become baseline; metadata (APPn) is dropped.
// Reads the whole file: damage throws ddp::Error naming `name`; other libjpeg warnings go to *warning.
std::vector<uint8_t> jpeg_add_restarts(const uint8_t* data, size_t n, const std::string& name,
                                       std::string* warning = nullptr);

// RGB -> baseline JPEG (4:2:0, accurate integer DCT, as PIL/libjpeg default), quality 1..100.
// restarts: a restart marker after every MCU (about 3% larger; crops decode only what they cover;
// for shards). Without, a plain file like PIL's (benchmark inputs, test sources).
std::vector<uint8_t> encode_jpeg(const uint8_t* rgb, int w, int h, int quality, bool restarts = false);

// Resamples `box` of src (sw x sh RGB) to dst (dw x dh RGB) with PIL's bilinear filter, whose
// support widens when shrinking (antialiasing), so it agrees with PIL's Image.resize(box=...).
// flip mirrors the output horizontally.
void resample(const uint8_t* src, int sw, int sh, Box box, uint8_t* dst, int dw, int dh, bool flip = false);
// resample uses AVX2 kernels where the CPU has them, otherwise portable ones computing the same
// bytes. For tests and comparisons: false forces the portable kernels, true restores the default;
// returns whether the AVX2 kernels are now in use.
bool set_resample_simd(bool enable);

// torchvision.transforms.RandomResizedCrop.get_params: integer crop of a W x H image.
Box random_resized_crop(Rng& rng, int W, int H, float min_scale, float max_scale,
                        float min_ratio = 3.0f / 4.0f, float max_ratio = 4.0f / 3.0f);
// Resize(shorter side -> floor(min(out)/ratio)) + CenterCrop(out_h, out_w), as a box in source pixels;
// the crop starts at torchvision's whole pixel of the resized image (int(round(d / 2.0)), halves to even).
Box center_crop_box(int W, int H, int out_w, int out_h, float ratio);
// Output size of "resize so the shorter side is S, keep aspect" (torchvision Resize(S)).
void resize_shorter_dims(int W, int H, int S, int& out_w, int& out_h);

}  // namespace ddp::data
