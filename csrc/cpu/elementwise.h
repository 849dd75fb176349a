// The per-chunk loops every algorithm runs in: full vectors, then a one-lane tail.
// Included inside namespace fusedopt::cpu::FUSEDOPT_ISA after Vec and ScalarVec.

// Compute type of a storage type: float for fp16/bf16/fp32, double for fp64.
template <class S> struct Compute { using type = float; };
template <> struct Compute<double> { using type = double; };
template <class S> using compute_t = typename Compute<S>::type;

// Runs f(grad, x) on elements [begin, end): x[0..K) are the read-write streams (param, then its
// states), loaded before and stored after the call. Every stream is read and written once, the
// 28 B/param of fp32 AdamW (bench/README.md, "Effective bandwidth").
template <class S, int K, class F>
void elementwise(const F& f, const S* grad, S* const (&rw)[K], int64_t begin, int64_t end) {
  using C = compute_t<S>;
  int64_t i = begin;
  for (; i + Vec<C>::kLanes <= end; i += Vec<C>::kLanes) {
    Vec<C> x[K];
    for (int k = 0; k < K; ++k) x[k] = Vec<C>::load(rw[k] + i);
    f(Vec<C>::load(grad + i), x);
    for (int k = 0; k < K; ++k) x[k].store(rw[k] + i);
  }
  for (; i < end; ++i) {
    ScalarVec<C> x[K];
    for (int k = 0; k < K; ++k) x[k] = ScalarVec<C>::load(rw[k] + i);
    f(ScalarVec<C>::load(grad + i), x);
    for (int k = 0; k < K; ++k) x[k].store(rw[k] + i);
  }
}
