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
// The including file has already included <algorithm>, <cmath>, <cstring>, <type_traits>,
// c10's Half/BFloat16 and cpu/kernels.h, before its pragmas.
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

// flatten: everything a kernel calls is inlined into it. GCC 12 had stopped inlining the
// functor into the bf16 loops once they had grown the precision modes (a call per vector, its
// operands through memory: plain bf16 AdamW at AVX2 0.72 -> 0.96 ns/element, bench/cpu_micro.cpp).
template <class A, class P, class S, int K, bool SR, int W>
[[gnu::flatten]] void update_kernel(const TensorStep& t, int64_t begin, int64_t end) {
  const typename A::template Math<compute_t<P>> f(t.scalars_as<typename A::Scalars>());
  elementwise(f, Streams<P, S, K, SR, W>(t), begin, end);
}

// stage 1 writes nothing: one kernel for either rounding
template <class A, class P, class S, int K, int W>
[[gnu::flatten]] void sums_kernel(const TensorStep& t, int64_t begin, int64_t end, double* sums) {
  const typename A::template Math<compute_t<P>> f(t.scalars_as<typename A::Scalars>());
  stage1_loop<false>(f, Streams<P, S, K, false, W>(t), begin, end, sums, nullptr);
}

// Note [kept update]: stage 1 writes the states with the rounding SR, stage 2 only the param's
// streams
template <class A, class P, class S, int K, bool SR, int W>
[[gnu::flatten]] void keep_kernel(const TensorStep& t, int64_t begin, int64_t end, double* sums,
                                  void* kept) {
  const typename A::template Math<compute_t<P>> f(t.scalars_as<typename A::Scalars>());
  stage1_loop<true>(f, Streams<P, S, K, SR, W>(t), begin, end, sums,
                    static_cast<compute_t<P>*>(kept));
}

template <class A, class P, class S, int K, int W>
[[gnu::flatten]] void apply_kernel(const TensorStep& t, int64_t begin, int64_t end,
                                   const void* kept) {
  const typename A::template Math<compute_t<P>> f(t.scalars_as<typename A::Scalars>());
  apply_loop(f, Streams<P, S, K, false, W>(t), begin, end,
             static_cast<const compute_t<P>*>(kept));
}

template <class A>
constexpr bool kKeepsUpdate = [] {
  if constexpr (requires { A::kKeepsUpdate; }) return A::kKeepsUpdate;
  return false;
}();

template <class T> constexpr DType kDType = kFloat;
template <> constexpr DType kDType<double> = kDouble;
template <> constexpr DType kDType<c10::Half> = kHalf;
template <> constexpr DType kDType<c10::BFloat16> = kBFloat16;

// The kernels of A for params in P and states in S in weights mode W, for each of A's
// state-list counts, with round-to-nearest states and, for bf16 states, stochastically rounded
// ones. Without states the kernel does not depend on S or the rounding: one kernel, P's, fills
// all of P's entries.
template <class A, class P, class S, int W, int States = A::kMinStates>
void fill_states(AlgoKernels& k) {
  constexpr int K = 1 + States;
  using Stored = std::conditional_t<States == 0, P, S>;
  constexpr bool kRounds = States > 0 && kIsBf16<S>;
  UpdateFn (&update)[2] = k.update[kDType<P>][kDType<S>][States][W];
  update[0] = &update_kernel<A, P, Stored, K, false, W>;
  update[1] = kRounds ? &update_kernel<A, P, Stored, K, kRounds, W> : update[0];
  if constexpr (A::kTwoStage && !kKeepsUpdate<A>) {
    k.sums[kDType<P>][kDType<S>][States][W] = &sums_kernel<A, P, Stored, K, W>;
  }
  if constexpr (kKeepsUpdate<A>) {
    KeepFn (&keep)[2] = k.keep[kDType<P>][kDType<S>][States][W];
    keep[0] = &keep_kernel<A, P, Stored, K, false, W>;
    keep[1] = kRounds ? &keep_kernel<A, P, Stored, K, kRounds, W> : keep[0];
    k.apply[kDType<P>][kDType<S>][States][W] = &apply_kernel<A, P, Stored, K, W>;
  }
  if constexpr (States < A::kMaxStates) fill_states<A, P, S, W, States + 1>(k);
}

// fp16/bf16 params in every weights mode, the others plain (Note [precision kernels])
template <class A, class P, class S>
void fill_modes(AlgoKernels& k) {
  fill_states<A, P, S, kPlain>(k);
  if constexpr (sizeof(P) == 2) {
    fill_states<A, P, S, kMaster>(k);
    fill_states<A, P, S, kKahan>(k);
  }
}

// The (param, state) dtype pairs of Note [precision modes] (docs/internals.md), which the
// validator (csrc/bucket.cpp) admits: nothing else is compiled (Note [precision kernels]).
// Build cost: the three kernels_*.cpp compile in 23.1 s one after the other (19.8 s before the
// precision modes, issue 25; g++ 12, -O3, load ~1 on 2 cores); a full `setup.py build_ext`
// takes ~5 min either way on this busy machine (MAX_JOBS=2), mostly the pybind11 and ATen
// headers of bindings.cpp and param_groups.cpp.
template <class A>
void fill(KernelTable& t) {
  AlgoKernels& k = t.algo[A::kId];
  k.prepare = &A::prepare;
  if constexpr (A::kTwoStage) k.finish = &A::finish;
  fill_modes<A, double, double>(k);
  fill_modes<A, float, float>(k);
  fill_modes<A, float, c10::BFloat16>(k);
  fill_modes<A, c10::Half, c10::Half>(k);
  fill_modes<A, c10::Half, float>(k);
  fill_modes<A, c10::Half, c10::BFloat16>(k);
  fill_modes<A, c10::BFloat16, c10::BFloat16>(k);
  fill_modes<A, c10::BFloat16, float>(k);
}

template <class S>
void fill_norm(KernelTable& t) {
  t.norm[kDType<S>][0] = &sum_squares_kernel<S>;
  t.norm[kDType<S>][1] = &max_abs_kernel<S>;
}

const KernelTable& table() {
  static const KernelTable t = [] {
    KernelTable k{};
    fill<Adam>(k);
    fill<Sgd>(k);
    fill<Lion>(k);
    fill<Lars>(k);
    fill<Lamb>(k);
    fill_norm<float>(k);
    fill_norm<double>(k);
    fill_norm<c10::Half>(k);
    fill_norm<c10::BFloat16>(k);
    return k;
  }();
  return t;
}

}  // namespace fusedopt::cpu::FUSEDOPT_ISA
