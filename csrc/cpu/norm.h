// Norm reductions of one chunk. Included inside namespace fusedopt::cpu::FUSEDOPT_ISA.
//
// Note [norm accumulation]: squares are summed in the compute type by 4 independent vector
// accumulators (for the adds' latency) over blocks of kNormBlock elements, and each block's
// partial is added into a double. A float lane thus sums at most 16 products before
// widening (relative error ~16 * 6e-8 = 1e-6, under fp32's 2e-5 tolerance), while the
// double total keeps a 2^30-element grad accurate; the widening costs a few cycles per
// kNormBlock elements. Chunk partials are combined in chunk order (ops.cpp), so the result
// does not depend on the number of threads.
constexpr int64_t kNormBlock = 1024;

template <class S>
double sum_squares_kernel(const void* data, int64_t begin, int64_t end) {
  using C = compute_t<S>;
  using V = Vec<C>;
  constexpr int64_t kStep = 4 * V::kLanes;
  const S* x = static_cast<const S*>(data);
  double total = 0;
  int64_t i = begin;
  while (i + kStep <= end) {
    V acc[4] = {V::set1(0), V::set1(0), V::set1(0), V::set1(0)};
    int64_t block_end = std::min(end, i + kNormBlock);
    for (; i + kStep <= block_end; i += kStep) {
      for (int k = 0; k < 4; ++k) {
        V a = V::load(x + i + k * V::kLanes);
        acc[k] = fma(a, a, acc[k]);
      }
    }
    C lanes[V::kLanes];
    ((acc[0] + acc[1]) + (acc[2] + acc[3])).to_array(lanes);
    for (C lane : lanes) total += static_cast<double>(lane);
  }
  for (; i < end; ++i) {
    double a = static_cast<double>(ScalarVec<C>::load(x + i).v);
    total += a * a;
  }
  return total;
}

template <class S>
double max_abs_kernel(const void* data, int64_t begin, int64_t end) {
  using C = compute_t<S>;
  using V = Vec<C>;
  const S* x = static_cast<const S*>(data);
  V acc = V::set1(0);
  int64_t i = begin;
  for (; i + V::kLanes <= end; i += V::kLanes) acc = max_nan(abs(V::load(x + i)), acc);
  C lanes[V::kLanes];
  acc.to_array(lanes);
  ScalarVec<C> m = ScalarVec<C>::set1(0);
  for (C lane : lanes) m = max_nan(ScalarVec<C>::set1(lane), m);
  for (; i < end; ++i) m = max_nan(abs(ScalarVec<C>::load(x + i)), m);
  return static_cast<double>(m.v);
}
