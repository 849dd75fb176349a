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
  void store(c10::BFloat16* p) const {
    // natural lane order: round, then gather the 16-bit halves across the 128-bit lanes
    __m256i r = bf16_bits(v);
    __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0x08);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_castsi256_si128(packed));
  }

  // Note [bf16 lane order]: 16 bf16 loaded as two float vectors in the order the unpack/pack
  // instructions leave them, lo = elements 0-3, 8-11 and hi = 4-7, 12-15. Widening is one
  // unpack per vector (instead of a zero-extend + shift) and narrowing one in-lane pack per
  // two vectors (instead of a pack + cross-lane permute per vector). fp32 streams beside
  // them (a master copy) are loaded and stored in the same order with one permute each.
  static void load_pair(const c10::BFloat16* p, Vec& lo, Vec& hi) {
    __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    __m256i z = _mm256_setzero_si256();
    lo.v = _mm256_castsi256_ps(_mm256_unpacklo_epi16(z, x));
    hi.v = _mm256_castsi256_ps(_mm256_unpackhi_epi16(z, x));
  }
  static void store_pair(c10::BFloat16* p, Vec lo, Vec hi) {
    // bf16_bits fits 16 bits, so the saturating pack is exact
    __m256i x = _mm256_packus_epi32(bf16_bits(lo.v), bf16_bits(hi.v));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), x);
  }
  static void load_pair(const float* p, Vec& lo, Vec& hi) {
    __m256 a = _mm256_loadu_ps(p), b = _mm256_loadu_ps(p + 8);
    lo.v = _mm256_permute2f128_ps(a, b, 0x20);
    hi.v = _mm256_permute2f128_ps(a, b, 0x31);
  }
  static void store_pair(float* p, Vec lo, Vec hi) {   // the same exchange undoes itself
    _mm256_storeu_ps(p, _mm256_permute2f128_ps(lo.v, hi.v, 0x20));
    _mm256_storeu_ps(p + 8, _mm256_permute2f128_ps(lo.v, hi.v, 0x31));
  }

  // c10's round_to_nearest_even, lane-wise, in the low 16 bits of each 32-bit lane: add
  // 0x7FFF + the lsb of the kept half, shift; NaN -> 0x7FC0 (Note [bf16 rounding])
  static __m256i bf16_bits(__m256 v) {
    __m256i bits = _mm256_castps_si256(v);
    __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
    __m256i r = _mm256_srli_epi32(
        _mm256_add_epi32(bits, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7FFF))), 16);
    __m256 nan = _mm256_cmp_ps(v, v, _CMP_UNORD_Q);
    return _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(r),
                                                _mm256_castsi256_ps(_mm256_set1_epi32(0x7FC0)), nan));
  }

  static Vec add(Vec a, Vec b) { return {_mm256_add_ps(a.v, b.v)}; }
  static Vec sub(Vec a, Vec b) { return {_mm256_sub_ps(a.v, b.v)}; }
  static Vec mul(Vec a, Vec b) { return {_mm256_mul_ps(a.v, b.v)}; }
  static Vec div(Vec a, Vec b) { return {_mm256_div_ps(a.v, b.v)}; }
  static Vec fmadd(Vec a, Vec b, Vec c) { return {_mm256_fmadd_ps(a.v, b.v, c.v)}; }
  static Vec sqrt(Vec a) { return {_mm256_sqrt_ps(a.v)}; }
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
  static Vec abs(Vec a) { return {_mm256_andnot_pd(_mm256_set1_pd(-0.0), a.v)}; }
  static Vec max_nan(Vec a, Vec b) {
    return {_mm256_blendv_pd(_mm256_max_pd(a.v, b.v), a.v, _mm256_cmp_pd(a.v, a.v, _CMP_UNORD_Q))};
  }
  void to_array(double* out) const { _mm256_storeu_pd(out, v); }
};
