// The CPU backend's entry points, called by csrc/bindings.cpp after the validator (bucket.h)
// checked every argument (the functions here assume valid input and check nothing).
#pragma once
#include <ATen/ATen.h>
#include <optional>
#include <vector>

#include "bucket.h"

namespace fusedopt::cpu {

// One step of `algo` (csrc/algorithms.h) with `flags` over every param of the bucket with a
// grad (Note [one driver], ops.cpp), after check_step_cached (bucket.h), which read `grads` and
// returns `rechecked`.
void step(Bucket& bucket, const std::vector<GradView>& grads, bool rechecked,
          const at::Tensor& hp, int algo, int64_t flags,
          const std::optional<at::Tensor>& clip_coef,
          const std::optional<at::Tensor>& inv_scale,
          const std::optional<at::Tensor>& found_inf);

// 0-d float64 if a tensor is fp64, else float32 (Note [norm dtype], fusedopt/backends/
// __init__.py): the norm (2 or inf) of every defined grad of the bucket's params and pending
at::Tensor bucket_norm(const Bucket& bucket, double norm_type);
at::Tensor tensors_norm(at::TensorList tensors, double norm_type);

}  // namespace fusedopt::cpu
