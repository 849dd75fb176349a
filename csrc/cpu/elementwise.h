// The per-chunk loops every algorithm runs in: full vectors, then a one-lane tail.
// Included inside namespace fusedopt::cpu::FUSEDOPT_ISA after Vec and ScalarVec.

// Compute type of a param dtype: float for fp16/bf16/fp32, double for fp64.
template <class P> struct Compute { using type = float; };
template <> struct Compute<double> { using type = double; };
template <class P> using compute_t = typename Compute<P>::type;

template <class T> constexpr bool kIsBf16 = std::is_same_v<T, c10::BFloat16>;
template <class T> constexpr bool kIsHalf = std::is_same_v<T, c10::Half>;

// Note [precision kernels]: a kernel is compiled per (param dtype P, state dtype S, number of
// state lists, weights mode W) and, for bf16 states, per rounding (nearest or stochastic): the
// 8 (P, S) pairs of Note [precision modes] (docs/internals.md: fp64/fp64, fp32/fp32, fp32/bf16,
// fp16/fp16, fp16/fp32, fp16/bf16, bf16/bf16, bf16/fp32), the weights modes kMaster and kKahan
// for fp16/bf16 params only. The weights mode read at run time, one branch per vector, had cost
// plain bf16 AdamW (bf16 states) 40% (bench/cpu_micro.cpp, Zen 4, in cache, one thread,
// ns/element: AVX2 0.75 -> 1.08, AVX-512 0.48 -> 0.675), the rounding as a runtime branch too
// AVX2 1.5.
//
// Streams: the memory of one tensor's step and how it is read and written. x[0] is the value
// the step starts from (the param, its fp32 master copy, or the param plus its compensation),
// x[1..K) the states; grads are read apart (load_grad).
template <class P, class S, int K, bool kStochastic, int W>
struct Streams {
  using C = compute_t<P>;
  static_assert(!kStochastic || kIsBf16<S>);
  static_assert(W == kPlain || sizeof(P) == 2);
  // Note [bf16 lane order]: the even/odd order where a bf16 stream makes it pay and every
  // stream has a pair load (bf16 and fp32; fp16 converts in element order)
  static constexpr bool kPairs =
      Vec<C>::kLanes > 1 && (kIsBf16<P> || kIsBf16<S>) && !kIsHalf<P> && !kIsHalf<S>;

  P* param;
  const P* grad;
  S* states[K > 1 ? K - 1 : 1];
  void* extra;
  const SrKey* keys;

  explicit Streams(const TensorStep& t)
      : param(static_cast<P*>(t.param)),
        grad(static_cast<const P*>(t.grad)),
        states{},
        extra(t.extra),
        keys(t.keys) {
    for (int k = 1; k < K; ++k) states[k - 1] = static_cast<S*>(t.states[k - 1]);
  }

  float* master() const { return static_cast<float*>(extra); }
  P* compensation() const { return static_cast<P*>(extra); }

  // x[0..R) at element i, in element order (V: Vec<C> or ScalarVec<C>)
  template <class V, int R>
  void load(int64_t i, V (&x)[R]) const {
    if constexpr (W == kMaster) {
      x[0] = V::load(master() + i);
    } else {
      x[0] = V::load(param + i);
      // Kahan: the step starts from float(p) + float(c), in fp32
      if constexpr (W == kKahan) x[0] = x[0] + V::load(compensation() + i);
    }
    for (int k = 1; k < R; ++k) x[k] = V::load(states[k - 1] + i);
  }

  template <class V>
  void store(int64_t i, V (&x)[K]) const {
    x[0].store(param + i);
    if constexpr (W == kMaster) x[0].store(master() + i);
    // Kahan: c = rn(x - float(p)) for the p just stored (reloaded: the store's own rounding)
    if constexpr (W == kKahan) (x[0] - V::load(param + i)).store(compensation() + i);
    for (int k = 1; k < K; ++k) {
      if constexpr (kStochastic) {
        x[k].store_sr(states[k - 1] + i, static_cast<uint32_t>(i), keys[k - 1]);
      } else {
        x[k].store(states[k - 1] + i);
      }
    }
  }

  // The pair order of Note [bf16 lane order]: lo holds elements i, i + 2, .., hi i + 1, i + 3, ..
  template <int R>
  void load_pair(int64_t i, Vec<C> (&lo)[R], Vec<C> (&hi)[R]) const {
    if constexpr (W == kMaster) {
      Vec<C>::load_pair(master() + i, lo[0], hi[0]);
    } else {
      Vec<C>::load_pair(param + i, lo[0], hi[0]);
      if constexpr (W == kKahan) {
        Vec<C> c_lo, c_hi;
        Vec<C>::load_pair(compensation() + i, c_lo, c_hi);
        lo[0] = lo[0] + c_lo;
        hi[0] = hi[0] + c_hi;
      }
    }
    for (int k = 1; k < R; ++k) Vec<C>::load_pair(states[k - 1] + i, lo[k], hi[k]);
  }

  void store_pair(int64_t i, Vec<C> (&lo)[K], Vec<C> (&hi)[K]) const {
    Vec<C>::store_pair(param + i, lo[0], hi[0]);
    if constexpr (W == kMaster) Vec<C>::store_pair(master() + i, lo[0], hi[0]);
    if constexpr (W == kKahan) {
      Vec<C> p_lo, p_hi;
      Vec<C>::load_pair(param + i, p_lo, p_hi);
      Vec<C>::store_pair(compensation() + i, lo[0] - p_lo, hi[0] - p_hi);
    }
    for (int k = 1; k < K; ++k) {
      if constexpr (kStochastic) {
        Vec<C>::store_pair_sr(states[k - 1] + i, lo[k], hi[k], static_cast<uint32_t>(i),
                              keys[k - 1]);
      } else {
        Vec<C>::store_pair(states[k - 1] + i, lo[k], hi[k]);
      }
    }
  }
};

// Runs f(grad, x) on elements [i, end) of the streams, V::kLanes at a time, while they last.
// Every stream is read and written once, the 28 B/param of fp32 AdamW (bench/README.md,
// "Effective bandwidth"). (Namespace-scope templates, not lambdas: the ISA pragmas must reach
// every function.)
template <class V, class P, class S, int K, bool R, int W, class F>
void elementwise_loop(const F& f, const Streams<P, S, K, R, W>& s, int64_t& i, int64_t end) {
  for (; i + V::kLanes <= end; i += V::kLanes) {
    V x[K];
    s.load(i, x);
    f(V::load(s.grad + i), x);
    s.store(i, x);
  }
}

// Note [bf16 lane order]: bf16 streams are stepped two vectors at a time, 2 x kLanes elements
// (16 at AVX2, 32 at AVX-512) with lo = the even elements and hi = the odd ones: a bf16 pair
// is one 32-bit lane, so widening takes one shift (lo) or mask (hi) per vector, and narrowing
// one shift and one blend (AVX2) or ternary-logic op (AVX-512F) per two vectors. In element
// order, widening took a zero-extend and a shift per vector and narrowing a pack and a
// cross-lane permute (AVX2) or a 2-uop vpmovdw (AVX-512) per vector. The functors see plain
// vectors and work lane by lane, so the order is invisible to them; fp32 streams beside the
// bf16 ones (a master copy, fp32 states or params) are loaded and stored in the same order.
// The rest of a chunk takes the element-order vector loop and the one-lane tail, which round
// the same way (Note [bf16 rounding] in vec_avx2.h), so a lane's bits do not depend on where
// it falls.
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
template <class P, class S, int K, bool R, int W, class F>
void elementwise(const F& f, const Streams<P, S, K, R, W>& s, int64_t begin, int64_t end) {
  using C = compute_t<P>;
  int64_t i = begin;
  if constexpr (Streams<P, S, K, R, W>::kPairs) {
    constexpr int L = 2 * Vec<C>::kLanes;
    for (; i + L <= end; i += L) {
      Vec<C> lo[K], hi[K], g_lo, g_hi;
      s.load_pair(i, lo, hi);
      Vec<C>::load_pair(s.grad + i, g_lo, g_hi);
      f(g_lo, lo);
      f(g_hi, hi);
      s.store_pair(i, lo, hi);
    }
  }
  elementwise_loop<Vec<C>>(f, s, i, end);
  elementwise_loop<ScalarVec<C>>(f, s, i, end);
}
