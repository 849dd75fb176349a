// The per-chunk loops every algorithm runs in: full vectors, then a one-lane tail.
// Included inside namespace fusedopt::cpu::FUSEDOPT_ISA after Vec and ScalarVec.

// Compute type of a storage type: float for fp16/bf16/fp32, double for fp64.
template <class S> struct Compute { using type = float; };
template <> struct Compute<double> { using type = double; };
template <class S> using compute_t = typename Compute<S>::type;

// Runs f(grad, x) on elements [begin, end): x[0..K) are the read-write streams (param, then its
// states), loaded before and stored after the call. Every stream is read and written once, the
// 28 B/param of fp32 AdamW (bench/README.md, "Effective bandwidth").
// kMaster (fp16/bf16 params): x[0] is loaded from and stored to the fp32 master copy, and the
// param rw[0] only receives its rounding, never read (Note [master copy], bucket.h).
//
// Note [bf16 lane order]: bf16 streams are stepped two vectors at a time, 2 x kLanes elements
// (16 at AVX2, 32 at AVX-512) with lo = the even elements and hi = the odd ones: a bf16 pair
// is one 32-bit lane, so widening takes one shift (lo) or mask (hi) per vector, and narrowing
// one shift and one blend (AVX2) or ternary-logic op (AVX-512F) per two vectors. In element
// order, widening took a zero-extend and a shift per vector and narrowing a pack and a
// cross-lane permute (AVX2) or a 2-uop vpmovdw (AVX-512) per vector. The functors see plain
// vectors and work lane by lane, so the order is invisible to them; an fp32 master beside the
// bf16 streams is loaded and stored in the same order. The rest of a chunk takes the
// element-order vector loop and the one-lane tail, which round the same way (Note [bf16
// rounding] in vec_avx2.h), so a lane's bits do not depend on where it falls.
// Profile, AMD EPYC (Zen 4, KVM, 2 cores; avx512f/bw/vl/bf16, f16c), bench/cpu_micro.cpp:
// in cache, one thread, ns per element, before -> after this order:
//   AVX2    bf16 AdamW 0.907 -> 0.715, amsgrad 1.207 -> 0.895, SGD momentum 0.382 -> 0.243,
//           SGD 0.189 -> 0.123; the same in fp32: 0.428, 0.446, 0.103, 0.069
//   AVX-512 bf16 AdamW 0.617 -> 0.473, amsgrad 0.753 -> 0.581, SGD momentum 0.281 -> 0.205,
//           SGD 0.151 -> 0.113; fp32: 0.431, 0.464, 0.108, 0.072
// The gap to fp32 was the conversions: the bare `p += g` loop took 0.173 ns/element in bf16
// against 0.069 in fp32 at AVX2 (0.099 after), a bf16 store ~10 vector ops per 8 elements
// (6 after). The rounding itself (4 integer ops per vector) is what is left. fp16 converts
// with one F16C instruction each way and already cost what fp32 does (AdamW 0.449 at AVX2);
// the tail loop and the per-tensor set-up are below 1% of a step of 100K-element tensors.
template <bool kMaster, class S, int K, class F>
void elementwise(const F& f, const S* grad, S* const (&rw)[K], float* master, int64_t begin,
                 int64_t end) {
  using C = compute_t<S>;
  int64_t i = begin;
  if constexpr (std::is_same_v<S, c10::BFloat16> && Vec<C>::kLanes > 1) {
    // two vectors at a time (Note [bf16 lane order]); f sees each as usual
    constexpr int L = 2 * Vec<C>::kLanes;
    for (; i + L <= end; i += L) {
      Vec<C> lo[K], hi[K], g_lo, g_hi;
      if constexpr (kMaster) {
        Vec<C>::load_pair(master + i, lo[0], hi[0]);
      } else {
        Vec<C>::load_pair(rw[0] + i, lo[0], hi[0]);
      }
      for (int k = 1; k < K; ++k) Vec<C>::load_pair(rw[k] + i, lo[k], hi[k]);
      Vec<C>::load_pair(grad + i, g_lo, g_hi);
      f(g_lo, lo);
      f(g_hi, hi);
      if constexpr (kMaster) Vec<C>::store_pair(master + i, lo[0], hi[0]);
      for (int k = 0; k < K; ++k) Vec<C>::store_pair(rw[k] + i, lo[k], hi[k]);
    }
  }
  for (; i + Vec<C>::kLanes <= end; i += Vec<C>::kLanes) {
    Vec<C> x[K];
    if constexpr (kMaster) {
      x[0] = Vec<C>::load(master + i);
    } else {
      x[0] = Vec<C>::load(rw[0] + i);
    }
    for (int k = 1; k < K; ++k) x[k] = Vec<C>::load(rw[k] + i);
    f(Vec<C>::load(grad + i), x);
    if constexpr (kMaster) x[0].store(master + i);
    for (int k = 0; k < K; ++k) x[k].store(rw[k] + i);
  }
  for (; i < end; ++i) {
    ScalarVec<C> x[K];
    if constexpr (kMaster) {
      x[0] = ScalarVec<C>::load(master + i);
    } else {
      x[0] = ScalarVec<C>::load(rw[0] + i);
    }
    for (int k = 1; k < K; ++k) x[k] = ScalarVec<C>::load(rw[k] + i);
    f(ScalarVec<C>::load(grad + i), x);
    if constexpr (kMaster) x[0].store(master + i);
    for (int k = 0; k < K; ++k) x[k].store(rw[k] + i);
  }
}
