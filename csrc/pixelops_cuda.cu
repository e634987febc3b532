// CUDA kernels: one thread per output pixel, one launch per frame (each frame has its own
// homography and paste box, passed by value). Same per-pixel math as the CPU path.
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "pixel_math.h"
#include "pixelops.h"

namespace fvpix {

namespace {

constexpr int kBlock = 16;

__global__ void warp_crop_kernel(const uint8_t* __restrict__ frame, int h, int w, Hom hom,
                                 uint8_t* __restrict__ out, int s) {
  const int u = blockIdx.x * blockDim.x + threadIdx.x;
  const int v = blockIdx.y * blockDim.y + threadIdx.y;
  if (u >= s || v >= s) return;
  uint8_t* px = out + (static_cast<int64_t>(v) * s + u) * 3;
  float x, y;
  project(hom, static_cast<float>(u), static_cast<float>(v), &x, &y);
  if (!in_support(x, y, w, h)) {
    px[0] = px[1] = px[2] = 0;
    return;
  }
  const Taps t = bilinear_taps(x, y);
  for (int c = 0; c < 3; ++c) px[c] = round_u8(sample_zero_u8(frame, w, h, 3, c, t));
}

__global__ void paste_blend_kernel(uint8_t* __restrict__ frame, int w, Box box,
                                   const uint8_t* __restrict__ crop, const float* __restrict__ alpha,
                                   int s, Hom hom) {
  const int x = box.x0 + static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  const int y = box.y0 + static_cast<int>(blockIdx.y * blockDim.y + threadIdx.y);
  if (x > box.x1 || y > box.y1) return;
  float u, v;
  project(hom, static_cast<float>(x), static_cast<float>(y), &u, &v);
  if (!in_support(u, v, s, s)) return;
  const Taps t = bilinear_taps(u, v);
  const float a = sample_zero_f32(alpha, s, s, t);
  if (!(a > 0.0f)) return;  // alpha 0: the pixel is never written
  uint8_t* px = frame + (static_cast<int64_t>(y) * w + x) * 3;
  for (int c = 0; c < 3; ++c) px[c] = blend_u8(static_cast<float>(px[c]), sample_clamp_u8(crop, s, s, 3, c, t), a);
}

Hom load_hom(const float* m) {
  Hom h;
  for (int j = 0; j < 9; ++j) h.m[j] = m[j];
  return h;
}

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw std::runtime_error(std::string("fvedit CUDA ") + what + ": " + cudaGetErrorString(err));
}

void require_gpu() {
  if (cuda_device_count() == 0)
    throw std::runtime_error("fvedit CUDA kernels called but no CUDA GPU/driver is available; pass CPU arrays instead");
}

}  // namespace

int cuda_device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    (void)cudaGetLastError();  // clear the sticky "no driver"/"no device" error
    return 0;
  }
  return count;
}

void warp_crops_cuda(const uint8_t* frames, int64_t n, int h, int w, const float* hom_crop_to_frame,
                     uint8_t* crops, int s, uintptr_t stream) {
  require_gpu();
  const cudaStream_t st = reinterpret_cast<cudaStream_t>(stream);
  const dim3 block(kBlock, kBlock);
  const dim3 grid((s + kBlock - 1) / kBlock, (s + kBlock - 1) / kBlock);
  for (int64_t i = 0; i < n; ++i) {
    warp_crop_kernel<<<grid, block, 0, st>>>(frames + i * h * w * 3, h, w, load_hom(hom_crop_to_frame + 9 * i),
                                             crops + i * s * s * 3, s);
  }
  check(cudaGetLastError(), "warp_crops launch");
}

void paste_blend_cuda(uint8_t* frames, int64_t n, int h, int w, const uint8_t* crops,
                      const float* alphas, int s, const float* hom_f32, const double* hom_f64,
                      uintptr_t stream) {
  require_gpu();
  const cudaStream_t st = reinterpret_cast<cudaStream_t>(stream);
  const dim3 block(kBlock, kBlock);
  for (int64_t i = 0; i < n; ++i) {
    const Box box = paste_box(hom_f64 + 9 * i, s, w, h);
    if (box.empty()) continue;
    const dim3 grid((box.x1 - box.x0 + kBlock) / kBlock, (box.y1 - box.y0 + kBlock) / kBlock);
    paste_blend_kernel<<<grid, block, 0, st>>>(frames + i * h * w * 3, w, box, crops + i * s * s * 3,
                                               alphas + i * s * s, s, load_hom(hom_f32 + 9 * i));
  }
  check(cudaGetLastError(), "paste_blend launch");
}

}  // namespace fvpix
