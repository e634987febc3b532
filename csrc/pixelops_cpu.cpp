// OpenMP CPU kernels: one output row per loop iteration, rows shared across threads.
#include "pixelops.h"

#include "pixel_math.h"

namespace fvpix {

namespace {

Hom load_hom(const float* m) {
  Hom h;
  for (int j = 0; j < 9; ++j) h.m[j] = m[j];
  return h;
}

}  // namespace

void warp_crops_cpu(const uint8_t* frames, int64_t n, int h, int w, const float* hom_crop_to_frame,
                    uint8_t* crops, int s) {
  const int64_t rows = n * s;
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t i = r / s;
    const int v = static_cast<int>(r % s);
    const Hom hom = load_hom(hom_crop_to_frame + 9 * i);
    const uint8_t* frame = frames + i * h * w * 3;
    uint8_t* out = crops + (i * s + v) * s * 3;
    for (int u = 0; u < s; ++u) {
      float x, y;
      project(hom, static_cast<float>(u), static_cast<float>(v), &x, &y);
      if (!in_support(x, y, w, h)) {
        out[3 * u] = out[3 * u + 1] = out[3 * u + 2] = 0;
        continue;
      }
      const Taps t = bilinear_taps(x, y);
      for (int c = 0; c < 3; ++c) out[3 * u + c] = round_u8(sample_zero_u8(frame, w, h, 3, c, t));
    }
  }
}

namespace {

// The paste loop both pastes share: frame pixels inside the crop's footprint with alpha > 0 get
// combine(frame value, taps, channel, alpha); only the combine differs (blend or delta).
template <typename Combine>
void paste_cpu(uint8_t* frames, int64_t n, int h, int w, const float* alphas, int s, const float* hom_f32,
               const double* hom_f64, Combine combine) {
  for (int64_t i = 0; i < n; ++i) {
    const Box box = paste_box(hom_f64 + 9 * i, s, w, h);
    if (box.empty()) continue;
    const Hom hom = load_hom(hom_f32 + 9 * i);
    uint8_t* frame = frames + i * h * w * 3;
    const float* alpha = alphas + i * s * s;
#pragma omp parallel for schedule(static)
    for (int y = box.y0; y <= box.y1; ++y) {
      uint8_t* row = frame + static_cast<int64_t>(y) * w * 3;
      for (int x = box.x0; x <= box.x1; ++x) {
        float u, v;
        project(hom, static_cast<float>(x), static_cast<float>(y), &u, &v);
        if (!in_support(u, v, s, s)) continue;
        const Taps t = bilinear_taps(u, v);
        const float a = sample_zero_f32(alpha, s, s, t);
        if (!(a > 0.0f)) continue;  // alpha 0: the pixel is never written
        for (int c = 0; c < 3; ++c) {
          row[3 * x + c] = combine(i, static_cast<float>(row[3 * x + c]), t, c, a);
        }
      }
    }
  }
}

}  // namespace

void paste_blend_cpu(uint8_t* frames, int64_t n, int h, int w, const uint8_t* crops,
                     const float* alphas, int s, const float* hom_f32, const double* hom_f64) {
  paste_cpu(frames, n, h, w, alphas, s, hom_f32, hom_f64, [=](int64_t i, float fc, const Taps& t, int c, float a) {
    return blend_u8(fc, sample_clamp_u8(crops + i * s * s * 3, s, s, 3, c, t), a);
  });
}

void paste_delta_cpu(uint8_t* frames, int64_t n, int h, int w, const float* deltas,
                     const float* alphas, int s, const float* hom_f32, const double* hom_f64) {
  paste_cpu(frames, n, h, w, alphas, s, hom_f32, hom_f64, [=](int64_t i, float fc, const Taps& t, int c, float a) {
    return round_u8(fc + sample_clamp_f32(deltas + i * s * s * 3, s, s, 3, c, t) * a);
  });
}

}  // namespace fvpix
