// Norm reductions of one chunk. Included inside namespace fusedopt::cpu::FUSEDOPT_ISA.
//
// Note [norm accumulation]: a chunk is read as four streams at once (its quarters, one vector
// accumulator each): one core then keeps more reads in flight, 31-36 GB/s instead of 22-30
// GB/s for one stream (fp32, 80 MB, 1 thread, runs alternated). Squares are summed in the
// compute type over blocks of 16 vectors per quarter, and each block's partial is added into
// a double: a float lane sums 16 products before widening (relative error <= 16 * 6e-8 =
// 1e-6, under fp32's 2e-5 tolerance), the double total keeps a 2^30-element grad accurate,
// and the widening costs a few cycles per block. Chunk partials are combined in chunk order
// (ops.cpp), so the result does not depend on the number of threads.
template <class S>
double sum_squares_kernel(const void* data, int64_t begin, int64_t end) {
  using C = compute_t<S>;
  using V = Vec<C>;
  constexpr int64_t kBlock = 16 * V::kLanes;   // elements per quarter between widenings
  const S* x = static_cast<const S*>(data) + begin;
  const int64_t n = end - begin;
  const int64_t quarter = n / (4 * V::kLanes) * V::kLanes;
  double total = 0;
  for (int64_t j = 0; j < quarter;) {
    V acc[4] = {V::set1(0), V::set1(0), V::set1(0), V::set1(0)};
    for (int64_t block_end = std::min(quarter, j + kBlock); j < block_end; j += V::kLanes) {
      for (int k = 0; k < 4; ++k) {
        V a = V::load(x + k * quarter + j);
        acc[k] = fma(a, a, acc[k]);
      }
    }
    C lanes[V::kLanes];
    ((acc[0] + acc[1]) + (acc[2] + acc[3])).to_array(lanes);
    for (C lane : lanes) total += static_cast<double>(lane);
  }
  for (int64_t i = 4 * quarter; i < n; ++i) {
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
