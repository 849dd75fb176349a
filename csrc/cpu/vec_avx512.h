// 512-bit vectors (AVX-512F + FMA + F16C). Included inside namespace fusedopt::cpu::avx512,
// under #pragma GCC target (kernels_avx512.cpp).
template <class C>
struct Vec;

template <>
struct Vec<float> {
  static constexpr int kLanes = 16;
  __m512 v;

  static Vec set1(float x) { return {_mm512_set1_ps(x)}; }
  static Vec load(const float* p) { return {_mm512_loadu_ps(p)}; }
  static Vec load(const c10::Half* p) {
    return {_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)))};
  }
  static Vec load(const c10::BFloat16* p) {   // bf16 is the top half of a float: exact
    __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return {_mm512_castsi512_ps(_mm512_slli_epi32(w, 16))};
  }
  void store(float* p) const { _mm512_storeu_ps(p, v); }
  void store(c10::Half* p) const {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p),
                        _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  void store(c10::BFloat16* p) const { store_bits(p, bf16_nan(bf16_round(v), v)); }
  // Note [stochastic rounding]: the lanes are elements j0, j0 + 1, .., j0 + 15
  void store_sr(c10::BFloat16* p, uint32_t j0, SrKey key) const {
    store_bits(p, bf16_nan(sr_bits(*this, hash_premix(index_hash_input(j0, lane_offsets<1>())),
                                   key), v));
  }
  static void store_bits(c10::BFloat16* p, __m512i bits) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p),
                        _mm512_cvtepi32_epi16(_mm512_srli_epi32(bits, 16)));
  }

  // Two vectors in the even/odd order of Note [bf16 lane order] (elementwise.h), with
  // AVX-512F alone (no BW): narrowing is one shift and one ternary-logic op per two vectors
  // instead of a 2-uop vpmovdw per vector. The store is split as in vec_avx2.h (Note [bf16
  // NaN check]); the NaN test is one compare into a mask register per two vectors.
  using Bits = __m512i;
  using NanMask = __mmask16;
  static void load_pair(const c10::BFloat16* p, Vec& lo, Vec& hi) {
    __m512i x = _mm512_loadu_si512(p);
    lo.v = _mm512_castsi512_ps(_mm512_slli_epi32(x, 16));
    hi.v = _mm512_castsi512_ps(_mm512_and_si512(x, _mm512_set1_epi32(0xFFFF0000)));
  }
  static Bits rn_bits(Vec x) { return bf16_round(x.v); }
  static Vec kept(Bits bits) {   // the value a bf16 store of these bits holds
    return {_mm512_castsi512_ps(_mm512_and_si512(bits, _mm512_set1_epi32(0xFFFF0000)))};
  }
  static NanMask nan_none() { return 0; }
  static NanMask nan_or(NanMask m, Vec lo, Vec hi) {
    return m | _mm512_cmp_ps_mask(lo.v, hi.v, _CMP_UNORD_Q);
  }
  static bool nan_any(NanMask m) { return m != 0; }
  static Bits nan_fix(Bits bits, Vec x) { return bf16_nan(bits, x.v); }
  // a and b: lo's and hi's bits, rounding increment added and NaNs fixed
  static void store_pair_bits(c10::BFloat16* p, Bits a, Bits b) {
    // (a >> 16) | (b & 0xFFFF0000): 0xF8 is A | (B & C) (truth table bit 4a + 2b + c)
    __m512i x = _mm512_ternarylogic_epi32(_mm512_srli_epi32(a, 16), b,
                                          _mm512_set1_epi32(0xFFFF0000), 0xF8);
    _mm512_storeu_si512(p, x);
  }
  // Note [stochastic rounding]: element j0 + 2l is lo's lane l, j0 + 2l + 1 hi's
  static void index_pair(uint32_t j0, Bits& even, Bits& odd) {
    __m512i e = index_hash_input(j0, lane_offsets<2>());
    even = hash_premix(e);
    odd = hash_premix(_mm512_add_epi32(e, _mm512_set1_epi32(static_cast<int>(kIndexMultiplier))));
  }
  // fp32 streams beside bf16 ones (the master copy): one two-source permute per vector
  static void load_pair(const float* p, Vec& lo, Vec& hi) {
    __m512 a = _mm512_loadu_ps(p), b = _mm512_loadu_ps(p + 16);
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26,
                                           28, 30);
    lo.v = _mm512_permutex2var_ps(a, even, b);
    hi.v = _mm512_permutex2var_ps(a, _mm512_add_epi32(even, _mm512_set1_epi32(1)), b);
  }
  static void store_pair(float* p, Vec lo, Vec hi) {
    // element 2k is lo[k], 2k + 1 is hi[k]; index 16 + k names hi[k]
    const __m512i first = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22,
                                            7, 23);
    _mm512_storeu_ps(p, _mm512_permutex2var_ps(lo.v, first, hi.v));
    _mm512_storeu_ps(p + 16, _mm512_permutex2var_ps(
                                 lo.v, _mm512_add_epi32(first, _mm512_set1_epi32(8)), hi.v));
  }

  // Note [bf16 rounding] (vec_avx2.h); the NaN lanes take 0x7FC0 in one masked move
  static __m512i bf16_round(__m512 v) {
    __m512i bits = _mm512_castps_si512(v);
    __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
    return _mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF)));
  }
  static __m512i bf16_nan(__m512i rounded, __m512 v) {
    return _mm512_mask_mov_epi32(_mm512_set1_epi32(0x7FC00000),
                                 _mm512_cmp_ps_mask(v, v, _CMP_ORD_Q), rounded);
  }
  // Note [stochastic rounding], as vec_avx2.h's (AVX-512F has the 32-bit multiply too)
  static __m512i index_hash_input(uint32_t j0, __m512i offsets) {
    return _mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(j0 * kIndexMultiplier)), offsets);
  }
  static __m512i hash_premix(__m512i h) { return _mm512_xor_si512(h, _mm512_srli_epi32(h, 16)); }
  static Bits sr_bits(Vec x, __m512i premixed, SrKey key) {
    __m512i h = _mm512_xor_si512(premixed, _mm512_set1_epi32(static_cast<int>(
                                               key.key ^ (key.key >> 16))));
    h = _mm512_mullo_epi32(h, _mm512_set1_epi32(static_cast<int>(0x85EBCA6Bu)));
    h = _mm512_add_epi32(h, _mm512_set1_epi32(static_cast<int>(key.weyl)));
    return _mm512_add_epi32(_mm512_castps_si512(x.v), _mm512_srli_epi32(h, 16));
  }
  template <uint32_t kStep>   // lane l: (kStep * l) * kIndexMultiplier
  static __m512i lane_offsets() {
    return _mm512_setr_epi32(
        index_offset(kStep * 0), index_offset(kStep * 1), index_offset(kStep * 2),
        index_offset(kStep * 3), index_offset(kStep * 4), index_offset(kStep * 5),
        index_offset(kStep * 6), index_offset(kStep * 7), index_offset(kStep * 8),
        index_offset(kStep * 9), index_offset(kStep * 10), index_offset(kStep * 11),
        index_offset(kStep * 12), index_offset(kStep * 13), index_offset(kStep * 14),
        index_offset(kStep * 15));
  }

  static Vec add(Vec a, Vec b) { return {_mm512_add_ps(a.v, b.v)}; }
  static Vec sub(Vec a, Vec b) { return {_mm512_sub_ps(a.v, b.v)}; }
  static Vec mul(Vec a, Vec b) { return {_mm512_mul_ps(a.v, b.v)}; }
  static Vec div(Vec a, Vec b) { return {_mm512_div_ps(a.v, b.v)}; }
  static Vec fmadd(Vec a, Vec b, Vec c) { return {_mm512_fmadd_ps(a.v, b.v, c.v)}; }
  static Vec sqrt(Vec a) { return {_mm512_sqrt_ps(a.v)}; }
  static Vec select(bool take_a, Vec a, Vec b) {
    return {_mm512_mask_blend_ps(static_cast<__mmask16>(-int{take_a}), b.v, a.v)};
  }
  static Vec abs(Vec a) { return {_mm512_abs_ps(a.v)}; }
  static Vec max_nan(Vec a, Vec b) {   // maxps returns b when either is NaN: patch a's NaNs
    return {_mm512_mask_blend_ps(_mm512_cmp_ps_mask(a.v, a.v, _CMP_UNORD_Q),
                                 _mm512_max_ps(a.v, b.v), a.v)};
  }
  void to_array(float* out) const { _mm512_storeu_ps(out, v); }
};

template <>
struct Vec<double> {
  static constexpr int kLanes = 8;
  __m512d v;

  static Vec set1(double x) { return {_mm512_set1_pd(x)}; }
  static Vec load(const double* p) { return {_mm512_loadu_pd(p)}; }
  void store(double* p) const { _mm512_storeu_pd(p, v); }

  static Vec add(Vec a, Vec b) { return {_mm512_add_pd(a.v, b.v)}; }
  static Vec sub(Vec a, Vec b) { return {_mm512_sub_pd(a.v, b.v)}; }
  static Vec mul(Vec a, Vec b) { return {_mm512_mul_pd(a.v, b.v)}; }
  static Vec div(Vec a, Vec b) { return {_mm512_div_pd(a.v, b.v)}; }
  static Vec fmadd(Vec a, Vec b, Vec c) { return {_mm512_fmadd_pd(a.v, b.v, c.v)}; }
  static Vec sqrt(Vec a) { return {_mm512_sqrt_pd(a.v)}; }
  static Vec select(bool take_a, Vec a, Vec b) {
    return {_mm512_mask_blend_pd(static_cast<__mmask8>(-int{take_a}), b.v, a.v)};
  }
  static Vec abs(Vec a) { return {_mm512_abs_pd(a.v)}; }
  static Vec max_nan(Vec a, Vec b) {
    return {_mm512_mask_blend_pd(_mm512_cmp_pd_mask(a.v, a.v, _CMP_UNORD_Q),
                                 _mm512_max_pd(a.v, b.v), a.v)};
  }
  void to_array(double* out) const { _mm512_storeu_pd(out, v); }
};
