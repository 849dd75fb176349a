// What the CPU step code (ops.cpp, compiled for the baseline ISA) hands to the kernels, which
// are compiled once per instruction set (kernels_{scalar,avx2,avx512}.cpp, Note [one source,
// three instruction sets]). Only plain data and function pointers cross that line.
#pragma once
#include <cstdint>

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

struct AdamTensor;
struct SgdTensor;
using AdamFn = void (*)(const AdamTensor&, int64_t begin, int64_t end);
using SgdFn = void (*)(const SgdTensor&, int64_t begin, int64_t end);
// Returns the chunk's sum of squares (norm 2) or max |x| (norm inf), NaN if it holds one.
using NormFn = double (*)(const void* data, int64_t begin, int64_t end);

// One parameter's Adam/AdamW update. The pointers address dense memory laid out identically
// (Note [dense fast path] in ops.cpp), so element j of one is element j of the others.
// Scalars are in double here; a kernel rounds them to its compute type once per chunk, as
// torch rounds a Python float to the tensor's dtype.
struct AdamTensor {
  AdamFn fn;
  void* param;
  const void* grad;
  void* exp_avg;
  void* exp_avg_sq;
  void* max_exp_avg_sq;      // null unless amsgrad
  float* master;             // fp32 master copy of an fp16/bf16 param, or null (then
                             // param is written, never read: Note [master copy], bucket.h)
  double grad_scale;         // inv_scale, or 1 (multiplying by 1 is exact)
  double grad_coef;          // clip_coef (or 1), negated for maximize: -(a*b) == a*(-b) exactly
  double l2;                 // weight_decay if L2 (Adam) decay applies, else 0
  double decay;              // 1 - lr*weight_decay if decoupled (AdamW), else 1
  double lerp_weight;        // 1 - beta1
  double beta2;
  double one_minus_beta2;
  double bias_correction2_sqrt;
  double neg_step_size;      // -lr / (1 - beta1^step)
  double eps;
};

// One parameter's SGD update; same conventions as AdamTensor.
struct SgdTensor {
  SgdFn fn;
  void* param;
  const void* grad;
  void* momentum_buffer;     // null when the bucket keeps no momentum buffers
  float* master;             // as AdamTensor::master
  double grad_scale;
  double grad_coef;
  double weight_decay;       // 0 means "no decay" (torch skips the add entirely)
  double momentum;
  double one_minus_dampening;
  double neg_lr;
  bool seed;                 // first step: buffer = grad (torch's clone)
  bool nesterov;
};

// The last index of adam and sgd: with a master copy (fp16/bf16 only; null for fp32/fp64).
struct KernelTable {
  AdamFn adam[kNumDTypes][2][2];   // [dtype][amsgrad][master copy]
  SgdFn sgd[kNumDTypes][2][2];     // [dtype][has momentum buffer][master copy]
  NormFn norm[kNumDTypes][2];   // [dtype][inf norm]
};

const KernelTable& kernels_scalar();
const KernelTable& kernels_avx2();
const KernelTable& kernels_avx512();
const KernelTable& kernel_table();   // for capability()

}  // namespace fusedopt::cpu
