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
template <bool kMaster, class S, int K, class F>
void elementwise(const F& f, const S* grad, S* const (&rw)[K], float* master, int64_t begin,
                 int64_t end) {
  using C = compute_t<S>;
  int64_t i = begin;
  if constexpr (std::is_same_v<S, c10::BFloat16> && Vec<C>::kLanes > 1) {
    // two vectors at a time, in the order of Note [bf16 lane order]: f sees each as usual
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
