// The one validator of the C++ backends (declared in bucket.h). Messages name the offending
// tensor ("params[3]", "states[1][3]", "grad of params[3]") and what was expected.
#include "bucket.h"

#include <c10/util/Exception.h>

#include <cmath>
#include <limits>
#include <ostream>

#include "algorithms.h"
#include "hparams.h"

namespace fusedopt {
namespace {

bool supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

bool low_precision(at::ScalarType t) { return t == at::kHalf || t == at::kBFloat16; }

// Formatted only when a check fails (TORCH_CHECK streams its message lazily): a step checks
// ~5 tensors per param, and building strings eagerly cost ~0.5 ms per step for 1000 params.
struct Name {
  const char* list;
  size_t i;
  const char* prefix = "";
  int64_t k = -1;   // states[k][i] when >= 0
};

std::ostream& operator<<(std::ostream& os, const Name& n) {
  os << n.prefix << n.list;
  if (n.k >= 0) os << "[" << n.k << "]";
  return os << "[" << n.i << "]";
}

// params and pending: dense real floating tensors (the kernels' four dtypes)
void check_param(const at::Tensor& p, const Name& what) {
  TORCH_CHECK(p.defined(), what, " is undefined");
  TORCH_CHECK(p.layout() == at::kStrided, what, " has layout ", p.layout(),
              "; only dense (strided) parameters are supported");
  TORCH_CHECK_TYPE(!p.is_complex(), what, " is complex (", p.scalar_type(),
                   "); complex parameters are not supported");
  TORCH_CHECK_TYPE(supported_float(p.scalar_type()), what, " has dtype ", p.scalar_type(),
                   "; expected float32, float64, float16 or bfloat16");
}

// A state (or grad) walked element for element with its param: its shape and device.
void check_shape_device(const at::Tensor& t, const at::Tensor& p, const Name& what,
                        const Name& param) {
  TORCH_CHECK(t.sizes() == p.sizes(), what, " has shape ", t.sizes(), " but ", param, " has ",
              p.sizes());
  TORCH_CHECK(t.device() == p.device(), what, " is on ", t.device(), " but ", param, " is on ",
              p.device());
}

// A grad: defined, its param's dtype, shape and device.
void check_like(const at::Tensor& t, const at::Tensor& p, const Name& what, const Name& param) {
  TORCH_CHECK(t.defined(), what, " is undefined");
  TORCH_CHECK_TYPE(t.scalar_type() == p.scalar_type(), what, " has dtype ", t.scalar_type(),
                   " but ", param, " has ", p.scalar_type());
  check_shape_device(t, p, what, param);
}

void check_counter(const at::Tensor& s, const at::Device& device, size_t i) {
  TORCH_CHECK(s.defined() && s.layout() == at::kStrided && s.numel() == 1 &&
                  s.scalar_type() == at::kFloat && s.device() == device,
              "steps[", i, "] must be a one-element float32 tensor on ", device,
              " (the parameter's device)");
}

// Note [precision modes] (docs/internals.md): the dtypes params of dtype p may keep their
// states in.
bool state_dtype_allowed(at::ScalarType p, at::ScalarType s) {
  switch (p) {
    case at::kDouble: return s == at::kDouble;
    case at::kFloat: return s == at::kFloat || s == at::kBFloat16;
    case at::kHalf: return s == at::kHalf || s == at::kFloat || s == at::kBFloat16;
    case at::kBFloat16: return s == at::kBFloat16 || s == at::kFloat;
    default: return false;
  }
}

const char* allowed_state_dtypes(at::ScalarType p) {
  switch (p) {
    case at::kDouble: return "float64";
    case at::kFloat: return "float32 or bfloat16";
    case at::kHalf: return "float16, float32 or bfloat16";
    default: return "bfloat16 or float32";
  }
}

const char* weights_name(int weights) {
  return weights == kMaster ? "1 (master copies)" : "2 (kahan compensations)";
}

// Every state tensor of params[i] (the algorithm's `algo_lists` lists, then the weights
// mode's list): defined, strided, shaped and placed like the param; the algorithm's lists all
// in the bucket's state dtype (states[0][0]'s), one params[i] may keep its states in; the last
// list fp32 masters (kMaster) or compensations in the param's dtype (kKahan).
void check_states_of(const Bucket& b, size_t i, size_t algo_lists) {
  const at::Tensor& p = b.params[i];
  for (size_t k = 0; k < b.states.size(); ++k) {
    const at::Tensor& s = b.states[k][i];
    const Name what{"states", i, "", static_cast<int64_t>(k)};
    TORCH_CHECK(s.defined(), what, " is undefined");
    TORCH_CHECK(s.layout() == at::kStrided, what, " has layout ", s.layout(),
                "; expected strided");
    if (k < algo_lists) {
      const at::ScalarType dtype = b.states[0][0].scalar_type();
      TORCH_CHECK_TYPE(s.scalar_type() == dtype, what, " has dtype ", s.scalar_type(),
                       "; the bucket's states have dtype ", dtype,
                       " (states[0][0]'s: one state dtype per bucket)");
      TORCH_CHECK_TYPE(state_dtype_allowed(p.scalar_type(), dtype), what, " has dtype ", dtype,
                       " but params[", i, "] has ", p.scalar_type(), ", whose states are ",
                       allowed_state_dtypes(p.scalar_type()), " (Note [precision modes])");
    } else {
      const at::ScalarType expected = b.weights == kMaster ? at::kFloat : p.scalar_type();
      TORCH_CHECK_TYPE(s.scalar_type() == expected, what, " has dtype ", s.scalar_type(),
                       "; expected ", expected, " (weights = ", weights_name(b.weights),
                       ", params[", i, "] has ", p.scalar_type(), ")");
    }
    check_shape_device(s, p, what, Name{"params", i});
  }
}

// The weights mode and the seeds (Note [precision modes], Note [stochastic rounding]), with
// `algo_lists` state lists of the algorithm's.
void check_precision(const Bucket& b, size_t algo_lists) {
  const size_t n = b.params.size();
  TORCH_CHECK(b.seeds.empty() || b.seeds.size() == n, "seeds has ", b.seeds.size(),
              " entries for ", n, " params (one per param, or none)");
  for (size_t i = 0; i < b.seeds.size(); ++i) {
    TORCH_CHECK_VALUE(b.seeds[i] >= 0 && b.seeds[i] <= std::numeric_limits<uint32_t>::max(),
                      "seeds[", i, "] = ", b.seeds[i], " is out of range: expected [0, 2^32)");
  }
  if (n == 0) return;
  if (b.weights != kPlain) {
    TORCH_CHECK_TYPE(low_precision(b.params[0].scalar_type()), "weights = ",
                     weights_name(b.weights), " needs float16 or bfloat16 params; params[0] has ",
                     b.params[0].scalar_type());
  }
  if (!b.seeds.empty() && algo_lists > 0) {
    TORCH_CHECK_TYPE(b.states[0][0].scalar_type() == at::kBFloat16,
                     "seeds (stochastic rounding) need bfloat16 states; states[0][0] has dtype ",
                     b.states[0][0].scalar_type());
  }
}

}  // namespace

void check_scalar(const std::optional<at::Tensor>& t, const at::Device& device, const char* name,
                  bool float64_too) {
  if (!t.has_value()) return;
  const bool dtype_ok = t->defined() && (t->scalar_type() == at::kFloat ||
                                         (float64_too && t->scalar_type() == at::kDouble));
  TORCH_CHECK(dtype_ok && t->device() == device && t->numel() == 1 && t->layout() == at::kStrided,
              name, float64_too ? " must be a 0-d float32 or float64 " : " must be a 0-d float32 ",
              device.is_cpu() ? std::string("CPU tensor") : "tensor on " + device.str(), "; got ",
              t->defined() ? t->toString() : std::string("undefined"), " of ",
              t->defined() ? t->numel() : 0, " elements");
}

void check_algo(int algo, int64_t flags) {
  TORCH_CHECK_VALUE(valid_algo(algo), "algo must be an algorithm id from 0 to ", kNumAlgos - 1,
                    " (csrc/algorithms.h: adam, sgd, lion, lars, lamb); got ", algo);
  const AlgorithmInfo& info = algorithm_info(algo);
  TORCH_CHECK_VALUE(flags >= 0 && (flags >> info.num_flags) == 0, "flags = ", flags,
                    " has bits that ", info.name, " does not have: its ", info.num_flags,
                    " flags are bits 0 to ", info.num_flags - 1, " (", info.flag_names, ")");
}

std::vector<int32_t> group_rows(const std::vector<int64_t>& group_index) {
  std::vector<int32_t> rows;
  rows.reserve(group_index.size());
  for (size_t i = 0; i < group_index.size(); ++i) {
    TORCH_CHECK(group_index[i] >= 0 && group_index[i] <= std::numeric_limits<int32_t>::max(),
                "group_index[", i, "] = ", group_index[i], " is out of range");
    rows.push_back(static_cast<int32_t>(group_index[i]));
  }
  return rows;
}

void check_weights(int weights) {
  TORCH_CHECK_VALUE(weights == kPlain || weights == kMaster || weights == kKahan, "weights = ",
                    weights, " is not a weights mode: expected 0 (plain), 1 (master copies) or 2 "
                    "(kahan compensations)");
}

void check_bucket(const Bucket& b) {
  check_weights(b.weights);
  const size_t n = b.params.size();
  for (size_t k = 0; k < b.states.size(); ++k) {
    TORCH_CHECK(b.states[k].size() == n, "states[", k, "] has ", b.states[k].size(),
                " tensors for ", n, " params");
  }
  TORCH_CHECK(b.steps.size() == n, "steps has ", b.steps.size(), " tensors for ", n, " params");
  TORCH_CHECK(b.group_index.size() == n, "group_index has ", b.group_index.size(),
              " entries for ", n, " params");
  TORCH_CHECK(b.grads.empty() || b.grads.size() == n, "grads has ", b.grads.size(),
              " tensors for ", n, " params");
  const bool extra = b.weights != kPlain;
  // (a bucket of pending params only has no state lists yet)
  TORCH_CHECK(!extra || n == 0 || !b.states.empty(), "weights = ", weights_name(b.weights),
              " needs a last state list (the ", b.weights == kMaster ? "masters" : "compensations",
              "); states is empty");
  const size_t algo_lists = b.states.size() - (extra && !b.states.empty() ? 1 : 0);
  for (size_t i = 0; i < n; ++i) {
    check_param(b.params[i], Name{"params", i});
    check_states_of(b, i, algo_lists);
    check_counter(b.steps[i], b.params[i].device(), i);
    TORCH_CHECK(b.group_index[i] >= 0, "group_index[", i, "] is negative (", b.group_index[i],
                ")");
  }
  check_precision(b, algo_lists);
  for (size_t j = 0; j < b.pending.size(); ++j) check_param(b.pending[j], Name{"pending", j});
}

namespace {

// The per-call part of check_step (O(1)): the state lists, the table and the step scalars.
void check_call(const Bucket& b, const at::Tensor& hp, int algo, int64_t flags,
                const std::optional<at::Tensor>& clip_coef,
                const std::optional<at::Tensor>& inv_scale,
                const std::optional<at::Tensor>& found_inf) {
  const AlgorithmInfo& info = algorithm_info(algo);
  const bool extra = b.weights != kPlain;
  const size_t algo_states = static_cast<size_t>(num_states(algo, flags));
  TORCH_CHECK(b.states.size() == algo_states + (extra ? 1 : 0), "states: expected ",
              algo_states, " state lists for ", info.name, " (", state_names(algo, flags),
              b.weights == kMaster  ? ", then the master copies"
              : b.weights == kKahan ? ", then the compensations"
                                    : "",
              "), got ", b.states.size());
  const at::Device device = b.params[0].device();
  TORCH_CHECK(hp.defined() && hp.device() == device && hp.scalar_type() == at::kDouble &&
                  hp.dim() == 2 && hp.size(1) == kHpCols && hp.is_contiguous(),
              "hp must be a contiguous float64 tensor of shape [num_groups, ",
              static_cast<int>(kHpCols), "] on ", device, "; got ",
              hp.defined() ? hp.toString() : std::string("undefined"), " of shape ",
              hp.defined() ? hp.sizes() : at::IntArrayRef(), " on ",
              hp.defined() ? hp.device().str() : std::string("-"));
  check_scalar(clip_coef, device, "clip_coef", true);
  check_scalar(inv_scale, device, "inv_scale");
  check_scalar(found_inf, device, "found_inf");
}

// The grad of params[i], if it has one: strided, and its param's dtype, shape and device.
void check_grad(const Bucket& b, size_t i) {
  const at::Tensor& g = b.grad(i);
  if (!g.defined()) return;
  TORCH_CHECK(g.layout() == at::kStrided, "sparse gradients are not supported (grad of params[",
              i, "] has layout ", g.layout(), ")");
  check_like(g, b.params[i], Name{"params", i, "grad of "}, Name{"params", i});
}

GradView view_of(const at::Tensor& g) {
  if (!g.defined()) return GradView{false, false, nullptr};
  return GradView{true, g.is_contiguous(), g.const_data_ptr()};
}

}  // namespace

bool check_step(const Bucket& b, const at::Tensor& hp, int algo, int64_t flags,
                const std::optional<at::Tensor>& clip_coef,
                const std::optional<at::Tensor>& inv_scale,
                const std::optional<at::Tensor>& found_inf) {
  check_algo(algo, flags);
  // a bucket whose params all wait for their state (`pending`) steps nothing and has no lists
  if (b.params.empty()) return has_master(b);
  check_call(b, hp, algo, flags, clip_coef, inv_scale, found_inf);
  const size_t algo_states = static_cast<size_t>(num_states(algo, flags));
  const size_t n = b.params.size();
  const at::Tensor& p0 = b.params[0];
  const at::Device device = p0.device();
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& p = b.params[i];
    TORCH_CHECK(p.device() == device, "params[", i, "] is on ", p.device(), "; params[0] is on ",
                device, " (one bucket, one device)");
    TORCH_CHECK_TYPE(p.scalar_type() == p0.scalar_type(), "params[", i, "] has dtype ",
                     p.scalar_type(), "; the bucket's dtype is ", p0.scalar_type());
    check_states_of(b, i, algo_states);
    check_counter(b.steps[i], device, i);
    TORCH_CHECK(b.group_index[i] < hp.size(0), "group_index[", i, "] = ", b.group_index[i],
                " is out of range for hp with ", hp.size(0), " rows");
    check_grad(b, i);
  }
  check_precision(b, algo_states);
  return has_master(b);
}

namespace {

void prefetch_lines(const void* object, int lines) {
  for (int k = 0; k < lines; ++k) __builtin_prefetch(static_cast<const char*>(object) + 64 * k);
}

// Note [prefetching the prints]: the prints and grads of a step read ~4 TensorImpls (each in 3
// cache lines), their StorageImpls and an AutogradMeta per param, scattered over the heap, and
// on a step's first touch (a forward and backward ran since the last one) they are misses, one
// chain after another. So the checks ask for them ahead: the TensorImpls kAhead params ahead,
// then (their pointers now cached) the StorageImpls and the AutogradMeta kAhead / 2 ahead.
// C++ step of 64-element AdamW tensors, 1 thread, with 40 MB written between steps (ns per
// tensor, median of 51, without and with the prefetches in one process through a build switch
// since removed; bench/host_step.py measures the same steps): 465 tensors 528 -> 415, 1000:
// 671 -> 448, 5000: 599 -> 432; in cache, 5000: 388 -> 306, 1000 and fewer unchanged (~125).
// Asking for the grad's TensorImpl and StorageImpl too (a chain of two more loads) gained
// nothing.
constexpr size_t kAhead = 16;

void prefetch_prints(const Bucket& b, size_t i) {
  auto impl = [](const at::Tensor& t) { return t.unsafeGetTensorImpl(); };
  auto storage = [](const at::Tensor& t) {
    __builtin_prefetch(t.unsafeGetTensorImpl()->unsafe_storage().unsafeGetStorageImpl());
  };
  const size_t n = b.params.size();
  if (i + kAhead < n) {
    const size_t j = i + kAhead;
    prefetch_lines(impl(b.params[j]), 3);
    prefetch_lines(impl(b.steps[j]), 3);
    for (const auto& list : b.states) prefetch_lines(impl(list[j]), 3);
  }
  if (i + kAhead / 2 < n) {
    const size_t j = i + kAhead / 2;
    storage(b.params[j]);
    storage(b.steps[j]);
    for (const auto& list : b.states) storage(list[j]);
    if (b.grads.empty()) prefetch_lines(impl(b.params[j])->autograd_meta(), 2);
  }
}

}  // namespace

TensorPrint print_of(const at::Tensor& t) {
  if (!t.defined() || t.layout() != at::kStrided || !t.has_storage()) return TensorPrint{};
  return TensorPrint{t.const_data_ptr(), t.numel(), t.scalar_type(), t.device(),
                     t.is_contiguous()};
}

bool check_step_cached(Bucket& b, const at::Tensor& hp, int algo, int64_t flags,
                       const std::optional<at::Tensor>& clip_coef,
                       const std::optional<at::Tensor>& inv_scale,
                       const std::optional<at::Tensor>& found_inf, std::vector<GradView>& grads) {
  check_algo(algo, flags);
  const size_t n = b.params.size();
  grads.resize(n);
  if (n == 0) return false;
  check_call(b, hp, algo, flags, clip_coef, inv_scale, found_inf);
  StepPrints& seen = b.checked;
  const size_t stride = b.states.size() + 2;
  bool same = seen.algo == algo && seen.flags == flags && seen.prints.size() == n * stride &&
              b.max_row < hp.size(0);
  for (size_t i = 0; same && i < n; ++i) {
    prefetch_prints(b, i);
    const TensorPrint* print = &seen.prints[i * stride];
    same = print_of(b.params[i]) == print[0] && print_of(b.steps[i]) == print[stride - 1];
    for (size_t k = 0; same && k < b.states.size(); ++k) {
      same = print_of(b.states[k][i]) == print[1 + k];
    }
    if (!same) break;   // the full check below reports what changed, in its order
    check_grad(b, i);
    grads[i] = view_of(b.grad(i));
  }
  if (same) return false;
  check_step(b, hp, algo, flags, clip_coef, inv_scale, found_inf);
  seen.algo = algo;
  seen.flags = flags;
  seen.stride = stride;
  seen.prints.resize(n * stride);
  for (size_t i = 0; i < n; ++i) {
    TensorPrint* print = &seen.prints[i * stride];
    print[0] = print_of(b.params[i]);
    for (size_t k = 0; k < b.states.size(); ++k) print[1 + k] = print_of(b.states[k][i]);
    print[stride - 1] = print_of(b.steps[i]);
    grads[i] = view_of(b.grad(i));
  }
  return true;
}

void check_device_type(const Bucket& b, c10::DeviceType type, const char* fn) {
  const std::vector<at::Tensor>& some = b.params.empty() ? b.pending : b.params;
  if (some.empty()) return;
  TORCH_CHECK(some[0].device().type() == type, fn, ": ", b.params.empty() ? "pending" : "params",
              "[0] is on ", some[0].device(), "; ", fn, " takes ", c10::DeviceTypeName(type),
              " tensors only");
}

void check_norm_input(const at::Tensor& t, const at::Device& device, const char* what, size_t i) {
  TORCH_CHECK(t.layout() == at::kStrided, "sparse gradients are not supported (", what, "[", i,
              "] has layout ", t.layout(), ")");
  TORCH_CHECK(t.device() == device, what, "[", i, "] is on ", t.device(), "; expected ", device);
  TORCH_CHECK_TYPE(supported_float(t.scalar_type()), what, "[", i, "] has dtype ",
                   t.scalar_type(), "; expected float32, float64, float16 or bfloat16");
}

bool check_norm_type(double norm_type) {
  const bool inf = std::isinf(norm_type) && norm_type > 0;
  TORCH_CHECK_VALUE(inf || norm_type == 2.0, "norm_type must be 2.0 or inf, got ", norm_type);
  return inf;
}

bool check_bucket_norm(const Bucket& b, double norm_type, const at::Device& device) {
  const bool inf = check_norm_type(norm_type);
  for (size_t i = 0; i < b.params.size(); ++i) {
    const at::Tensor& g = b.grad(i);
    if (g.defined()) check_norm_input(g, device, "grad of params", i);
  }
  for (size_t j = 0; j < b.pending.size(); ++j) {
    const at::Tensor& g = b.pending[j].grad();
    if (g.defined()) check_norm_input(g, device, "grad of pending", j);
  }
  return inf;
}

bool check_tensors_norm(const std::vector<at::Tensor>& tensors, double norm_type,
                        const at::Device& device) {
  const bool inf = check_norm_type(norm_type);
  for (size_t i = 0; i < tensors.size(); ++i) {
    TORCH_CHECK(tensors[i].defined(), "tensors[", i, "] is undefined");
    check_norm_input(tensors[i], device, "tensors", i);
  }
  return inf;
}

}  // namespace fusedopt
