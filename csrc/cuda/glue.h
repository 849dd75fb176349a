// The torch-facing half of the CUDA backend (csrc/cuda/glue.cpp): checks every argument with
// the one validator (csrc/bucket.h), builds and uploads the tensor table of each call (Note
// [one table, one launch], table.h) and launches on the current stream, without a host sync.
// Compiled only with FUSEDOPT_WITH_CUDA; csrc/bindings.cpp binds these.
#pragma once
#include <ATen/ATen.h>

#include <optional>
#include <vector>

#include "bucket.h"

namespace fusedopt {
namespace cuda_glue {

// One update step of algorithm `algo` (csrc/algorithms.h) with its `flags` word: the checks
// first (check_step_cached, Note [pack-time checks] in bucket.h), then one table upload and one
// launch (two for a two-stage algorithm).
void step(Bucket& b, const at::Tensor& hp, int64_t algo, int64_t flags,
          const std::optional<at::Tensor>& clip_coef, const std::optional<at::Tensor>& inv_scale,
          const std::optional<at::Tensor>& found_inf);
// 2- or inf-norm of the bucket's grads (pending params included) as a 0-d device tensor,
// float64 if a grad is fp64, else float32 (Note [norm dtype], fusedopt/backends/__init__.py),
// times inv_scale if given; sets found_inf to 1 if given and the norm is not finite.
at::Tensor bucket_norm(const Bucket& b, double norm_type,
                       const std::optional<at::Tensor>& inv_scale,
                       const std::optional<at::Tensor>& found_inf);
at::Tensor tensors_norm(const std::vector<at::Tensor>& tensors, double norm_type,
                        const std::optional<at::Tensor>& inv_scale,
                        const std::optional<at::Tensor>& found_inf);
// tensors[i] *= coef (a one-element float32 or float64 device tensor, rounded to each tensor's
// compute type), in place, every dtype in one launch.
void tensors_scale_(const std::vector<at::Tensor>& tensors, const at::Tensor& coef);

}  // namespace cuda_glue
}  // namespace fusedopt
