// pybind11 module fvedit._pixelops: validates NumPy buffers and calls the kernels.
//
// No torch headers: CPU data arrives as NumPy arrays (zero-copy views of CPU tensors),
// CUDA data as raw device pointers (tensor.data_ptr()) plus shapes and a stream handle.
// Arguments are taken with noconvert(): a silent dtype/layout copy would hide bugs and
// would make the in-place paste write into a temporary.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include "pixelops.h"

namespace py = pybind11;

namespace {

constexpr int kAbiVersion = 2;  // bump when an entry point's signature or meaning changes

template <typename T>
using CArray = py::array_t<T, py::array::c_style>;

[[noreturn]] void fail(const std::string& msg) { throw py::value_error(msg); }

void expect_shape(const py::array& a, const char* name, std::initializer_list<py::ssize_t> shape) {
  bool ok = a.ndim() == static_cast<py::ssize_t>(shape.size());
  py::ssize_t d = 0;
  for (py::ssize_t want : shape) {
    if (!ok) break;
    ok = want < 0 || a.shape(d) == want;
    ++d;
  }
  if (!ok) {
    std::string got = "(";
    for (py::ssize_t j = 0; j < a.ndim(); ++j) got += (j ? ", " : "") + std::to_string(a.shape(j));
    fail(std::string(name) + " has shape " + got + ")" + ", which does not fit the other arguments");
  }
}

void expect_hom(const py::array& hom, const char* name, py::ssize_t n) { expect_shape(hom, name, {n, 3, 3}); }

CArray<uint8_t> warp_crops(const CArray<uint8_t>& frames, const CArray<float>& hom, int size) {
  if (frames.ndim() != 4 || frames.shape(3) != 3) fail("frames must be uint8 [N, H, W, 3]");
  if (size < 1) fail("crop size must be >= 1");
  const py::ssize_t n = frames.shape(0);
  expect_hom(hom, "H_crop_to_frame", n);
  CArray<uint8_t> out({n, static_cast<py::ssize_t>(size), static_cast<py::ssize_t>(size), py::ssize_t{3}});
  const uint8_t* src = frames.data();
  const float* h = hom.data();
  uint8_t* dst = out.mutable_data();
  const int fh = static_cast<int>(frames.shape(1)), fw = static_cast<int>(frames.shape(2));
  {
    py::gil_scoped_release nogil;
    fvpix::warp_crops_cpu(src, n, fh, fw, h, dst, size);
  }
  return out;
}

// The checks and call both in-place pastes share; `Src` is the crop (uint8) or delta (float32) type.
template <typename Src, typename Kernel>
void paste_inplace(const char* op, CArray<uint8_t>& frames, const CArray<Src>& src, const char* src_name,
                   const char* src_type, const CArray<float>& alphas, const CArray<float>& hom_f32,
                   const CArray<double>& hom_f64, Kernel kernel) {
  if (frames.ndim() != 4 || frames.shape(3) != 3) fail("frames must be uint8 [N, H, W, 3]");
  if (!frames.writeable()) fail(std::string("frames must be writeable (") + op + " writes into them)");
  const py::ssize_t n = frames.shape(0);
  if (src.ndim() != 4) fail(std::string(src_name) + " must be " + src_type + " [N, S, S, 3]");
  const py::ssize_t s = src.shape(1);
  expect_shape(src, src_name, {n, s, s, 3});
  expect_shape(alphas, "alphas", {n, s, s});
  expect_hom(hom_f32, "H_frame_to_crop (float32)", n);
  expect_hom(hom_f64, "H_frame_to_crop (float64)", n);
  uint8_t* f = frames.mutable_data();
  const Src* c = src.data();
  const float* a = alphas.data();
  const float* h32 = hom_f32.data();
  const double* h64 = hom_f64.data();
  const int fh = static_cast<int>(frames.shape(1)), fw = static_cast<int>(frames.shape(2));
  py::gil_scoped_release nogil;
  kernel(f, n, fh, fw, c, a, static_cast<int>(s), h32, h64);
}

void paste_blend_inplace(CArray<uint8_t>& frames, const CArray<uint8_t>& crops, const CArray<float>& alphas,
                         const CArray<float>& hom_f32, const CArray<double>& hom_f64) {
  paste_inplace("paste_blend", frames, crops, "crops", "uint8", alphas, hom_f32, hom_f64, fvpix::paste_blend_cpu);
}

void paste_delta_inplace(CArray<uint8_t>& frames, const CArray<float>& deltas, const CArray<float>& alphas,
                         const CArray<float>& hom_f32, const CArray<double>& hom_f64) {
  paste_inplace("paste_delta", frames, deltas, "deltas", "float32", alphas, hom_f32, hom_f64, fvpix::paste_delta_cpu);
}

#if defined(FVEDIT_WITH_CUDA)
void require_gpu() {
  if (fvpix::cuda_device_count() == 0)
    throw std::runtime_error("fvedit CUDA kernels called but no CUDA GPU/driver is available; pass CPU arrays instead");
}

template <typename T>
T* device_ptr(uintptr_t p, const char* name) {
  if (p == 0) fail(std::string(name) + " is a null device pointer");
  return reinterpret_cast<T*>(p);
}

void warp_crops_cuda(uintptr_t frames, int64_t n, int h, int w, const CArray<float>& hom, uintptr_t out, int size,
                     uintptr_t stream) {
  require_gpu();
  if (n < 0 || h < 1 || w < 1 || size < 1) fail("warp_crops_cuda: bad shape");
  expect_hom(hom, "H_crop_to_frame", n);
  const float* hp = hom.data();
  const uint8_t* fp = device_ptr<const uint8_t>(frames, "frames");
  uint8_t* op = device_ptr<uint8_t>(out, "out");
  py::gil_scoped_release nogil;
  fvpix::warp_crops_cuda(fp, n, h, w, hp, op, size, stream);
}

void paste_blend_cuda(uintptr_t frames, int64_t n, int h, int w, uintptr_t crops, uintptr_t alphas, int size,
                      const CArray<float>& hom_f32, const CArray<double>& hom_f64, uintptr_t stream) {
  require_gpu();
  if (n < 0 || h < 1 || w < 1 || size < 1) fail("paste_blend_cuda: bad shape");
  expect_hom(hom_f32, "H_frame_to_crop (float32)", n);
  expect_hom(hom_f64, "H_frame_to_crop (float64)", n);
  const float* h32 = hom_f32.data();
  const double* h64 = hom_f64.data();
  uint8_t* fp = device_ptr<uint8_t>(frames, "frames");
  const uint8_t* cp = device_ptr<const uint8_t>(crops, "crops");
  const float* ap = device_ptr<const float>(alphas, "alphas");
  py::gil_scoped_release nogil;
  fvpix::paste_blend_cuda(fp, n, h, w, cp, ap, size, h32, h64, stream);
}
#endif

}  // namespace

PYBIND11_MODULE(_pixelops, m) {
  m.doc() = "fvedit pixel kernels (crop warping, alpha paste-back): OpenMP CPU and optional CUDA";
  m.attr("ABI_VERSION") = kAbiVersion;
#if defined(_OPENMP)
  m.attr("built_with_openmp") = true;
  m.def("omp_max_threads", []() { return omp_get_max_threads(); });
#else
  m.attr("built_with_openmp") = false;
  m.def("omp_max_threads", []() { return 1; });
#endif

  m.def("warp_crops", &warp_crops, py::arg("frames").noconvert(), py::arg("H_crop_to_frame").noconvert(),
        py::arg("size"),
        "frames uint8 [N,H,W,3], H float32 [N,3,3] (crop -> frame) -> crops uint8 [N,S,S,3]");
  m.def("paste_blend_inplace", &paste_blend_inplace, py::arg("frames").noconvert(), py::arg("crops").noconvert(),
        py::arg("alphas").noconvert(), py::arg("H_f32").noconvert(), py::arg("H_f64").noconvert(),
        "blend crops into frames in place; H = frame -> crop as float32 and float64 [N,3,3]");
  m.def("paste_delta_inplace", &paste_delta_inplace, py::arg("frames").noconvert(), py::arg("deltas").noconvert(),
        py::arg("alphas").noconvert(), py::arg("H_f32").noconvert(), py::arg("H_f64").noconvert(),
        "add alpha * bilinear(deltas) into frames in place (the delta paste); H as for paste_blend_inplace");

#if defined(FVEDIT_WITH_CUDA)
  m.attr("built_with_cuda") = true;
  m.def("cuda_device_count", &fvpix::cuda_device_count);
  m.def("warp_crops_cuda", &warp_crops_cuda, py::arg("frames_ptr"), py::arg("n"), py::arg("height"),
        py::arg("width"), py::arg("H_crop_to_frame").noconvert(), py::arg("out_ptr"), py::arg("size"),
        py::arg("stream") = 0, "device pointers; queues the warp on `stream`");
  m.def("paste_blend_cuda", &paste_blend_cuda, py::arg("frames_ptr"), py::arg("n"), py::arg("height"),
        py::arg("width"), py::arg("crops_ptr"), py::arg("alphas_ptr"), py::arg("size"),
        py::arg("H_f32").noconvert(), py::arg("H_f64").noconvert(), py::arg("stream") = 0,
        "device pointers; queues the in-place blend on `stream`");
#else
  m.attr("built_with_cuda") = false;
#endif
}
