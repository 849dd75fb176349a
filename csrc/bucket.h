// A bucket: every parameter of one optimizer that shares (device, dtype, algorithm flags).
// Built once by fusedopt/_engine.py (Note [pack once]) and kept alive across steps, so the
// per-step call does not convert Python lists: reading 1000 grads here costs ~20 us, the same
// through pybind list conversion costs ~400 us.
#pragma once
#include <ATen/ATen.h>
#include <vector>

namespace fusedopt {

struct Bucket {
  // Parameters that already have optimizer state, in table order.
  std::vector<at::Tensor> params;
  // states[k][i] is the k-th state tensor of params[i]. Same dtype, shape and device as the
  // parameter (torch's layout, so state_dicts interchange). Adam: {exp_avg, exp_avg_sq
  // [, max_exp_avg_sq]}; SGD with momentum: {momentum_buffer}; SGD without: {}. Then, for
  // float16/bfloat16 params with master weights, one more list: their float32 master copies
  // (has_master below).
  std::vector<std::vector<at::Tensor>> states;
  // steps[i]: 0-d float32 tensor on the parameter's device. For Adam it *is* state['step'];
  // for SGD it is internal (0 means "momentum buffer not yet seeded", as torch's first step).
  std::vector<at::Tensor> steps;
  // Row of the hyper-parameter table for params[i] (the GPU backends upload their own copy
  // inside their tensor tables).
  std::vector<int32_t> group_index;
  // Parameters of this bucket without state yet (never had a grad). A step first scans them:
  // if any has a grad now, the step touches nothing and reports them so Python can create
  // their state and rebuild the bucket (torch creates state lazily, at a param's first grad).
  std::vector<at::Tensor> pending;
};

// Note [master copy] (fusedopt/optimizer.py): a last state list of float32 tensors beside
// float16/bfloat16 params holds their fp32 master copies. A step reads the master instead of
// the param and writes both (the param: the master's rounding). The algorithm's own states
// always have the params' dtype, so the dtype tells the two apart.
inline bool has_master(const Bucket& b) {
  if (b.params.empty() || b.states.empty() || b.states.back().empty()) return false;
  const at::ScalarType t = b.params[0].scalar_type();
  return (t == at::kHalf || t == at::kBFloat16) &&
         b.states.back()[0].scalar_type() == at::kFloat;
}

}  // namespace fusedopt
