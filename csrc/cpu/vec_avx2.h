// 256-bit vectors (AVX2 + FMA + F16C). Included inside namespace fusedopt::cpu::avx2, under
// #pragma GCC target (kernels_avx2.cpp).
template <class C>
struct Vec;

template <>
struct Vec<float> {
  static constexpr int kLanes = 8;
  __m256 v;

  static Vec set1(float x) { return {_mm256_set1_ps(x)}; }
  static Vec load(const float* p) { return {_mm256_loadu_ps(p)}; }
  static Vec load(const c10::Half* p) {
    return {_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)))};
  }
  static Vec load(const c10::BFloat16* p) {   // bf16 is the top half of a float: exact
    __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return {_mm256_castsi256_ps(_mm256_slli_epi32(w, 16))};
  }
  void store(float* p) const { _mm256_storeu_ps(p, v); }
  void store(c10::Half* p) const {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p),
                     _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  void store(c10::BFloat16* p) const { store_bits(p, bf16_nan(bf16_round(v), v)); }
  // Note [stochastic rounding]: the lanes are elements j0, j0 + 1, .., j0 + 7
  void store_sr(c10::BFloat16* p, uint32_t j0, SrKey key) const {
    store_bits(p, bf16_nan(sr_bits(*this, hash_premix(index_hash_input(j0, lane_offsets<1>())),
                                   key), v));
  }
  static void store_bits(c10::BFloat16* p, __m256i bits) {
    // lane order kept: shift the kept halves down, then gather them across the 128-bit lanes
    __m256i r = _mm256_srli_epi32(bits, 16);
    __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0x08);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_castsi256_si128(packed));
  }

  // Two vectors in the even/odd order of Note [bf16 lane order] (elementwise.h): lo holds
  // elements 0, 2, .., 14 and hi 1, 3, .., 15. One bf16 pair is one 32-bit lane, so widening
  // is a shift (lo) and a mask (hi), narrowing a shift and a 16-bit blend per two vectors.
  // Storing is split for Note [bf16 NaN check]: the bits with their rounding increment
  // (rn_bits, sr_bits), the NaN test of all of a step's streams at once, the fix-up, the store.
  using Bits = __m256i;
  using NanMask = __m256;
  static void load_pair(const c10::BFloat16* p, Vec& lo, Vec& hi) {
    __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    lo.v = _mm256_castsi256_ps(_mm256_slli_epi32(x, 16));
    hi.v = _mm256_castsi256_ps(_mm256_and_si256(x, _mm256_set1_epi32(0xFFFF0000)));
  }
  static Bits rn_bits(Vec x) { return bf16_round(x.v); }
  // the value a bf16 store of these bits holds (exact: their kept half)
  static Vec kept(Bits bits) {
    return {_mm256_castsi256_ps(_mm256_and_si256(bits, _mm256_set1_epi32(0xFFFF0000)))};
  }
  static NanMask nan_none() { return _mm256_setzero_ps(); }
  static NanMask nan_or(NanMask m, Vec lo, Vec hi) {   // one compare for two vectors
    return _mm256_or_ps(m, _mm256_cmp_ps(lo.v, hi.v, _CMP_UNORD_Q));
  }
  static bool nan_any(NanMask m) { return !_mm256_testz_ps(m, m); }
  static Bits nan_fix(Bits bits, Vec x) { return bf16_nan(bits, x.v); }
  // a and b: lo's and hi's bits, rounding increment added and NaNs fixed
  static void store_pair_bits(c10::BFloat16* p, Bits a, Bits b) {
    __m256i x = _mm256_blend_epi16(_mm256_srli_epi32(a, 16), b, 0xAA);   // odd words from b
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), x);
  }
  // Note [stochastic rounding]: element j0 + 2l is lo's lane l, j0 + 2l + 1 hi's; the hash
  // inputs, premixed, for every state list of the step
  static void index_pair(uint32_t j0, Bits& even, Bits& odd) {
    __m256i e = index_hash_input(j0, lane_offsets<2>());
    even = hash_premix(e);
    odd = hash_premix(_mm256_add_epi32(e, _mm256_set1_epi32(static_cast<int>(kIndexMultiplier))));
  }
  // fp32 streams beside bf16 ones (the master copy): the same order, two shuffles per vector
  static void load_pair(const float* p, Vec& lo, Vec& hi) {
    __m256 a = _mm256_loadu_ps(p), b = _mm256_loadu_ps(p + 8);
    // shuffle_ps leaves (0 2)(8 10)(4 6)(12 14) in 64-bit blocks; 0xD8 orders them 0, 2, 1, 3
    lo.v = _mm256_castpd_ps(
        _mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(a, b, 0x88)), 0xD8));
    hi.v = _mm256_castpd_ps(
        _mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(a, b, 0xDD)), 0xD8));
  }
  static void store_pair(float* p, Vec lo, Vec hi) {
    __m256 l = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(lo.v), 0xD8));
    __m256 h = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(hi.v), 0xD8));
    _mm256_storeu_ps(p, _mm256_unpacklo_ps(l, h));
    _mm256_storeu_ps(p + 8, _mm256_unpackhi_ps(l, h));
  }

  // Note [bf16 rounding]: c10's round_to_nearest_even, lane-wise: bits + 0x7FFF + the lsb of
  // the kept half, whose high 16 bits are the bf16 (the low 16 are left as garbage); a NaN
  // becomes 0x7FC0 as in c10, at every level and in every loop. That NaN is fusedopt's
  // choice, not torch's: torch 2.13 writes 0xFFFF for a NaN in a vectorised bf16 op and
  // 0x7FC0 in its scalar loop (add_ on 120 elements vs on 6), so tests compare NaN
  // positions, not their bits, against torch. Not taken: a float-add rounding (x + c - c,
  // c from x's exponent) takes as many ops and needs fix-ups for subnormals and huge x;
  // AVX512_BF16's vcvtne2ps2bf16 flushes subnormals (a fix-up branch) and needs a CPU check
  // beyond avx512f, for an estimated (not measured) 0.05 ns/element: a bf16 AVX-512 AdamW
  // is already within 10% of fp16's 0.43 ns/element in cache (Note [bf16 lane order]).
  // The lsb is tested in place (and, compare: -1 where set) rather than shifted down: Zen 4
  // issues 2 shifts a cycle against 4 adds or compares; RN AdamW at AVX2 0.680 -> 0.668
  // ns/element (Note [bf16 NaN check], elementwise.h).
  static __m256i bf16_round(__m256 v) {
    __m256i bits = _mm256_castps_si256(v);
    const __m256i lsb = _mm256_set1_epi32(0x10000);
    __m256i odd = _mm256_cmpeq_epi32(_mm256_and_si256(bits, lsb), lsb);
    return _mm256_sub_epi32(_mm256_add_epi32(bits, _mm256_set1_epi32(0x7FFF)), odd);
  }
  // Note [stochastic rounding], lane by lane: j * kIndexMultiplier is linear in j, so a vector
  // of them is one broadcast and one add (offsets: lane l's element offset times the
  // multiplier), then sr_mix's one 32-bit multiply; bits + (hash >> 16) is the increment, a
  // NaN takes bf16_nan's fix-up as in round-to-nearest. sr_mix's xor-shift is split:
  // (j*M ^ key) ^ ((j*M ^ key) >> 16) == premix(j*M) ^ premix(key), so premix(j*M) is
  // computed once for all the state lists of a step and premix(key) is a scalar.
  static __m256i index_hash_input(uint32_t j0, __m256i offsets) {
    return _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(j0 * kIndexMultiplier)), offsets);
  }
  static __m256i hash_premix(__m256i h) { return _mm256_xor_si256(h, _mm256_srli_epi32(h, 16)); }
  static Bits sr_bits(Vec x, __m256i premixed, SrKey key) {
    __m256i h = _mm256_xor_si256(premixed, _mm256_set1_epi32(static_cast<int>(
                                               key.key ^ (key.key >> 16))));
    h = _mm256_mullo_epi32(h, _mm256_set1_epi32(static_cast<int>(0x85EBCA6Bu)));
    h = _mm256_add_epi32(h, _mm256_set1_epi32(static_cast<int>(key.weyl)));
    return _mm256_add_epi32(_mm256_castps_si256(x.v), _mm256_srli_epi32(h, 16));
  }
  // lane l: (kStep * l) * kIndexMultiplier, a constant (no static vector: its initialiser
  // would run AVX2 code when the library loads, on any CPU)
  template <uint32_t kStep>
  static __m256i lane_offsets() {
    return _mm256_setr_epi32(index_offset(kStep * 0), index_offset(kStep * 1),
                             index_offset(kStep * 2), index_offset(kStep * 3),
                             index_offset(kStep * 4), index_offset(kStep * 5),
                             index_offset(kStep * 6), index_offset(kStep * 7));
  }

  static __m256i bf16_nan(__m256i rounded, __m256 v) {
    return _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(rounded),
                                                _mm256_castsi256_ps(_mm256_set1_epi32(0x7FC00000)),
                                                _mm256_cmp_ps(v, v, _CMP_UNORD_Q)));
  }

  static Vec add(Vec a, Vec b) { return {_mm256_add_ps(a.v, b.v)}; }
  static Vec sub(Vec a, Vec b) { return {_mm256_sub_ps(a.v, b.v)}; }
  static Vec mul(Vec a, Vec b) { return {_mm256_mul_ps(a.v, b.v)}; }
  static Vec div(Vec a, Vec b) { return {_mm256_div_ps(a.v, b.v)}; }
  static Vec fmadd(Vec a, Vec b, Vec c) { return {_mm256_fmadd_ps(a.v, b.v, c.v)}; }
  static Vec sqrt(Vec a) { return {_mm256_sqrt_ps(a.v)}; }
  static Vec select(bool take_a, Vec a, Vec b) {
    return {_mm256_blendv_ps(b.v, a.v, _mm256_castsi256_ps(_mm256_set1_epi32(-int{take_a})))};
  }
  static Vec abs(Vec a) { return {_mm256_andnot_ps(_mm256_set1_ps(-0.0f), a.v)}; }
  static Vec max_nan(Vec a, Vec b) {   // maxps returns b when either is NaN: patch a's NaNs
    return {_mm256_blendv_ps(_mm256_max_ps(a.v, b.v), a.v, _mm256_cmp_ps(a.v, a.v, _CMP_UNORD_Q))};
  }
  void to_array(float* out) const { _mm256_storeu_ps(out, v); }
};

template <>
struct Vec<double> {
  static constexpr int kLanes = 4;
  __m256d v;

  static Vec set1(double x) { return {_mm256_set1_pd(x)}; }
  static Vec load(const double* p) { return {_mm256_loadu_pd(p)}; }
  void store(double* p) const { _mm256_storeu_pd(p, v); }

  static Vec add(Vec a, Vec b) { return {_mm256_add_pd(a.v, b.v)}; }
  static Vec sub(Vec a, Vec b) { return {_mm256_sub_pd(a.v, b.v)}; }
  static Vec mul(Vec a, Vec b) { return {_mm256_mul_pd(a.v, b.v)}; }
  static Vec div(Vec a, Vec b) { return {_mm256_div_pd(a.v, b.v)}; }
  static Vec fmadd(Vec a, Vec b, Vec c) { return {_mm256_fmadd_pd(a.v, b.v, c.v)}; }
  static Vec sqrt(Vec a) { return {_mm256_sqrt_pd(a.v)}; }
  static Vec select(bool take_a, Vec a, Vec b) {
    return {_mm256_blendv_pd(b.v, a.v, _mm256_castsi256_pd(_mm256_set1_epi64x(-int64_t{take_a})))};
  }
  static Vec abs(Vec a) { return {_mm256_andnot_pd(_mm256_set1_pd(-0.0), a.v)}; }
  static Vec max_nan(Vec a, Vec b) {
    return {_mm256_blendv_pd(_mm256_max_pd(a.v, b.v), a.v, _mm256_cmp_pd(a.v, a.v, _CMP_UNORD_Q))};
  }
  void to_array(double* out) const { _mm256_storeu_pd(out, v); }
};
