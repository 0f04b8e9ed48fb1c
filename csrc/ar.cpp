// ueperf._C_ar — the autoregressive (AR) recurrence of AP poisons (spec §2.7), on CPU.
//
// ar_generate(start, coeffs) -> out
//   start  (N, C, H, W) float32/float64, contiguous or not (copied): the start signals;
//   coeffs (N, C, 3, 3) same dtype: one 3×3 filter per image and channel; entry [2][2] must be 0
//          (the target entry is not part of its own prediction).
//   out    (N, C, H, W): a copy of start in which, for every image n and channel c, the entries
//          are overwritten in raster order (i = 0..H-3 outer, j = 0..W-3 inner) by
//
//            out[i+2][j+2] = Σ_{(a,b) ≠ (2,2)} out[i+a][j+b] · coeffs[a][b]
//
//          summed in row-major (a, b) order, each product rounded before it is added: exactly
//          the operation order of the torch reference ueperf.kernels.ar.ar_generate_ref, so the
//          two agree bit for bit. The [2][2] coefficient (0) is skipped rather than multiplied,
//          which changes nothing but the sign of an all-zero sum.
//
// Work: each (image, channel) plane is an independent sequential scan (every entry depends on
// the two just written to its left), so planes are distributed over threads with
// at::parallel_for and each plane is one tight double loop over rows and columns.
#include <torch/extension.h>
#include <ATen/Parallel.h>

// Keep a*b + c as two rounded operations: GCC contracts them into one FMA by default on targets
// that have FMA (aarch64, -march=native x86), which would break bit-equality with the reference.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

namespace {

template <typename scalar_t>
void ar_plane(scalar_t* __restrict__ x, const scalar_t* __restrict__ k, int64_t H, int64_t W) {
  const scalar_t k00 = k[0], k01 = k[1], k02 = k[2];
  const scalar_t k10 = k[3], k11 = k[4], k12 = k[5];
  const scalar_t k20 = k[6], k21 = k[7];
  for (int64_t i = 0; i + 2 < H; ++i) {
    scalar_t* r0 = x + i * W;
    scalar_t* r1 = r0 + W;
    scalar_t* r2 = r1 + W;  // the row being written; r0 and r1 are only read
    for (int64_t j = 0; j + 2 < W; ++j) {
      scalar_t acc = r0[j] * k00;
      acc = acc + r0[j + 1] * k01;
      acc = acc + r0[j + 2] * k02;
      acc = acc + r1[j] * k10;
      acc = acc + r1[j + 1] * k11;
      acc = acc + r1[j + 2] * k12;
      acc = acc + r2[j] * k20;
      acc = acc + r2[j + 1] * k21;
      r2[j + 2] = acc;
    }
  }
}

torch::Tensor ar_generate(const torch::Tensor& start, const torch::Tensor& coeffs) {
  TORCH_CHECK(start.device().is_cpu() && coeffs.device().is_cpu(),
              "ar_generate: the C++ op runs on CPU tensors; got start on ", start.device(),
              " and coeffs on ", coeffs.device());
  TORCH_CHECK(start.dim() == 4, "ar_generate: start must be (N, C, H, W), got ", start.sizes());
  TORCH_CHECK(coeffs.dim() == 4 && coeffs.size(0) == start.size(0) && coeffs.size(1) == start.size(1) &&
                  coeffs.size(2) == 3 && coeffs.size(3) == 3,
              "ar_generate: coeffs must be (N, C, 3, 3) matching start ", start.sizes(), ", got ",
              coeffs.sizes());
  TORCH_CHECK(start.scalar_type() == coeffs.scalar_type(), "ar_generate: start and coeffs must share a dtype, got ",
              start.scalar_type(), " and ", coeffs.scalar_type());
  TORCH_CHECK(start.scalar_type() == at::kFloat || start.scalar_type() == at::kDouble,
              "ar_generate: dtype must be float32 or float64, got ", start.scalar_type());

  auto out = start.contiguous().clone();
  auto k = coeffs.contiguous();
  const int64_t planes = out.size(0) * out.size(1);
  const int64_t H = out.size(2), W = out.size(3);
  if (planes == 0 || H < 3 || W < 3) return out;

  AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "ar_generate", [&] {
    scalar_t* xp = out.data_ptr<scalar_t>();
    const scalar_t* kp = k.data_ptr<scalar_t>();
    // A 36×36 plane is ~10k flops: 16 planes per task keeps scheduling overhead negligible.
    at::parallel_for(0, planes, 16, [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) ar_plane<scalar_t>(xp + p * H * W, kp + p * 9, H, W);
    });
  });
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "AR-process generation for AP poisons (ueperf.kernels.ar)";
  m.def("ar_generate", &ar_generate, "AR recurrence over (N, C, H, W) start signals with (N, C, 3, 3) filters",
        pybind11::arg("start"), pybind11::arg("coeffs"));
}
