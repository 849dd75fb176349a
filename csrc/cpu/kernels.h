// What the CPU driver (ops.cpp, compiled for the baseline ISA) hands to the kernels, which are
// compiled once per instruction set (kernels_{scalar,avx2,avx512}.cpp, Note [one source, three
// instruction sets]). Only plain data and function pointers cross that line.
#pragma once
#include <cmath>
#include <cstdint>
#include <limits>
#include <new>
#include <type_traits>

#include "algorithms.h"
#include "hparams.h"

namespace fusedopt::cpu {

enum class Capability : int { kScalar = 0, kAvx2 = 1, kAvx512 = 2 };

// The level the kernels run at: the best the CPU (and OS) supports, capped by the environment
// variable FUSEDOPT_CPU_CAPABILITY=scalar|avx2|avx512, read on every call so tests can switch
// levels in one process. capability.cpp.
Capability capability();
const char* capability_name(Capability c);

// Storage dtypes of parameters, grads and states. fp16/bf16/fp32 compute in float, fp64 in
// double (docs/internals.md, "Step semantics").
enum DType : int { kFloat = 0, kDouble = 1, kHalf = 2, kBFloat16 = 3, kNumDTypes = 4 };

constexpr int kMaxStates = 3;   // Adam with amsgrad

// Note [stochastic rounding] (docs/internals.md): MurmurHash3's 32-bit finaliser (for the key
// of state list k of a tensor with `seed`), the Weyl term of its counter `t` after this step's
// increment, and the 16 random bits of element j from the finaliser's first round (the vector
// levels compute the same in their own lanes).
constexpr uint32_t kIndexMultiplier = 0x9E3779B1u;
constexpr uint32_t kWeyl = 0x9E3779B9u;   // 2^32 / golden ratio
struct SrKey {
  uint32_t key;    // fmix32(seed ^ fmix32(k))
  uint32_t weyl;   // t * kWeyl, added to every element's hash
};
constexpr uint32_t fmix32(uint32_t h) {
  h ^= h >> 16;
  h *= 0x85EBCA6Bu;
  h ^= h >> 13;
  h *= 0xC2B2AE35u;
  return h ^ (h >> 16);
}
// t mod 2^32 without overflow for any float counter (a float32 counter stops at 2^24)
inline SrKey rounding_key(uint32_t seed, double t, int k) {
  const auto t32 = static_cast<uint32_t>(static_cast<int64_t>(std::fmod(t, 4294967296.0)));
  return {fmix32(seed ^ fmix32(static_cast<uint32_t>(k))), t32 * kWeyl};
}
// fmix32's first round, the element hash (Note [stochastic rounding]: why one round)
constexpr uint32_t sr_mix(uint32_t h) { return (h ^ (h >> 16)) * 0x85EBCA6Bu; }
constexpr uint32_t rounding_bits(SrKey k, uint32_t j) {
  return (sr_mix((j * kIndexMultiplier) ^ k.key) + k.weyl) >> 16;
}
// j * kIndexMultiplier as an intrinsic's int lane: a vector of element offsets times the
// multiplier, added to the first element's product, gives every lane's (the product is linear)
constexpr int index_offset(uint32_t j) { return static_cast<int>(j * kIndexMultiplier); }

// torch's 1 - beta**step (and its **0.5), remembered for the last (beta, step): the params
// of a model share betas and step count, and pow was the largest single cost in a profile
// of steps of 1000 16-element tensors (13% of all samples, Python included).
class BiasCorrection {
 public:
  explicit BiasCorrection(bool root) : root_(root) {}
  double operator()(double beta, double step) {
    if (beta != beta_ || step != step_) {
      beta_ = beta;
      step_ = step;
      value_ = 1.0 - std::pow(beta, step);
      if (root_) value_ = std::pow(value_, 0.5);
    }
    return value_;
  }

 private:
  bool root_;
  double beta_ = std::numeric_limits<double>::quiet_NaN(), step_ = 0, value_ = 0;
};

// What every tensor of one step call shares: the step scalars (read once) and the memos.
struct StepContext {
  double grad_scale;   // inv_scale, or 1 (multiplying by 1 is exact)
  double clip_coef;    // or 1
  BiasCorrection bias_correction1{false}, bias_correction2_sqrt{true};
};

struct TensorStep;
using UpdateFn = void (*)(const TensorStep&, int64_t begin, int64_t end);
// Stage 1 of a two-stage algorithm: the chunk's kSums sums into sums[0..kSums).
using SumsFn = void (*)(const TensorStep&, int64_t begin, int64_t end, double* sums);
// Note [kept update] (csrc/cpu/lamb.h): stage 1 of a tensor that takes both stages on one
// thread (Note [two stages in cache], multi_tensor.h), for an algorithm whose functor can: the
// chunk's sums as SumsFn gives them, the states written, and the update into `kept`, a buffer of
// the compute type where element j of the tensor is at index j; stage 2 then only applies it.
using KeepFn = void (*)(const TensorStep&, int64_t begin, int64_t end, double* sums, void* kept);
using ApplyFn = void (*)(const TensorStep&, int64_t begin, int64_t end, const void* kept);
// The algorithm's per-tensor scalars from its table row, the counter before this step and the
// flags, in double, on the calling thread. Returns whether stage 1 must sum this tensor (false:
// its finish changes nothing).
using PrepareFn = bool (*)(TensorStep&, const double* row, float step, int64_t flags,
                           StepContext&);
// Two-stage algorithms: folds the tensor's totals into its scalars, between the stages.
using FinishFn = void (*)(TensorStep&, const double* sums);
// Returns the chunk's sum of squares (norm 2) or max |x| (norm inf), NaN if it holds one.
using NormFn = double (*)(const void* data, int64_t begin, int64_t end);

// One parameter's step. The pointers address dense memory laid out identically (Note [dense
// fast path] in ops.cpp), so element j of one is element j of the others. The algorithm's
// scalars are in double here; a kernel rounds them to its compute type once per chunk, as
// torch rounds a Python float to the tensor's dtype.
struct TensorStep {
  UpdateFn update;
  SumsFn sums;                   // two-stage algorithms without keep only
  KeepFn keep;                   // null unless the algorithm keeps its update (Note [kept update])
  ApplyFn apply;                 // with keep
  void* param;                   // in the param dtype P, as the grad
  const void* grad;
  void* states[kMaxStates];      // the algorithm's states for its flags, in bucket order, in S
  // Note [precision modes] (docs/internals.md), fp16/bf16 params only, the kernel's weights
  // mode: kMaster: `extra` is the fp32 master copy (then param is written, never read: Note
  // [master copy], bucket.h); kKahan: the compensations, in P. kPlain: null.
  void* extra;
  // stochastically rounded bf16 states (update picked from AlgoKernels::update[..][1]): state
  // list k rounds with keys[k], elements numbered from 0 at param[0] (then contiguous)
  SrKey keys[kMaxStates];

  // The algorithm's `Scalars` (plain doubles and bools), written by its prepare.
  template <class T>
  void set_scalars(const T& s) {
    static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= sizeof(scalars_) &&
                  alignof(T) <= alignof(double));
    new (scalars_) T(s);
  }
  template <class T>
  T& scalars_as() { return *std::launder(reinterpret_cast<T*>(scalars_)); }
  template <class T>
  const T& scalars_as() const { return *std::launder(reinterpret_cast<const T*>(scalars_)); }

 private:
  alignas(double) unsigned char scalars_[16 * sizeof(double)];
};

// One algorithm's kernels (Note [one driver], ops.cpp). The update kernels are indexed by
// [param dtype][state dtype][the algorithm's state lists for its flags][weights mode]
// [stochastic rounding] (without states: every state dtype's and rounding's entry is the same
// kernel; with states other than bf16 the rounding's too), the sums kernels likewise but for
// the rounding (stage 1 writes nothing); entries the algorithm cannot have are null (the
// validator rejected those buckets; Note [precision kernels] in elementwise.h).
struct AlgoKernels {
  PrepareFn prepare;
  FinishFn finish;                                              // null unless two-stage
  UpdateFn update[kNumDTypes][kNumDTypes][kMaxStates + 1][3][2];
  // null unless two-stage without a kept update
  SumsFn sums[kNumDTypes][kNumDTypes][kMaxStates + 1][3];
  // null unless the algorithm keeps its update (Note [kept update]); indexed as update, apply as
  // sums
  KeepFn keep[kNumDTypes][kNumDTypes][kMaxStates + 1][3][2];
  ApplyFn apply[kNumDTypes][kNumDTypes][kMaxStates + 1][3];
};

struct KernelTable {
  AlgoKernels algo[kNumAlgos];   // indexed by AlgoId (csrc/algorithms.h)
  NormFn norm[kNumDTypes][2];    // [dtype][inf norm]
};

const KernelTable& kernels_scalar();
const KernelTable& kernels_avx2();
const KernelTable& kernels_avx512();
const KernelTable& kernel_table();   // for capability()

}  // namespace fusedopt::cpu
