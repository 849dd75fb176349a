// A bucket: every parameter of one optimizer that shares (device, dtype, algorithm flags).
// Built once by fusedopt/_engine.py (Note [pack once]) and kept alive across steps, so the
// per-step call does not convert Python lists: reading 1000 grads here costs ~20 us, the same
// through pybind list conversion costs ~400 us.
#pragma once
#include <ATen/ATen.h>

#include <cstddef>
#include <memory>
#include <optional>
#include <vector>

#include "algorithms.h"

namespace fusedopt {

namespace cpu {
struct BucketSteps;   // csrc/cpu/ops.cpp
}

// Note [pack-time checks]: a bucket's tensors are checked in full when it is built and when a
// step first runs with an algorithm and flags; afterwards a step checks in full only what is new
// at every step, the grads (autograd may make new ones: dtype, shape, device, layout), and
// compares a print of every param, state and step counter with the one the last full check
// saw. `p.data = ...` (or a state's) between steps changes the print (it moves the storage, or
// changes the dtype, the element count, the device or the contiguity), and the step then
// checks everything again, with the same messages. A print is what the kernels depend on; a
// reshape in place that keeps all of it (`p.data = p.data.view(...)`) steps the same elements
// and is not checked again. The address is read through the StorageImpl, not taken from the
// TensorImpl's pointer to it: `untyped_storage().resize_()` (FSDP frees and refills params so)
// moves the data under the same StorageImpl. Note [prefetching the prints] (bucket.cpp) says
// what reading the prints costs.
struct TensorPrint {
  const void* data = nullptr;
  int64_t numel = -1;
  at::ScalarType dtype = at::ScalarType::Undefined;
  at::Device device{at::kCPU};
  bool contiguous = false;
  bool operator==(const TensorPrint&) const = default;
};
TensorPrint print_of(const at::Tensor& t);

struct StepPrints {
  int algo = -1;
  int64_t flags = -1;
  size_t stride = 0;                 // prints per param: the param, each state list's, the counter
  std::vector<TensorPrint> prints;   // params[i]'s from i * stride
};

// A grad as a step's checks read it: whether there is one, its address (null for an empty
// one) and whether it is contiguous.
struct GradView {
  bool defined;
  bool contiguous;
  const void* data;
};

struct Bucket {
  // Parameters that already have optimizer state, in table order.
  std::vector<at::Tensor> params;
  // states[k][i] is the k-th state tensor of params[i]. Same shape and device as the parameter
  // (torch's layout, so state_dicts interchange): the algorithm's states for its flags, in the
  // order of state_names (csrc/algorithms.h), e.g. Adam {exp_avg, exp_avg_sq[, max_exp_avg_sq]},
  // SGD with momentum {momentum_buffer}, SGD without {}, all of one dtype (the param's, or as
  // Note [precision modes] in docs/internals.md allows). Then, where `weights` is not kPlain,
  // one more list: the float32 master copies (kMaster) or the compensations in the param's
  // dtype (kKahan).
  std::vector<std::vector<at::Tensor>> states;
  // Note [precision modes]: kPlain (0), kMaster (1) or kKahan (2), fixed at construction.
  int weights = 0;
  // Empty, or one seed per param in [0, 2^32): the states (then bfloat16) are written with
  // stochastic rounding (Note [stochastic rounding], docs/internals.md).
  std::vector<int64_t> seeds;
  // steps[i]: 0-d float32 tensor on the parameter's device. For Adam and LAMB it *is*
  // state['step']; for SGD, LARS and Lion it is internal (0 means "momentum buffer not yet
  // seeded", as torch's first step).
  std::vector<at::Tensor> steps;
  // Row of the hyper-parameter table for params[i] (the GPU backends upload their own copy
  // inside their tensor tables).
  std::vector<int32_t> group_index;
  int32_t max_row = -1;   // the largest group index (-1: no params)
  // Parameters of this bucket without state yet (never had a grad). A step first scans them:
  // if any has a grad now, the step touches nothing and reports them so Python can create
  // their state and rebuild the bucket (torch creates state lazily, at a param's first grad).
  std::vector<at::Tensor> pending;
  // The grads of params, given explicitly (fusedopt's torch.library ops: under torch.compile a
  // grad need not be its param's .grad); empty: each param's .grad. Undefined: no grad.
  std::vector<at::Tensor> grads;

  const at::Tensor& grad(size_t i) const { return grads.empty() ? params[i].grad() : grads[i]; }

  // Note [pack-time checks]: what the last full check of a step saw (check_step_cached), and
  // the cpu driver's per-param kernel arguments derived from it (csrc/cpu/ops.cpp).
  StepPrints checked;
  std::shared_ptr<cpu::BucketSteps> cpu_steps;
};

// The one validator of the C++ backends (csrc/bucket.cpp); the kernels assume what it checked.
//
// Note [master copy] (fusedopt/optimizer.py): with weights == kMaster (csrc/algorithms.h) a
// last state list of float32 tensors beside float16/bfloat16 params holds their fp32 master
// copies (Note [slots], csrc/cuda/launchers.h). A step reads the master instead of the param
// and writes both (the param: the master's rounding). With kKahan the last list holds
// compensations (Note [precision modes]).
inline bool has_master(const Bucket& b) { return b.weights == kMaster; }
// `algo` is an id of csrc/algorithms.h and `flags` has no bit that algorithm lacks.
void check_algo(int algo, int64_t flags);
// The group indices as the bucket keeps them: each in [0, 2^31).
std::vector<int32_t> group_rows(const std::vector<int64_t>& group_index);
// At construction: the lists agree, every tensor is a dense real floating tensor shaped like
// its param, step counters are one-element float32 tensors, group indices are >= 0; the
// weights mode is one of Weights, kMaster/kKahan with fp16/bf16 params and a last list of
// fp32 masters / compensations in the params' dtype; the other state lists share one dtype
// their params may keep states in (Note [precision modes]); seeds are none or one per param,
// in [0, 2^32), with bf16 states.
void check_bucket(const Bucket& b);
// Before every step touches anything: check_algo; the state lists are the algorithm's for
// those flags (a weights list aside); all of check_bucket that can change in place (dtypes,
// shapes, devices: `p.data = ...`); the grads; the table `hp` (float64 [G, kHpCols],
// contiguous, on the params' device, a row for every group index) and the step scalars.
// Returns has_master(b).
bool check_step(const Bucket& b, const at::Tensor& hp, int algo, int64_t flags,
                const std::optional<at::Tensor>& clip_coef,
                const std::optional<at::Tensor>& inv_scale,
                const std::optional<at::Tensor>& found_inf);
// The bucket's params (and pending params) are on a device of `type`; `fn` names the call in
// the error ("step": the cpu backend steps CPU tensors only).
// check_step, as Note [pack-time checks] allows: the call's arguments, every grad, and the
// prints of the params, states and counters against b.checked; where one differs (or on a first
// call with this algo and flags) check_step in full, which records new prints. Writes
// grads[i] for every param. Returns true when the full check ran (what a backend derived from
// the tensors is stale).
bool check_step_cached(Bucket& b, const at::Tensor& hp, int algo, int64_t flags,
                       const std::optional<at::Tensor>& clip_coef,
                       const std::optional<at::Tensor>& inv_scale,
                       const std::optional<at::Tensor>& found_inf, std::vector<GradView>& grads);
void check_device_type(const Bucket& b, c10::DeviceType type, const char* fn);
// A step scalar (clip_coef, inv_scale, found_inf): None, or a one-element float32 on `device`;
// `float64_too`: float64 as well (a clip coefficient, float64 where the grads it was computed from
// include fp64 ones, as torch's clip_grad_norm_ forms it; the kernels round it to their compute
// type, as torch's mul_ by a 0-d tensor does).
void check_scalar(const std::optional<at::Tensor>& t, const at::Device& device, const char* name,
                  bool float64_too = false);
// Norm inputs: dense, one of the four dtypes, on `device` (`what` names them: "tensors",
// "grad of params").
void check_norm_input(const at::Tensor& t, const at::Device& device, const char* what, size_t i);
bool check_norm_type(double norm_type);   // true for inf
// A norm call: the norm type, and every defined grad of the bucket's params and pending (or every
// tensor, all defined) a norm input on `device`. Return whether the norm is inf.
bool check_bucket_norm(const Bucket& b, double norm_type, const at::Device& device);
bool check_tensors_norm(const std::vector<at::Tensor>& tensors, double norm_type,
                        const at::Device& device);

}  // namespace fusedopt
