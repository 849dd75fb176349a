// The CUDA kernels as plain C++ functions over an uploaded table (table.h) and raw device
// pointers; the torch-facing glue in csrc/cuda/glue.cpp checks every argument, builds and
// uploads the table, and calls these on the current stream. Each returns the launch's error
// (cudaSuccess or what cudaGetLastError reported); none synchronises with the host.
//
// Note [slots]: what each kernel reads from a TensorMeta's ptr[] (table.h):
//   adam  : kGrad, kParam, kState0 exp_avg, kState1 exp_avg_sq, kState2 max_exp_avg_sq if
//           amsgrad, kMaster if master weights (then kParam receives the rounded master).
//   sgd   : kGrad, kParam, kState0 momentum_buffer if momentum, kMaster as for adam.
//   norm  : kGrad only, of any DType (mixed in one launch).
//   scale : kGrad only (scaled in place), of any DType.
// Params, grads and states share one DType per update launch; master copies are fp32 and only
// accompany fp16/bf16 params. The update kernels read and increment `step`.
#pragma once
#include <cuda_runtime_api.h>

#include "table.h"

namespace fusedopt {
namespace cuda {

// Per-step device scalars of docs/internals.md, each a float32 device pointer or null:
// g = grad * inv_scale * clip_coef; found_inf != 0 means the launch touches nothing.
struct StepScalars {
  const float* clip_coef;
  const float* inv_scale;
  const float* found_inf;
};

struct AdamFlags {
  bool amsgrad;
  bool maximize;
  bool decoupled;   // AdamW's decoupled weight decay, else L2 (torch.optim.Adam)
};

struct SgdFlags {
  bool momentum;    // the bucket keeps momentum buffers (its groups have momentum != 0)
  bool nesterov;
  bool maximize;
};

// hp: the float64 [G, kHpCols] hyper-parameter table of csrc/hparams.h on the same device.
cudaError_t launch_adam(const Table& table, DType dtype, bool master, const double* hp,
                        AdamFlags flags, StepScalars scalars, cudaStream_t stream);

cudaError_t launch_sgd(const Table& table, DType dtype, bool master, const double* hp,
                       SgdFlags flags, StepScalars scalars, cudaStream_t stream);

// Two launches: one partial result per block into `partials` (table.num_blocks doubles), then
// one block that writes the norm (times *inv_scale if given) to *out and, if found_inf is
// given, sets *found_inf = 1 when the norm is not finite (it keeps a 1 already there).
cudaError_t launch_norm(const Table& table, bool inf_norm, double* partials, float* out,
                        const float* inv_scale, float* found_inf, cudaStream_t stream);

// Every kGrad array *= *coef.
cudaError_t launch_scale(const Table& table, const float* coef, cudaStream_t stream);

}  // namespace cuda
}  // namespace fusedopt
