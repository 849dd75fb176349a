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
  // a copy, so that premix(key) and the Weyl term stay in registers: a bf16 store (a vector
  // store, which may alias anything) would otherwise force a reload through t.keys
  SrKey keys[K > 1 ? K - 1 : 1];

  explicit Streams(const TensorStep& t)
      : param(static_cast<P*>(t.param)),
        grad(static_cast<const P*>(t.grad)),
        states{},
        extra(t.extra),
        keys{} {
    for (int k = 1; k < K; ++k) {
      states[k - 1] = static_cast<S*>(t.states[k - 1]);
      keys[k - 1] = t.keys[k - 1];
    }
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
    store_weights(i, x[0]);
    store_states(i, x);
  }

  // the param's streams: the param, and its master copy or compensation
  template <class V>
  void store_weights(int64_t i, V x0) const {
    x0.store(param + i);
    if constexpr (W == kMaster) x0.store(master() + i);
    // Kahan: c = rn(x - float(p)) for the p just stored (reloaded: the store's own rounding)
    if constexpr (W == kKahan) (x0 - V::load(param + i)).store(compensation() + i);
  }

  template <class V>
  void store_states(int64_t i, V (&x)[K]) const {
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

  // Note [bf16 NaN check]: one test finds a NaN in any bf16 stream of the step, then the
  // streams are rounded and stored one by one, with the NaN fix-up (0x7FC0) only where the test
  // found one; a NaN's rounded bits are garbage. Kahan's c = rn(x - float(p)) takes float(p)
  // from p's rounded bits (their kept half, exactly what a reload of the stored p gives), not
  // from memory; c is NaN where x is inf or NaN, so the test takes x - x for p.
  // Profile (issues 25, 27; Zen 4, bench/cpu_micro.cpp, in cache, one thread): vdivps ymm
  // issues every 3.3 cycles and vsqrtps ymm every 5, so Adam's 2 divisions and 1 root per 8
  // lanes cost 0.42 ns/element at ~3.5 GHz: fp32 AdamW (0.42) is divider-bound, bf16 is not.
  // Probes that give wrong bits: divisions as multiplies take bf16 AdamW at AVX2 0.706 -> 0.537
  // (amsgrad 0.955 -> 0.663), no NaN fix-up at all 0.706 -> 0.657 (amsgrad 0.814, Kahan 0.966 ->
  // 0.801): the rest is the ~80 vector ops per 16 elements (widen, the functor, round, pack)
  // overlapping the divider badly. A test per stream and a fix-up branch after each cost most;
  // all streams' rounded bits held across one test spilled them (AVX2 RN 0.72 -> 0.75). A
  // second, stream-by-stream store path for the rare NaN keeps the registers free.
  // Before -> after this split (with the premixed hash of Note [stochastic rounding] in
  // vec_avx2.h and the in-place lsb of Note [bf16 rounding]), ns/element, min of 8 interleaved
  // runs (different binaries' layouts alone move a row ~5%):
  //   AVX2    RN 0.717 -> 0.668, amsgrad 0.915 -> 0.908, SR 0.972 -> 0.968,
  //           Kahan RN 0.889 -> 0.904, Kahan SR 1.146 -> 1.093, master 0.681 -> 0.70
  //   AVX-512 RN 0.487 -> 0.485, amsgrad 0.576 -> 0.581, SR 0.666 -> 0.634,
  //           Kahan RN 0.614 -> 0.583, Kahan SR 0.833 -> 0.774, master 0.462 -> 0.468
  // kNanInParam (the functor's kNanReachesParam: a NaN stored to any state is also a NaN in
  // x[0]): x[0]'s one compare per pair finds every NaN, and the states' compares go (AdamW: 2
  // of ~110 instructions per 16 elements at AVX2, amsgrad 3, with their ors). Zen 4, in cache,
  // one thread, ns/element, min of 3 interleaved runs of the two binaries:
  //   AVX2    RN 0.635 -> 0.624, amsgrad 0.870 -> 0.840, SR 0.940 -> 0.918,
  //           Kahan RN 0.858 -> 0.798, Kahan SR 1.079 -> 1.028 (master: no bf16 state, same)
  //   AVX-512 RN 0.475 -> 0.471, amsgrad 0.561 -> 0.549, Kahan RN 0.577 -> 0.573,
  //           Kahan SR 0.792 -> 0.752, SR 0.633 -> 0.628 (two of the three new runs 0.663)
  template <bool kNanInParam>
  void store_pair(int64_t i, Vec<C> (&lo)[K], Vec<C> (&hi)[K]) const {
    using V = Vec<C>;
    auto nan = V::nan_none();
    if constexpr (W == kKahan) {
      nan = V::nan_or(nan, lo[0] - lo[0], hi[0] - hi[0]);
    } else if constexpr (kIsBf16<P> || (kNanInParam && kIsBf16<S>)) {
      nan = V::nan_or(nan, lo[0], hi[0]);
    }
    if constexpr (kIsBf16<S> && !kNanInParam) {
      for (int k = 1; k < K; ++k) nan = V::nan_or(nan, lo[k], hi[k]);
    }
    if (V::nan_any(nan)) [[unlikely]] {
      store_pair_streams<true>(i, lo, hi);
    } else {
      store_pair_streams<false>(i, lo, hi);
    }
  }

  template <bool kFix, class Bits>
  static Bits fixed(Bits bits, Vec<C> x) {
    return kFix ? Vec<C>::nan_fix(bits, x) : bits;
  }

  template <bool kFix>
  void store_pair_streams(int64_t i, Vec<C> (&lo)[K], Vec<C> (&hi)[K]) const {
    using V = Vec<C>;
    if constexpr (kIsBf16<P>) {
      const typename V::Bits a = fixed<kFix>(V::rn_bits(lo[0]), lo[0]);
      const typename V::Bits b = fixed<kFix>(V::rn_bits(hi[0]), hi[0]);
      V::store_pair_bits(param + i, a, b);
      if constexpr (W == kKahan) {
        const V c_lo = lo[0] - V::kept(a), c_hi = hi[0] - V::kept(b);
        V::store_pair_bits(compensation() + i, fixed<kFix>(V::rn_bits(c_lo), c_lo),
                           fixed<kFix>(V::rn_bits(c_hi), c_hi));
      }
    } else {
      V::store_pair(param + i, lo[0], hi[0]);
    }
    if constexpr (W == kMaster) V::store_pair(master() + i, lo[0], hi[0]);
    if constexpr (kIsBf16<S>) {
      typename V::Bits even, odd;
      if constexpr (kStochastic) V::index_pair(static_cast<uint32_t>(i), even, odd);
      for (int k = 1; k < K; ++k) {
        typename V::Bits a, b;
        if constexpr (kStochastic) {
          a = V::sr_bits(lo[k], even, keys[k - 1]);
          b = V::sr_bits(hi[k], odd, keys[k - 1]);
        } else {
          a = V::rn_bits(lo[k]);
          b = V::rn_bits(hi[k]);
        }
        V::store_pair_bits(states[k - 1] + i, fixed<kFix>(a, lo[k]), fixed<kFix>(b, hi[k]));
      }
    } else {
      for (int k = 1; k < K; ++k) V::store_pair(states[k - 1] + i, lo[k], hi[k]);
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
//
// Note [compute and memory overlap] (issue 27): bf16 AdamW at AVX2 reached 0.64 of stream
// (README), and the guess was that its divider-heavy loop kept too few loads in flight for
// compute and memory to overlap. bench/cpu_micro.cpp, Zen 4 VM, AVX2, ns/element, min (median)
// of 7-21 interleaved runs, the machine loaded (4-6) by other work throughout:
// - One thread, thread CPU time: bf16 AdamW in cache 0.635 (0.637); from DRAM (20M elements)
//   0.667-0.679 (0.672); the same 14 B/element moved with no compute 0.264-0.275. fp32 AdamW
//   0.45 in cache, 0.59 from DRAM (28 B at 47 GB/s: the one-thread stream is 46 GB/s). So at one
//   thread DRAM time is max(compute, memory) + 5%, not their sum: the overlap is there.
// - Two threads in cache (2 x 64K elements): bf16 AdamW 0.38-0.42, amsgrad 0.48-0.52, fp32
//   0.27-0.32: compute scales 1.6-1.9x. The 2-thread torch add_ stream is 50-55 GB/s quiet
//   (19.7 measured at load 4.7), so 14 B is ~0.27 ns of memory per element against ~0.33-0.35
//   of compute: bf16 AdamW at AVX2 is compute-bound at two threads too; 0.8 of stream needs
//   its one-thread compute at ~0.6 and a full overlap (the 0.64 was 0.42 ns/element).
// - Not taken (each would have had to gain beyond the ~9% that layout alone moves a row:
//   identical fp32 code in two namespaces of one binary runs 0.41 and 0.45):
//   software prefetch of every stream 1024 elements ahead, DRAM, one thread: RN 0.67 -> 0.69-
//   0.72, amsgrad 0.965 -> 0.915, Kahan and SR unchanged; software pipelining (the next
//   pair's loads and functor before this pair's rounding and stores): RN 0.635 -> 0.698,
//   amsgrad 0.870 -> 0.947, Kahan RN 0.86 -> 0.97, SR 0.94 -> 0.91, master 0.76 -> 0.66-0.69;
//   use_l2 and lerp_small as constants (their branch and blend gone): RN 0.635 -> 0.655,
//   amsgrad 0.874 -> 0.908, master 0.757 -> 0.726. The divider (23 of the ~36 cycles per 16
//   elements) and the ~110 instructions around it are what is left; AVX-512 on Zen 4 takes
//   half the instructions per element (a 512-bit op is one op, double-pumped), hence 0.47.
// Note [bf16 NaN check]: a functor that declares kNanReachesParam = true guarantees that a
// NaN written to any of its states also leaves a NaN in x[0].
template <class F>
constexpr bool kNanReachesParam = [] {
  if constexpr (requires { F::kNanReachesParam; }) return F::kNanReachesParam;
  return false;
}();

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
      s.template store_pair<kNanReachesParam<F>>(i, lo, hi);
    }
  }
  elementwise_loop<Vec<C>>(f, s, i, end);
  elementwise_loop<ScalarVec<C>>(f, s, i, end);
}
