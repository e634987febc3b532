// Entry points of the pixel kernels on raw, C-contiguous buffers (no Python, no torch).
//
// Layouts: frames uint8 [n, h, w, 3], crops uint8 [n, s, s, 3], alphas float32 [n, s, s],
// homographies [n, 3, 3] row-major. bindings.cpp validates shapes before calling these.
#pragma once

#include <cstdint>

namespace fvpix {

// crops[i] = bilinear, zero-padded sample of frames[i] at H_crop_to_frame[i] @ (u, v, 1).
void warp_crops_cpu(const uint8_t* frames, int64_t n, int h, int w, const float* hom_crop_to_frame,
                    uint8_t* crops, int s);

// Blend crops[i] (alpha alphas[i]) into frames[i] in place; frame pixels whose sampled
// alpha is 0 are not written. hom_f32 / hom_f64 are the same frame->crop matrices in float32
// (per-pixel mapping) and float64 (bounding box).
void paste_blend_cpu(uint8_t* frames, int64_t n, int h, int w, const uint8_t* crops,
                     const float* alphas, int s, const float* hom_f32, const double* hom_f64);
// out = round(frame + a * delta): the delta paste (signed float deltas [N,S,S,3], 0-255 units).
void paste_delta_cpu(uint8_t* frames, int64_t n, int h, int w, const float* deltas,
                     const float* alphas, int s, const float* hom_f32, const double* hom_f64);

#if defined(FVEDIT_WITH_CUDA)
// CUDA versions: every pointer except the homographies is a device pointer; the
// homographies stay on the host (they travel as kernel arguments). `stream` is a
// cudaStream_t as an integer (0 = legacy default stream). Both return immediately after
// queueing the work. They throw std::runtime_error when no usable GPU is present.
void warp_crops_cuda(const uint8_t* frames, int64_t n, int h, int w, const float* hom_crop_to_frame,
                     uint8_t* crops, int s, uintptr_t stream);
void paste_blend_cuda(uint8_t* frames, int64_t n, int h, int w, const uint8_t* crops,
                      const float* alphas, int s, const float* hom_f32, const double* hom_f64,
                      uintptr_t stream);
// Number of visible CUDA devices; 0 when there is no GPU or no driver.
int cuda_device_count();
#endif

}  // namespace fvpix
