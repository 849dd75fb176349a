// Note [one source, three instruction sets]: the kernels are written once, against the small
// vector interface of Vec<C> (vec_avx512.h, vec_avx2.h, or ScalarVec for the portable level),
// and compiled three times by kernels_{avx512,avx2,scalar}.cpp. Each of those includes the ATen
// headers first (so torch's inline functions keep the baseline ISA), then opens
// `#pragma GCC target(...)` and includes this file with FUSEDOPT_ISA naming a namespace of
// its own: no symbol is shared between levels, so the linker can never pick an AVX-512 copy
// of a function for a CPU without AVX-512. ops.cpp picks a table at run time
// (capability.cpp). `#pragma GCC optimize("fp-contract=off")` stops GCC from fusing a*b+c
// into one fma on its own: every level then rounds the same ops, and the scalar tail of a
// chunk rounds exactly like its vector lanes.
// The including file has already included <algorithm>, <cmath>, c10's Half/BFloat16 and
// cpu/kernels.h, before its pragmas.
namespace fusedopt::cpu::FUSEDOPT_ISA {

#include "cpu/vec_scalar.h"
#ifdef FUSEDOPT_VEC_HEADER
#include FUSEDOPT_VEC_HEADER
#else
template <class C> using Vec = ScalarVec<C>;
#endif
#include "cpu/elementwise.h"
#include "cpu/adam.h"
#include "cpu/sgd.h"
#include "cpu/norm.h"

template <class S>
void fill_dtype(KernelTable& t, DType d) {
  t.adam[d][0][0] = &adam_kernel<S, false, false>;
  t.adam[d][1][0] = &adam_kernel<S, true, false>;
  t.sgd[d][0][0] = &sgd_kernel<S, false, false>;
  t.sgd[d][1][0] = &sgd_kernel<S, true, false>;
  if constexpr (sizeof(S) == 2) {   // master copies accompany fp16/bf16 params only
    t.adam[d][0][1] = &adam_kernel<S, false, true>;
    t.adam[d][1][1] = &adam_kernel<S, true, true>;
    t.sgd[d][0][1] = &sgd_kernel<S, false, true>;
    t.sgd[d][1][1] = &sgd_kernel<S, true, true>;
  }
  t.norm[d][0] = &sum_squares_kernel<S>;
  t.norm[d][1] = &max_abs_kernel<S>;
}

const KernelTable& table() {
  static const KernelTable t = [] {
    KernelTable k{};
    fill_dtype<float>(k, kFloat);
    fill_dtype<double>(k, kDouble);
    fill_dtype<c10::Half>(k, kHalf);
    fill_dtype<c10::BFloat16>(k, kBFloat16);
    return k;
  }();
  return t;
}

}  // namespace fusedopt::cpu::FUSEDOPT_ISA
