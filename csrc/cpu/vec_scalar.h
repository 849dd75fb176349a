// The vector interface the kernels are written against, and its one-lane implementation:
// the scalar kernels' element type and every level's tail loop. Included inside namespace
// fusedopt::cpu::FUSEDOPT_ISA (Note [one source, three instruction sets]).
//
// Each vector type (ScalarVec, Vec in vec_avx2.h / vec_avx512.h) provides static members;
// the operators below forward to them. They are namespace-scope templates, not in-class
// friends, because GCC does not apply `#pragma GCC target` to friend functions defined in a
// class, and intrinsics then fail to inline.
template <class V> V operator+(V a, V b) { return V::add(a, b); }
template <class V> V operator-(V a, V b) { return V::sub(a, b); }
template <class V> V operator*(V a, V b) { return V::mul(a, b); }
template <class V> V operator/(V a, V b) { return V::div(a, b); }
template <class V> V fma(V a, V b, V c) { return V::fmadd(a, b, c); }   // a*b + c, one rounding
template <class V> V sqrt(V a) { return V::sqrt(a); }
template <class V> V abs(V a) { return V::abs(a); }
template <class V> V max_nan(V a, V b) { return V::max_nan(a, b); }    // torch.maximum: NaN wins
// a where the flag holds, else b; the flag is uniform over a tensor (lerp's two formulas). A
// blend with a broadcast mask at the vector levels: `take_a ? a : b` on the vector structs became
// a select of their stack addresses (two stores and a load per vector in bf16 AdamW's loop).
template <class V> V select(bool take_a, V a, V b) { return V::select(take_a, a, b); }

// Every operation is one correctly rounded IEEE operation, so a tail element gets the same
// bits as a vector lane.
template <class C>
struct ScalarVec {
  static constexpr int kLanes = 1;
  C v;

  static ScalarVec set1(C x) { return {x}; }
  static ScalarVec load(const float* p) { return {static_cast<C>(*p)}; }
  static ScalarVec load(const double* p) { return {static_cast<C>(*p)}; }
  // c10's conversions: exact widening, round-to-nearest-even narrowing (NaN -> quiet NaN)
  static ScalarVec load(const c10::Half* p) { return {static_cast<C>(static_cast<float>(*p))}; }
  static ScalarVec load(const c10::BFloat16* p) { return {static_cast<C>(static_cast<float>(*p))}; }
  void store(float* p) const { *p = static_cast<float>(v); }
  void store(double* p) const { *p = static_cast<double>(v); }
  void store(c10::Half* p) const { *p = c10::Half(static_cast<float>(v)); }
  void store(c10::BFloat16* p) const { *p = c10::BFloat16(static_cast<float>(v)); }
  // Note [stochastic rounding]: element j of the tensor (C is float: bf16 states never beside
  // fp64 params)
  void store_sr(c10::BFloat16* p, uint32_t j, SrKey key) const {
    uint32_t bits;
    std::memcpy(&bits, &v, sizeof bits);
    const uint16_t out = v != v ? 0x7FC0 : static_cast<uint16_t>((bits + rounding_bits(key, j)) >> 16);
    *p = c10::BFloat16(out, c10::BFloat16::from_bits());
  }

  static ScalarVec add(ScalarVec a, ScalarVec b) { return {a.v + b.v}; }
  static ScalarVec sub(ScalarVec a, ScalarVec b) { return {a.v - b.v}; }
  static ScalarVec mul(ScalarVec a, ScalarVec b) { return {a.v * b.v}; }
  static ScalarVec div(ScalarVec a, ScalarVec b) { return {a.v / b.v}; }
  static ScalarVec fmadd(ScalarVec a, ScalarVec b, ScalarVec c) {
    return {std::fma(a.v, b.v, c.v)};
  }
  static ScalarVec sqrt(ScalarVec a) { return {std::sqrt(a.v)}; }
  static ScalarVec select(bool take_a, ScalarVec a, ScalarVec b) { return take_a ? a : b; }
  static ScalarVec abs(ScalarVec a) { return {std::fabs(a.v)}; }
  static ScalarVec max_nan(ScalarVec a, ScalarVec b) {
    return {(a.v != a.v || a.v > b.v) ? a.v : b.v};
  }
  void to_array(C* out) const { out[0] = v; }
};
