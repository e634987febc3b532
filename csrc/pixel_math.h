// Per-pixel math shared by the OpenMP (CPU) and CUDA kernels.
//
// One copy of the arithmetic, compiled for host and device, so both back ends round the
// same way. The PyTorch twin (fvedit/pixels/twin.py) repeats exactly this sequence of
// float32 operations; keep the two in step. Conventions:
//   * pixel coordinates: integer = pixel centre, x = column, y = row;
//   * a homography maps destination pixel centres to source pixel centres;
//   * bilinear taps are ordered (x0,y0), (x1,y0), (x0,y1), (x1,y1) and summed in that order;
//   * uint8 results are clamped to [0, 255] and rounded half up: floor(v + 0.5).
// The build turns FMA contraction off (-ffp-contract=off, nvcc --fmad=false): a fused
// multiply-add rounds once instead of twice and would break bit-equality with the twin.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define FV_HD __host__ __device__ __forceinline__
#else
#define FV_HD inline
#endif

namespace fvpix {

FV_HD float floor_f(float v) {
#if defined(__CUDA_ARCH__)
  return floorf(v);
#else
  return std::floor(v);
#endif
}

// A 3x3 homography in float32, row-major. Passed by value to kernels.
struct Hom {
  float m[9];
};

// Map (x, y) through h. A point at infinity comes out as inf/nan and fails in_support.
FV_HD void project(const Hom& h, float x, float y, float* ox, float* oy) {
  const float px = (h.m[0] * x + h.m[1] * y) + h.m[2];
  const float py = (h.m[3] * x + h.m[4] * y) + h.m[5];
  const float pw = (h.m[6] * x + h.m[7] * y) + h.m[8];
  *ox = px / pw;
  *oy = py / pw;
}

// True when a bilinear sample at (x, y) can have a tap inside a w x h image. Checked in
// float before any float->int conversion, so huge coordinates cannot overflow; NaN and
// inf fail every comparison and land outside.
FV_HD bool in_support(float x, float y, int w, int h) {
  return x > -1.0f && x < static_cast<float>(w) && y > -1.0f && y < static_cast<float>(h);
}

// Bilinear weights and the top-left tap of a sample at (x, y).
struct Taps {
  int x0, y0;
  float w00, w10, w01, w11;
};

FV_HD Taps bilinear_taps(float x, float y) {
  const float fx0 = floor_f(x);
  const float fy0 = floor_f(y);
  const float fx = x - fx0;
  const float fy = y - fy0;
  const float gx = 1.0f - fx;
  const float gy = 1.0f - fy;
  Taps t;
  t.x0 = static_cast<int>(fx0);
  t.y0 = static_cast<int>(fy0);
  t.w00 = gx * gy;
  t.w10 = fx * gy;
  t.w01 = gx * fy;
  t.w11 = fx * fy;
  return t;
}

FV_HD uint8_t round_u8(float v) {
  v = v < 0.0f ? 0.0f : (v > 255.0f ? 255.0f : v);
  return static_cast<uint8_t>(floor_f(v + 0.5f));
}

// Zero-padded bilinear sample of channel c of an interleaved (h, w, nc) uint8 image:
// taps outside the image contribute 0.
FV_HD float sample_zero_u8(const uint8_t* img, int w, int h, int nc, int c, const Taps& t) {
  const int x1 = t.x0 + 1, y1 = t.y0 + 1;
  const bool vx0 = t.x0 >= 0 && t.x0 < w, vx1 = x1 >= 0 && x1 < w;
  const bool vy0 = t.y0 >= 0 && t.y0 < h, vy1 = y1 >= 0 && y1 < h;
  float acc = 0.0f;
  if (vx0 && vy0) acc += t.w00 * static_cast<float>(img[(static_cast<int64_t>(t.y0) * w + t.x0) * nc + c]);
  if (vx1 && vy0) acc += t.w10 * static_cast<float>(img[(static_cast<int64_t>(t.y0) * w + x1) * nc + c]);
  if (vx0 && vy1) acc += t.w01 * static_cast<float>(img[(static_cast<int64_t>(y1) * w + t.x0) * nc + c]);
  if (vx1 && vy1) acc += t.w11 * static_cast<float>(img[(static_cast<int64_t>(y1) * w + x1) * nc + c]);
  return acc;
}

// Zero-padded bilinear sample of a single-channel float image (the paste alpha).
FV_HD float sample_zero_f32(const float* img, int w, int h, const Taps& t) {
  const int x1 = t.x0 + 1, y1 = t.y0 + 1;
  const bool vx0 = t.x0 >= 0 && t.x0 < w, vx1 = x1 >= 0 && x1 < w;
  const bool vy0 = t.y0 >= 0 && t.y0 < h, vy1 = y1 >= 0 && y1 < h;
  float acc = 0.0f;
  if (vx0 && vy0) acc += t.w00 * img[static_cast<int64_t>(t.y0) * w + t.x0];
  if (vx1 && vy0) acc += t.w10 * img[static_cast<int64_t>(t.y0) * w + x1];
  if (vx0 && vy1) acc += t.w01 * img[static_cast<int64_t>(y1) * w + t.x0];
  if (vx1 && vy1) acc += t.w11 * img[static_cast<int64_t>(y1) * w + x1];
  return acc;
}

FV_HD int clampi(int v, int lo, int hi) { return v < lo ? lo : (v > hi ? hi : v); }

// Edge-clamped bilinear sample of channel c: the crop colour is never darkened by padding,
// only its alpha fades out (zero-padded) at the crop edge.
FV_HD float sample_clamp_u8(const uint8_t* img, int w, int h, int nc, int c, const Taps& t) {
  const int xa = clampi(t.x0, 0, w - 1), xb = clampi(t.x0 + 1, 0, w - 1);
  const int ya = clampi(t.y0, 0, h - 1), yb = clampi(t.y0 + 1, 0, h - 1);
  float acc = 0.0f;
  acc += t.w00 * static_cast<float>(img[(static_cast<int64_t>(ya) * w + xa) * nc + c]);
  acc += t.w10 * static_cast<float>(img[(static_cast<int64_t>(ya) * w + xb) * nc + c]);
  acc += t.w01 * static_cast<float>(img[(static_cast<int64_t>(yb) * w + xa) * nc + c]);
  acc += t.w11 * static_cast<float>(img[(static_cast<int64_t>(yb) * w + xb) * nc + c]);
  return acc;
}

// Edge-clamped bilinear sample of channel c of an interleaved (h, w, nc) float image (the
// delta paste's signed edit - reference), in the same tap order as sample_clamp_u8.
FV_HD float sample_clamp_f32(const float* img, int w, int h, int nc, int c, const Taps& t) {
  const int xa = clampi(t.x0, 0, w - 1), xb = clampi(t.x0 + 1, 0, w - 1);
  const int ya = clampi(t.y0, 0, h - 1), yb = clampi(t.y0 + 1, 0, h - 1);
  float acc = 0.0f;
  acc += t.w00 * img[(static_cast<int64_t>(ya) * w + xa) * nc + c];
  acc += t.w10 * img[(static_cast<int64_t>(ya) * w + xb) * nc + c];
  acc += t.w01 * img[(static_cast<int64_t>(yb) * w + xa) * nc + c];
  acc += t.w11 * img[(static_cast<int64_t>(yb) * w + xb) * nc + c];
  return acc;
}

// out = frame * (1 - a) + crop * a, rounded; the blend of one channel.
FV_HD uint8_t blend_u8(float frame, float crop, float a) {
  return round_u8(frame * (1.0f - a) + crop * a);
}

// The frame rectangle [x0, x1] x [y0, y1] (inclusive) that can receive crop pixels.
struct Box {
  int x0, y0, x1, y1;
  bool empty() const { return x1 < x0 || y1 < y0; }
};

// Conservative bounding box, in the frame, of the crop's bilinear footprint (-1, S)^2.
// `h` (frame -> crop) is given in float64. Its adjugate (the inverse up to scale) maps
// the footprint corners into the frame; the image of the square is the hull of those four
// points unless the square meets the line the inverse sends to infinity (corner w's of
// mixed sign), or the matrix is singular: then the whole frame is returned. A 2-pixel
// margin absorbs the float32 rounding of the per-pixel mapping, so the box only limits
// work and never decides a pixel's value.
inline Box paste_box(const double* h, int crop_size, int frame_w, int frame_h) {
  const Box whole{0, 0, frame_w - 1, frame_h - 1};
  const Box none{0, 0, -1, -1};
  const double a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], k = h[7], i = h[8];
  const double inv[9] = {e * i - f * k, c * k - b * i, b * f - c * e,
                         f * g - d * i, a * i - c * g, c * d - a * f,
                         d * k - e * g, b * g - a * k, a * e - b * d};
  const double det = a * inv[0] + b * inv[3] + c * inv[6];
  if (!std::isfinite(det) || det == 0.0) return whole;
  const double lo = -1.0, hi = static_cast<double>(crop_size);
  const double cx[4] = {lo, hi, hi, lo}, cy[4] = {lo, lo, hi, hi};
  double xmin = INFINITY, xmax = -INFINITY, ymin = INFINITY, ymax = -INFINITY;
  int positive = 0, negative = 0;
  for (int j = 0; j < 4; ++j) {
    const double px = inv[0] * cx[j] + inv[1] * cy[j] + inv[2];
    const double py = inv[3] * cx[j] + inv[4] * cy[j] + inv[5];
    const double pw = inv[6] * cx[j] + inv[7] * cy[j] + inv[8];
    positive += pw > 0.0;
    negative += pw < 0.0;
    const double x = px / pw, y = py / pw;
    if (!std::isfinite(x) || !std::isfinite(y)) return whole;
    xmin = std::fmin(xmin, x); xmax = std::fmax(xmax, x);
    ymin = std::fmin(ymin, y); ymax = std::fmax(ymax, y);
  }
  if (positive != 4 && negative != 4) return whole;
  const double m = 2.0;
  if (xmin - m > frame_w - 1 || ymin - m > frame_h - 1 || xmax + m < 0.0 || ymax + m < 0.0) return none;
  Box box;  // every value below is clamped into the frame before the cast to int
  box.x0 = static_cast<int>(std::fmax(std::floor(xmin - m), 0.0));
  box.y0 = static_cast<int>(std::fmax(std::floor(ymin - m), 0.0));
  box.x1 = static_cast<int>(std::fmin(std::ceil(xmax + m), static_cast<double>(frame_w - 1)));
  box.y1 = static_cast<int>(std::fmin(std::ceil(ymax + m), static_cast<double>(frame_h - 1)));
  return box;
}

}  // namespace fvpix
