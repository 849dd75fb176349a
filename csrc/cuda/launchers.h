// The CUDA kernels as plain C++ functions over an uploaded table (table.h) and raw device
// pointers; the torch-facing glue in csrc/cuda/glue.cpp has the one validator check every
// argument, builds and uploads the table, and calls these on the current stream. Each returns
// the launches' error (cudaSuccess or what cudaGetLastError reported); none synchronises with
// the host.
//
// Note [slots]: what each kernel reads from a TensorMeta's ptr[] (table.h):
//   update: kGrad, kParam, then the algorithm's states for the step's flags in bucket order
//           (csrc/algorithms.h state_names) from kState0 on, and kExtra unless the weights are
//           plain (Note [precision modes], docs/internals.md): the fp32 master copy (then kParam
//           receives the rounded master and is never read) or the Kahan compensation, in the
//           param's dtype:
//             adam  exp_avg, exp_avg_sq[, max_exp_avg_sq if amsgrad]   (kState0..kState2)
//             sgd   [momentum_buffer if momentum]                      (kState0)
//             lion  exp_avg                                            (kState0)
//             lars  [momentum_buffer if momentum]                      (kState0)
//             lamb  exp_avg, exp_avg_sq                                (kState0, kState1)
//           A slot the flags leave out is null. Two-stage algorithms read in stage 1 what
//           their reads(kSumStage) says (engine.cuh, Note [update math]).
//   norm  : kGrad only, of any DType (mixed in one launch).
//   scale : kGrad only (scaled in place), of any DType.
// Params and grads share one DType per update launch, the states another (state_dtype, which
// the validator allows beside that param dtype); master copies (fp32) and compensations
// accompany fp16/bf16 params only. The update kernels read and increment `step`.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "algorithms.h"
#include "table.h"

namespace fusedopt {
namespace cuda {

// A one-element float32 or float64 device tensor's data, or null: a clip coefficient is float64
// where the grads it was formed from include fp64 ones (Note [norm dtype],
// fusedopt/backends/__init__.py). Kernels read it as a double (exact for both) and round it to
// their compute type, as torch's mul_ by a 0-d tensor does.
struct DeviceScalar {
  const void* ptr;
  bool is_double;
};

// Per-step device scalars of docs/internals.md, each null or on the device:
// g = grad * inv_scale * clip_coef; found_inf != 0 means the launch touches nothing.
struct StepScalars {
  DeviceScalar clip_coef;
  const float* inv_scale;
  const float* found_inf;
};

// Bucket::weights (csrc/bucket.h Weights, which needs torch; glue.cpp asserts the values agree).
enum WeightsMode : int { kPlainWeights = 0, kMasterWeights = 1, kKahanWeights = 2 };

// One update step of a bucket (engine.cuh run_update).
struct UpdateArgs {
  Table table;
  DType dtype;          // params and grads
  DType state_dtype;    // the algorithm's states (the param's where it has none)
  WeightsMode weights;  // what kExtra holds (Note [slots])
  bool stochastic;      // bf16 states are rounded stochastically with each tensor's seed
  const double* hp;     // the float64 [G, kHpCols] hyper-parameter table (csrc/hparams.h)
  int64_t flags;        // the algorithm's flags word (csrc/algorithms.h)
  StepScalars scalars;
  double* sums;         // two-stage algorithms: kSums doubles per table block, else null
  cudaStream_t stream;
};

// Each algorithm's launches, defined in csrc/cuda/<name>.cu.
cudaError_t update_adam(const UpdateArgs& a);
cudaError_t update_sgd(const UpdateArgs& a);
cudaError_t update_lion(const UpdateArgs& a);
cudaError_t update_lars(const UpdateArgs& a);
cudaError_t update_lamb(const UpdateArgs& a);

// The one switch on the algorithm id (the validator has admitted it): one launch, or two for a
// two-stage algorithm (Note [two stages], engine.cuh).
inline cudaError_t launch_update(int algo, const UpdateArgs& a) {
  switch (algo) {
    case kAdam: return update_adam(a);
    case kSgd: return update_sgd(a);
    case kLion: return update_lion(a);
    case kLars: return update_lars(a);
    case kLamb: return update_lamb(a);
    default: return cudaErrorInvalidValue;
  }
}

// Two launches: one partial result per block into `partials` (table.num_blocks doubles), then
// one block that writes the norm (times *inv_scale if given) to *out, a double if `out_double`
// else a float, and, if found_inf is given, sets *found_inf = 1 when the norm is not finite (it
// keeps a 1 already there).
cudaError_t launch_norm(const Table& table, bool inf_norm, double* partials, void* out,
                        bool out_double, const float* inv_scale, float* found_inf,
                        cudaStream_t stream);

// Every kGrad array *= coef, in its compute type.
cudaError_t launch_scale(const Table& table, DeviceScalar coef, cudaStream_t stream);

}  // namespace cuda
}  // namespace fusedopt
