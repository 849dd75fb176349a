// Stage 1 of a two-stage algorithm (Note [two stages], csrc/algorithms.h): the kSums sums of
// squares of one chunk. Included inside namespace fusedopt::cpu::FUSEDOPT_ISA after
// elementwise.h.
//
// f.terms(g, x, out) gives one vector of elements' kSums terms (LARS: p and g; LAMB keeps its
// update instead: stage1_loop below); x holds the first F::kTermReads streams of elementwise() as
// Streams::load reads them (x[0] the value the update starts from: the param, its master copy,
// or the param plus its compensation; the states widened from their dtype), read only. Each term is squared and
// summed in double, lane by lane: a float squared in double is exact, so the sums differ from
// the reference's `x.double().square().sum()` by the order of additions only (float
// accumulators, as Note [norm accumulation] in norm.h, would add ~1e-6 relative error). The
// lanes' sums are added in lane order, then the tail's: a chunk's sums depend on its bounds
// and the level's lane count, never on the thread count. These adds were not what bound LAMB's
// stage 1 (its update's divider was, Note [two stages in cache], multi_tensor.h): a probe that
// widened the lanes in registers (GCC generic vectors, accumulators of the native width) took
// fp32 LAMB's stage 1 from 0.504 to 0.615 ns/element (AVX-512, in L2, one thread).
// (Namespace-scope templates, not lambdas: the ISA pragmas must reach every function.)
template <class C, class V>
void add_squares(const V (&terms)[kSums], double (&acc)[kSums][V::kLanes]) {
  for (int k = 0; k < kSums; ++k) {
    C lanes[V::kLanes];
    terms[k].to_array(lanes);
    for (int l = 0; l < V::kLanes; ++l) {
      const double t = static_cast<double>(lanes[l]);
      acc[k][l] += t * t;
    }
  }
}

template <class V>
void add_lanes(const double (&acc)[kSums][V::kLanes], double* total) {
  for (int k = 0; k < kSums; ++k) {
    for (int l = 0; l < V::kLanes; ++l) total[k] += acc[k][l];
  }
}

// One vector loop (then the tail) for both stage 1s: with kKeep, f.keep gives the update (to
// kept + i) and the same terms f.terms would, and leaves the new states in x, which are stored
// (Note [kept update], lamb.h); else f.terms reads the first R streams. The sums are added in one
// order either way, so a chunk's sums have the same bits on both.
template <class V, int R, bool kKeep, class P, class S, int K, bool SR, int W, class F>
void sum_squares_of_terms(const F& f, const Streams<P, S, K, SR, W>& s, int64_t& i, int64_t end,
                          double* total, compute_t<P>* kept) {
  double acc[kSums][V::kLanes] = {};
  for (; i + V::kLanes <= end; i += V::kLanes) {
    V x[R];
    s.load(i, x);
    V terms[kSums];
    if constexpr (kKeep) {
      f.keep(V::load(s.grad + i), x, terms).store(kept + i);
      s.store_states(i, x);
    } else {
      f.terms(V::load(s.grad + i), x, terms);
    }
    add_squares<compute_t<P>>(terms, acc);
  }
  add_lanes<V>(acc, total);
}

template <bool kKeep, class P, class S, int K, bool SR, int W, class F>
void stage1_loop(const F& f, const Streams<P, S, K, SR, W>& s, int64_t begin, int64_t end,
                 double* out, compute_t<P>* kept) {
  using C = compute_t<P>;
  constexpr int R = [] {   // the streams loaded: all with kKeep, else those f.terms reads
    if constexpr (kKeep) return K;
    else return F::kTermReads < K ? F::kTermReads : K;
  }();
  double total[kSums] = {};
  int64_t i = begin;
  sum_squares_of_terms<Vec<C>, R, kKeep>(f, s, i, end, total, kept);          // vectors
  sum_squares_of_terms<ScalarVec<C>, R, kKeep>(f, s, i, end, total, kept);    // tail
  for (int k = 0; k < kSums; ++k) out[k] = total[k];
}

// stage 2 with a kept update: x[0] from its streams, f.apply, the param's streams stored
template <class V, class P, class S, int K, bool SR, int W, class F>
void apply_kept(const F& f, const Streams<P, S, K, SR, W>& s, int64_t& i, int64_t end,
                const compute_t<P>* kept) {
  for (; i + V::kLanes <= end; i += V::kLanes) {
    V x[1];
    s.load(i, x);
    s.store_weights(i, f.apply(V::load(kept + i), x[0]));
  }
}

template <class P, class S, int K, bool SR, int W, class F>
void apply_loop(const F& f, const Streams<P, S, K, SR, W>& s, int64_t begin, int64_t end,
                const compute_t<P>* kept) {
  using C = compute_t<P>;
  int64_t i = begin;
  apply_kept<Vec<C>>(f, s, i, end, kept);
  apply_kept<ScalarVec<C>>(f, s, i, end, kept);
}
