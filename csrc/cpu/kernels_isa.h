// Note [one source, three instruction sets]: the kernels are written once, against the small
// vector interface of Vec<C> (vec_avx512.h, vec_avx2.h, or ScalarVec for the portable level),
// and compiled three times by kernels_{avx512,avx2,scalar}.cpp. Each of those includes the ATen
// headers first (so torch's inline functions keep the baseline ISA), then opens
// `#pragma GCC target(...)` and includes this file with FUSEDOPT_ISA naming a namespace of
// its own: no symbol is shared between levels, so the linker can never pick an AVX-512 copy
// of a function for a CPU without AVX-512. ops.cpp picks a table at run time
// (capability.cpp). `#pragma GCC optimize("fp-contract=off")` stops GCC from fusing a*b+c
// into one fma on its own: every level then rounds the same ops, and the scalar tail of a
// chunk rounds exactly like its vector lanes. An algorithm's prepare and finish (double math
// on the calling thread) are compiled with its functor; without contraction their bits are the
// same at every level.
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
#include "cpu/two_stage.h"
#include "cpu/norm.h"
// The algorithms (Note [one driver], ops.cpp); each also has a line in table() below.
#include "cpu/adam.h"
#include "cpu/sgd.h"
#include "cpu/lion.h"
#include "cpu/lars.h"
#include "cpu/lamb.h"

// The streams of one tensor: the param, then its K-1 states (elementwise's rw).
template <class S, int K>
struct Streams {
  S* rw[K];
  explicit Streams(const TensorStep& t) {
    rw[0] = static_cast<S*>(t.param);
    for (int k = 1; k < K; ++k) rw[k] = static_cast<S*>(t.states[k - 1]);
  }
};

template <class A, class S, int K, bool kMaster>
void update_kernel(const TensorStep& t, int64_t begin, int64_t end) {
  const typename A::template Math<compute_t<S>> f(t.scalars_as<typename A::Scalars>());
  const Streams<S, K> s(t);
  elementwise<kMaster>(f, static_cast<const S*>(t.grad), s.rw, t.master, begin, end);
}

template <class A, class S, int K, bool kMaster>
void sums_kernel(const TensorStep& t, int64_t begin, int64_t end, double* sums) {
  const typename A::template Math<compute_t<S>> f(t.scalars_as<typename A::Scalars>());
  const Streams<S, K> s(t);
  sums_loop<kMaster>(f, static_cast<const S*>(t.grad), s.rw, t.master, begin, end, sums);
}

// The kernels of A for storage type S and `States` state lists, with and without a master copy
// (fp16/bf16 params only).
template <class A, class S, int States>
void fill_states(AlgoKernels& k, DType d) {
  constexpr int K = 1 + States;
  k.update[d][States][0] = &update_kernel<A, S, K, false>;
  if constexpr (A::kTwoStage) k.sums[d][States][0] = &sums_kernel<A, S, K, false>;
  if constexpr (sizeof(S) == 2) {
    k.update[d][States][1] = &update_kernel<A, S, K, true>;
    if constexpr (A::kTwoStage) k.sums[d][States][1] = &sums_kernel<A, S, K, true>;
  }
  if constexpr (States < A::kMaxStates) fill_states<A, S, States + 1>(k, d);
}

template <class A>
void fill(KernelTable& t) {
  AlgoKernels& k = t.algo[A::kId];
  k.prepare = &A::prepare;
  if constexpr (A::kTwoStage) k.finish = &A::finish;
  fill_states<A, float, A::kMinStates>(k, kFloat);
  fill_states<A, double, A::kMinStates>(k, kDouble);
  fill_states<A, c10::Half, A::kMinStates>(k, kHalf);
  fill_states<A, c10::BFloat16, A::kMinStates>(k, kBFloat16);
}

template <class S>
void fill_norm(KernelTable& t, DType d) {
  t.norm[d][0] = &sum_squares_kernel<S>;
  t.norm[d][1] = &max_abs_kernel<S>;
}

const KernelTable& table() {
  static const KernelTable t = [] {
    KernelTable k{};
    fill<Adam>(k);
    fill<Sgd>(k);
    fill<Lion>(k);
    fill<Lars>(k);
    fill<Lamb>(k);
    fill_norm<float>(k, kFloat);
    fill_norm<double>(k, kDouble);
    fill_norm<c10::Half>(k, kHalf);
    fill_norm<c10::BFloat16>(k, kBFloat16);
    return k;
  }();
  return t;
}

}  // namespace fusedopt::cpu::FUSEDOPT_ISA
