// The single binding file of fusedopt._C. Every argument check of the C++ backends lives here,
// before any tensor is touched; the kernels (csrc/cpu/, csrc/cuda/) assume valid input.
#include <torch/extension.h>

#include <cmath>
#include <optional>
#include <string>
#include <vector>

#include "bucket.h"
#include "cpu/kernels.h"
#include "cpu/ops.h"
#include "hparams.h"

#ifdef FUSEDOPT_WITH_CUDA
// ==== CUDA backend glue: edited only by the CUDA work ====
// The torch-facing half of the CUDA backend (kernels: csrc/cuda/, their interface:
// csrc/cuda/launchers.h). Every check runs here, on the host, before anything is launched; then
// each call builds its tensor table (Note [one table, one launch], csrc/cuda/table.h), uploads
// it and launches on the current stream, without a host sync.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

#include "cuda/launchers.h"
#include "hparams.h"

namespace fusedopt {
namespace cuda_glue {
namespace fc = fusedopt::cuda;

fc::DType dtype_code(const at::Tensor& t, const char* what) {
  switch (t.scalar_type()) {
    case at::kFloat: return fc::kF32;
    case at::kDouble: return fc::kF64;
    case at::kHalf: return fc::kF16;
    case at::kBFloat16: return fc::kBF16;
    default:
      TORCH_CHECK_TYPE(false, what, " has dtype ", t.scalar_type(),
                       "; expected float32, float64, float16 or bfloat16");
  }
}

void check_on(const at::Tensor& t, const at::Device& device, const char* what, size_t i) {
  TORCH_CHECK(t.device() == device, what, "[", i, "] is on ", t.device(),
              "; every tensor of a CUDA bucket must be on ", device);
  TORCH_CHECK(t.layout() == at::kStrided, what, "[", i, "] has layout ", t.layout(),
              "; only dense (strided) tensors are supported");
}

// A 0-d (or one-element) float32 scalar on the device, or None.
const float* scalar_ptr(const std::optional<at::Tensor>& t, const at::Device& device,
                        const char* name) {
  if (!t.has_value()) return nullptr;
  TORCH_CHECK(t->device() == device && t->scalar_type() == at::kFloat && t->numel() == 1, name,
              " must be a one-element float32 tensor on ", device, "; got ", t->scalar_type(),
              " of ", t->numel(), " elements on ", t->device());
  return t->data_ptr<float>();
}

const double* hp_ptr(const at::Tensor& hp, const at::Device& device, int32_t max_group) {
  TORCH_CHECK(hp.device() == device && hp.scalar_type() == at::kDouble && hp.dim() == 2 &&
                  hp.size(1) == kHpCols && hp.is_contiguous(),
              "hp must be a contiguous float64 [num_groups, ", static_cast<int>(kHpCols),
              "] table on ", device, "; got ", hp.scalar_type(), " ", hp.sizes(), " on ",
              hp.device());
  TORCH_CHECK(max_group < hp.size(0), "group index ", max_group, " is out of range for a table of ",
              hp.size(0), " groups");
  return hp.data_ptr<double>();
}

// Note [dense arrays]: the kernels walk each tensor's storage as one flat array, which visits
// the elements of param, grad and states in the same order only when they are non-overlapping
// and dense with equal strides. That holds for every layout torch.optim's own state gets
// (zeros_like(param) keeps the param's strides), transposed params included. Anything else (a
// param that is a view with gaps, a grad laid out unlike its param) goes through a temporary in
// the param's layout: a copy in, and a copy back for what the step writes.
class Staging {
 public:
  // Strides every array of a param is walked in: the param's own when dense, else contiguous.
  // A DimVector: no heap allocation for up to 5 dimensions (this runs per tensor and step).
  static at::DimVector layout_of(const at::Tensor& p) {
    if (p.is_non_overlapping_and_dense()) return at::DimVector(p.strides());
    at::DimVector strides(p.dim());
    int64_t stride = 1;
    for (int64_t d = p.dim() - 1; d >= 0; --d) {
      strides[d] = stride;
      stride *= std::max<int64_t>(p.size(d), 1);
    }
    return strides;
  }

  void* flat(const at::Tensor& t, at::IntArrayRef strides, bool written) {
    if (t.is_non_overlapping_and_dense() && t.strides() == strides) return t.data_ptr();
    at::Tensor tmp = at::empty_strided(t.sizes(), strides, t.options());
    tmp.copy_(t);
    if (written) write_back_.emplace_back(t, tmp);
    keep_.push_back(tmp);
    return tmp.data_ptr();
  }

  // After the launch, on the same stream: the staged results reach their tensors.
  void finish() {
    for (auto& [original, tmp] : write_back_) original.copy_(tmp);
  }

 private:
  std::vector<at::Tensor> keep_;
  std::vector<std::pair<at::Tensor, at::Tensor>> write_back_;
};

// Note [table upload]: each launch's table goes up through a pinned staging buffer with one
// asynchronous copy on the current stream (no host sync; torch's pinned allocator reuses the
// buffer once the copy is done). Under CUDA graph capture the copy is a node of the graph that
// re-reads the buffer at every replay; torch's CachingHostAllocator never recycles a block that
// was allocated during capture and used by a copy (torch 2.13: ATen/core/CachingHostAllocator.h,
// was_allocated_during_stream_capture_), so every replay reads this step's table, and
// table.done starts from 0 each time (Note [step counters], csrc/cuda/engine.cuh).
struct Uploaded {
  at::Tensor device;
  fc::Table table;
};

Uploaded upload(const std::vector<fc::TensorMeta>& metas, const at::Device& device) {
  const fc::Layout layout = fc::plan(metas);
  const auto bytes = static_cast<int64_t>(layout.bytes);
  at::Tensor host = at::empty({bytes}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
  fc::write(layout, metas, host.data_ptr());
  at::Tensor on_device = at::empty({bytes}, at::TensorOptions().dtype(at::kByte).device(device));
  on_device.copy_(host, /*non_blocking=*/true);
  return Uploaded{on_device, fc::view(layout, on_device.data_ptr())};
}

// Every tensor an update step reads, checked before anything is staged or launched.
// `algo_states`: the state lists the algorithm keeps (Adam: 2, or 3 with amsgrad; SGD: 1 with
// momentum, else 0), the master copy not counted. Returns the largest group index.
int32_t check_update(const Bucket& b, size_t algo_states, bool master, const char* fn) {
  const at::Tensor& p0 = b.params[0];
  const at::Device device = p0.device();
  dtype_code(p0, "params[0]");
  const size_t n = b.params.size();
  TORCH_CHECK(b.states.size() == algo_states + (master ? 1 : 0), fn, ": the bucket has ",
              b.states.size(), " state lists; expected ", algo_states,
              " (plus one float32 master copy for float16/bfloat16 params)");
  TORCH_CHECK(b.steps.size() == n && b.group_index.size() == n, fn, ": ", n, " params but ",
              b.steps.size(), " step counters and ", b.group_index.size(), " group indices");
  for (size_t k = 0; k < b.states.size(); ++k) {
    TORCH_CHECK(b.states[k].size() == n, fn, ": state list ", k, " has ", b.states[k].size(),
                " tensors for ", n, " params");
  }
  int32_t max_group = 0;
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& p = b.params[i];
    check_on(p, device, "params", i);
    TORCH_CHECK_TYPE(p.scalar_type() == p0.scalar_type(), "params[", i, "] has dtype ",
                     p.scalar_type(), "; the bucket's dtype is ", p0.scalar_type());
    const at::Tensor& s = b.steps[i];
    TORCH_CHECK(s.device() == device && s.scalar_type() == at::kFloat && s.numel() == 1,
                "steps[", i, "] must be a one-element float32 tensor on ", device);
    TORCH_CHECK(b.group_index[i] >= 0, "group_index[", i, "] is negative");
    max_group = std::max(max_group, b.group_index[i]);
    for (size_t k = 0; k < b.states.size(); ++k) {
      const at::Tensor& st = b.states[k][i];
      const at::ScalarType want = master && k == algo_states ? at::kFloat : p.scalar_type();
      check_on(st, device, "states", i);
      TORCH_CHECK(st.sizes() == p.sizes() && st.scalar_type() == want, "states[", k, "][", i,
                  "] is ", st.scalar_type(), " ", st.sizes(), "; expected ", want, " ",
                  p.sizes());
    }
    const at::Tensor& g = p.grad();
    if (!g.defined()) continue;
    check_on(g, device, "grads", i);
    TORCH_CHECK(g.scalar_type() == p.scalar_type() && g.sizes() == p.sizes(), "grads[", i,
                "] is ", g.scalar_type(), " ", g.sizes(), "; its param is ", p.scalar_type(), " ",
                p.sizes());
  }
  return max_group;
}

// The table of one update step: every param of the bucket that has a grad (a param without
// one is neither updated nor counted as stepped, as in torch).
std::vector<fc::TensorMeta> build_update(const Bucket& b, size_t algo_states, bool master,
                                         Staging& staging) {
  std::vector<fc::TensorMeta> metas;
  const fc::DType dtype = dtype_code(b.params[0], "params[0]");
  for (size_t i = 0; i < b.params.size(); ++i) {
    const at::Tensor& p = b.params[i];
    const at::Tensor& g = p.grad();
    if (!g.defined()) continue;
    const at::DimVector strides = Staging::layout_of(p);
    fc::TensorMeta m{};
    m.ptr[fc::kGrad] = staging.flat(g, strides, false);
    m.ptr[fc::kParam] = staging.flat(p, strides, true);
    for (size_t k = 0; k < b.states.size(); ++k) {
      const size_t slot = master && k == algo_states ? size_t{fc::kMaster} : fc::kState0 + k;
      m.ptr[slot] = staging.flat(b.states[k][i], strides, true);
    }
    m.step = b.steps[i].data_ptr<float>();
    m.numel = p.numel();
    m.group = b.group_index[i];
    m.dtype = dtype;
    metas.push_back(m);
  }
  return metas;
}

// The body of cuda_adam_step and cuda_sgd_step; `launch` is the algorithm's launcher.
template <typename Launch>
void update_step(const Bucket& b, const at::Tensor& hp, size_t algo_states,
                 const std::optional<at::Tensor>& clip_coef,
                 const std::optional<at::Tensor>& inv_scale,
                 const std::optional<at::Tensor>& found_inf, const char* fn, Launch launch) {
  if (b.params.empty()) return;
  const at::Device device = b.params[0].device();
  TORCH_CHECK(device.is_cuda(), fn, ": the bucket's params are on ", device);
  c10::cuda::CUDAGuard guard(device);
  const bool master = has_master(b);
  const double* table = hp_ptr(hp, device, check_update(b, algo_states, master, fn));
  const fc::StepScalars scalars{scalar_ptr(clip_coef, device, "clip_coef"),
                                scalar_ptr(inv_scale, device, "inv_scale"),
                                scalar_ptr(found_inf, device, "found_inf")};
  Staging staging;
  const std::vector<fc::TensorMeta> metas = build_update(b, algo_states, master, staging);
  if (metas.empty()) return;
  const Uploaded up = upload(metas, device);
  C10_CUDA_CHECK(launch(up.table, dtype_code(b.params[0], "params[0]"), master, table, scalars,
                        c10::cuda::getCurrentCUDAStream()));
  staging.finish();
}

void adam_step(const Bucket& b, const at::Tensor& hp, bool amsgrad, bool maximize,
               bool decoupled, const std::optional<at::Tensor>& clip_coef,
               const std::optional<at::Tensor>& inv_scale,
               const std::optional<at::Tensor>& found_inf) {
  const fc::AdamFlags flags{amsgrad, maximize, decoupled};
  update_step(b, hp, amsgrad ? 3 : 2, clip_coef, inv_scale, found_inf, "cuda_adam_step",
              [&](const fc::Table& t, fc::DType d, bool master, const double* h,
                  fc::StepScalars s, cudaStream_t stream) {
                return fc::launch_adam(t, d, master, h, flags, s, stream);
              });
}

void sgd_step(const Bucket& b, const at::Tensor& hp, bool nesterov, bool maximize,
              const std::optional<at::Tensor>& clip_coef,
              const std::optional<at::Tensor>& inv_scale,
              const std::optional<at::Tensor>& found_inf) {
  // Buckets are keyed by "momentum != 0": the buffers' list, or none (plus a master copy).
  const size_t algo_states = b.states.size() - (has_master(b) ? 1 : 0);
  TORCH_CHECK(algo_states <= 1, "cuda_sgd_step: the bucket has ", b.states.size(),
              " state lists; expected the momentum buffers or none (plus a master copy)");
  const fc::SgdFlags flags{algo_states == 1, nesterov, maximize};
  update_step(b, hp, algo_states, clip_coef, inv_scale, found_inf, "cuda_sgd_step",
              [&](const fc::Table& t, fc::DType d, bool master, const double* h,
                  fc::StepScalars s, cudaStream_t stream) {
                return fc::launch_sgd(t, d, master, h, flags, s, stream);
              });
}

bool check_norm_type(double norm_type) {
  const bool inf = std::isinf(norm_type) && norm_type > 0;
  TORCH_CHECK_VALUE(inf || norm_type == 2.0, "norm_type must be 2.0 or inf, got ", norm_type);
  return inf;
}

// Every tensor a norm or scale reads: on `device`, dense, one of the four dtypes.
void check_tensors(const std::vector<at::Tensor>& tensors, const at::Device& device,
                   const char* what) {
  for (size_t i = 0; i < tensors.size(); ++i) {
    check_on(tensors[i], device, what, i);
    dtype_code(tensors[i], what);
  }
}

// One reduction launch and one finalize over tensors of any of the four dtypes (mixed).
at::Tensor norm_of(const std::vector<at::Tensor>& tensors, const at::Device& device, bool inf,
                   const std::optional<at::Tensor>& inv_scale,
                   const std::optional<at::Tensor>& found_inf, const char* what) {
  c10::cuda::CUDAGuard guard(device);
  check_tensors(tensors, device, what);
  const float* inv = scalar_ptr(inv_scale, device, "inv_scale");
  float* found = const_cast<float*>(scalar_ptr(found_inf, device, "found_inf"));
  std::vector<fc::TensorMeta> metas;
  std::vector<at::Tensor> dense;   // keeps contiguous copies of non-dense tensors alive
  for (const at::Tensor& t : tensors) {
    if (t.numel() == 0) continue;   // adds nothing (and inf has no identity in torch)
    // The norm does not depend on element order: any dense layout is walked as it is.
    dense.push_back(t.is_non_overlapping_and_dense() ? t : t.contiguous());
    fc::TensorMeta m{};
    m.ptr[fc::kGrad] = dense.back().data_ptr();
    m.numel = t.numel();
    m.dtype = dtype_code(t, what);
    metas.push_back(m);
  }
  at::Tensor out = at::empty({}, at::TensorOptions().dtype(at::kFloat).device(device));
  if (metas.empty()) return out.zero_();
  const Uploaded up = upload(metas, device);
  at::Tensor partials =
      at::empty({up.table.num_blocks}, at::TensorOptions().dtype(at::kDouble).device(device));
  C10_CUDA_CHECK(fc::launch_norm(up.table, inf, partials.data_ptr<double>(), out.data_ptr<float>(),
                                 inv, found, c10::cuda::getCurrentCUDAStream()));
  return out;
}

// Norm of every grad of the bucket, pending params included (the reference's bucket_norm).
at::Tensor bucket_norm(const Bucket& b, double norm_type,
                       const std::optional<at::Tensor>& inv_scale,
                       const std::optional<at::Tensor>& found_inf) {
  const bool inf = check_norm_type(norm_type);
  if (b.params.empty() && b.pending.empty()) return at::zeros({}, at::kFloat);
  const at::Device device = (b.params.empty() ? b.pending : b.params)[0].device();
  TORCH_CHECK(device.is_cuda(), "cuda_bucket_norm: the bucket is on ", device);
  std::vector<at::Tensor> grads;
  for (const auto* list : {&b.params, &b.pending}) {
    for (const at::Tensor& p : *list) {
      if (p.grad().defined()) grads.push_back(p.grad());
    }
  }
  return norm_of(grads, device, inf, inv_scale, found_inf, "grads");
}

at::Tensor tensors_norm(const std::vector<at::Tensor>& tensors, double norm_type,
                        const std::optional<at::Tensor>& inv_scale,
                        const std::optional<at::Tensor>& found_inf) {
  const bool inf = check_norm_type(norm_type);
  if (tensors.empty()) return at::zeros({}, at::kFloat);
  TORCH_CHECK(tensors[0].device().is_cuda(), "cuda_tensors_norm: tensors[0] is on ",
              tensors[0].device());
  return norm_of(tensors, tensors[0].device(), inf, inv_scale, found_inf, "tensors");
}

// tensors[i] *= coef, in place, every dtype in one launch.
void tensors_scale_(const std::vector<at::Tensor>& tensors, const at::Tensor& coef) {
  if (tensors.empty()) return;
  const at::Device device = tensors[0].device();
  TORCH_CHECK(device.is_cuda(), "cuda_tensors_scale_: tensors[0] is on ", device);
  c10::cuda::CUDAGuard guard(device);
  check_tensors(tensors, device, "tensors");
  const float* c = scalar_ptr(coef, device, "coef");
  std::vector<fc::TensorMeta> metas;
  Staging staging;
  for (const at::Tensor& t : tensors) {
    if (t.numel() == 0) continue;
    fc::TensorMeta m{};
    m.ptr[fc::kGrad] = staging.flat(t, Staging::layout_of(t), true);
    m.numel = t.numel();
    m.dtype = dtype_code(t, "tensors");
    metas.push_back(m);
  }
  if (metas.empty()) return;
  const Uploaded up = upload(metas, device);
  C10_CUDA_CHECK(fc::launch_scale(up.table, c, c10::cuda::getCurrentCUDAStream()));
  staging.finish();
}

}  // namespace cuda_glue
}  // namespace fusedopt

void register_cuda(pybind11::module_& m) {
  namespace g = fusedopt::cuda_glue;
  using pybind11::arg;
  const auto none = pybind11::none();
  m.def("cuda_adam_step", &g::adam_step,
        "Adam/AdamW step of a CUDA bucket: one launch, no host sync (docs/internals.md)",
        arg("bucket"), arg("hp"), arg("amsgrad"), arg("maximize"), arg("decoupled"),
        arg("clip_coef") = none, arg("inv_scale") = none, arg("found_inf") = none);
  m.def("cuda_sgd_step", &g::sgd_step, "SGD step of a CUDA bucket: one launch, no host sync",
        arg("bucket"), arg("hp"), arg("nesterov"), arg("maximize"), arg("clip_coef") = none,
        arg("inv_scale") = none, arg("found_inf") = none);
  m.def("cuda_bucket_norm", &g::bucket_norm,
        "2- or inf-norm of the bucket's grads as a 0-d float32 device tensor (times inv_scale "
        "if given; sets found_inf to 1 if given and the norm is not finite)",
        arg("bucket"), arg("norm_type"), arg("inv_scale") = none, arg("found_inf") = none);
  m.def("cuda_tensors_norm", &g::tensors_norm, "2- or inf-norm of CUDA tensors of mixed dtypes",
        arg("tensors"), arg("norm_type"), arg("inv_scale") = none, arg("found_inf") = none);
  m.def("cuda_tensors_scale_", &g::tensors_scale_,
        "tensors[i] *= coef in place (a 0-d float32 device tensor), one launch",
        arg("tensors"), arg("coef"));
}
// ==== end CUDA backend glue ====
#endif

namespace py = pybind11;

namespace fusedopt {
namespace {

using OptTensor = std::optional<at::Tensor>;

bool supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

// Names the offending tensor in a message: "params[3]", "states[1][3]", "grad of params[3]".
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

// params, pending: dense real floating tensors (the CPU kernels' four dtypes)
void check_param(const at::Tensor& p, const Name& what) {
  TORCH_CHECK(p.defined(), what, " is undefined");
  TORCH_CHECK(p.layout() == at::kStrided, what, " has layout ", p.layout(),
              "; only dense (strided) parameters are supported");
  TORCH_CHECK_TYPE(!p.is_complex(), what, " is complex (", p.scalar_type(),
                   "); complex parameters are not supported");
  TORCH_CHECK_TYPE(supported_float(p.scalar_type()), what, " has dtype ", p.scalar_type(),
                   "; expected float32, float64, float16 or bfloat16");
}

// A state tensor (or grad) must look exactly like its parameter: the kernels walk them
// element for element.
void check_like_param(const at::Tensor& t, const at::Tensor& p, const Name& what,
                      const Name& param) {
  TORCH_CHECK(t.defined(), what, " is undefined");
  TORCH_CHECK(t.layout() == at::kStrided, what, " has layout ", t.layout(), "; expected strided");
  TORCH_CHECK_TYPE(t.scalar_type() == p.scalar_type(), what, " has dtype ", t.scalar_type(),
                   " but ", param, " has ", p.scalar_type());
  TORCH_CHECK(t.sizes() == p.sizes(), what, " has shape ", t.sizes(), " but ", param,
              " has ", p.sizes());
  TORCH_CHECK(t.device() == p.device(), what, " is on ", t.device(), " but ", param, " is on ",
              p.device());
}

// The fp32 master copy of an fp16/bf16 param (Note [master copy], bucket.h): its shape and
// device, in float32.
void check_master(const at::Tensor& t, const at::Tensor& p, const Name& what,
                  const Name& param) {
  TORCH_CHECK(t.defined(), what, " is undefined");
  TORCH_CHECK(t.layout() == at::kStrided, what, " has layout ", t.layout(), "; expected strided");
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat, what, " (a master copy) has dtype ",
                   t.scalar_type(), "; expected float32");
  TORCH_CHECK(t.sizes() == p.sizes(), what, " has shape ", t.sizes(), " but ", param,
              " has ", p.sizes());
  TORCH_CHECK(t.device() == p.device(), what, " is on ", t.device(), " but ", param, " is on ",
              p.device());
}

void check_grad(const at::Tensor& g, const at::Tensor& p, size_t i) {
  TORCH_CHECK(g.layout() == at::kStrided, "sparse gradients are not supported (grad of params[",
              i, "] has layout ", g.layout(), ")");
  check_like_param(g, p, Name{"params", i, "grad of "}, Name{"params", i});
}

void check_step_counter(const at::Tensor& s, const at::Tensor& p, size_t i) {
  TORCH_CHECK(s.defined() && s.layout() == at::kStrided && s.numel() == 1 &&
                  s.scalar_type() == at::kFloat && s.device() == p.device(),
              "steps[", i, "] must be a one-element float32 tensor on ", p.device(),
              " (the parameter's device)");
}

// Everything a Bucket promises (bucket.h), checked when it is built and again by every
// step: a parameter or state changed in place (`p.data = ...`) must not reach a kernel.
void check_bucket(const Bucket& b) {
  const size_t n = b.params.size();
  const bool master = has_master(b);
  for (size_t k = 0; k < b.states.size(); ++k) {
    TORCH_CHECK(b.states[k].size() == n, "states[", k, "] has ", b.states[k].size(),
                " tensors for ", n, " params");
  }
  TORCH_CHECK(b.steps.size() == n, "steps has ", b.steps.size(), " tensors for ", n, " params");
  TORCH_CHECK(b.group_index.size() == n, "group_index has ", b.group_index.size(),
              " entries for ", n, " params");
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& p = b.params[i];
    check_param(p, Name{"params", i});
    for (size_t k = 0; k < b.states.size(); ++k) {
      const Name state{"states", i, "", static_cast<int64_t>(k)};
      if (master && k + 1 == b.states.size()) {
        check_master(b.states[k][i], p, state, Name{"params", i});
      } else {
        check_like_param(b.states[k][i], p, state, Name{"params", i});
      }
    }
    check_step_counter(b.steps[i], p, i);
    TORCH_CHECK(b.group_index[i] >= 0, "group_index[", i, "] is negative (", b.group_index[i],
                ")");
  }
  for (size_t j = 0; j < b.pending.size(); ++j) check_param(b.pending[j], Name{"pending", j});
}

void check_cpu(const Bucket& b) {
  for (size_t i = 0; i < b.params.size(); ++i) {
    TORCH_CHECK(b.params[i].is_cpu(), "params[", i, "] is on ", b.params[i].device(),
                "; the cpu backend steps CPU tensors only");
  }
}

// What every CPU step checks before it touches anything.
void check_step(const Bucket& b, const at::Tensor& hp, size_t num_states, const char* states_are,
                const OptTensor& clip_coef, const OptTensor& inv_scale,
                const OptTensor& found_inf) {
  check_bucket(b);
  check_cpu(b);
  TORCH_CHECK(hp.defined() && hp.is_cpu() && hp.scalar_type() == at::kDouble && hp.dim() == 2 &&
                  hp.size(1) == kHpCols && hp.is_contiguous(),
              "hp must be a contiguous float64 CPU tensor of shape [num_groups, ", int(kHpCols),
              "]; got ", hp.defined() ? hp.toString() : std::string("undefined"), " of shape ",
              hp.defined() ? hp.sizes() : at::IntArrayRef());
  for (size_t i = 0; i < b.group_index.size(); ++i) {
    TORCH_CHECK(b.group_index[i] < hp.size(0), "group_index[", i, "] = ", b.group_index[i],
                " is out of range for hp with ", hp.size(0), " rows");
  }
  const size_t masters = has_master(b) ? 1 : 0;
  TORCH_CHECK(b.states.size() == num_states + masters, "states: expected ", num_states,
              " state lists (", states_are, masters ? ", then the master copies" : "", "), got ",
              b.states.size());
  for (auto [name, t] : {std::pair<const char*, const OptTensor*>{"clip_coef", &clip_coef},
                         {"inv_scale", &inv_scale},
                         {"found_inf", &found_inf}}) {
    TORCH_CHECK(!t->has_value() || ((*t)->is_cpu() && (*t)->scalar_type() == at::kFloat &&
                                    (*t)->numel() == 1 && (*t)->layout() == at::kStrided),
                name, " must be a 0-d float32 CPU tensor");
  }
  for (size_t i = 0; i < b.params.size(); ++i) {
    const at::Tensor& g = b.params[i].grad();
    if (g.defined()) check_grad(g, b.params[i], i);
  }
}

std::shared_ptr<Bucket> make_bucket(std::vector<at::Tensor> params,
                                    std::vector<std::vector<at::Tensor>> states,
                                    std::vector<at::Tensor> steps, std::vector<int64_t> group_index,
                                    std::vector<at::Tensor> pending) {
  auto b = std::make_shared<Bucket>();
  b->params = std::move(params);
  b->states = std::move(states);
  b->steps = std::move(steps);
  b->group_index.reserve(group_index.size());
  for (size_t i = 0; i < group_index.size(); ++i) {
    TORCH_CHECK(group_index[i] >= 0 && group_index[i] <= std::numeric_limits<int32_t>::max(),
                "group_index[", i, "] = ", group_index[i], " is out of range");
    b->group_index.push_back(static_cast<int32_t>(group_index[i]));
  }
  b->pending = std::move(pending);
  check_bucket(*b);
  return b;
}

std::vector<int64_t> pending_with_grad(const Bucket& b) {
  std::vector<int64_t> out;
  for (size_t j = 0; j < b.pending.size(); ++j) {
    if (b.pending[j].grad().defined()) out.push_back(static_cast<int64_t>(j));
  }
  return out;
}

void adam_step(Bucket& b, const at::Tensor& hp, bool amsgrad, bool maximize, bool decoupled,
               const OptTensor& clip_coef, const OptTensor& inv_scale,
               const OptTensor& found_inf) {
  check_step(b, hp, amsgrad ? 3 : 2,
             amsgrad ? "exp_avg, exp_avg_sq, max_exp_avg_sq" : "exp_avg, exp_avg_sq", clip_coef,
             inv_scale, found_inf);
  cpu::adam_step(b, hp, amsgrad, maximize, decoupled, clip_coef, inv_scale, found_inf);
}

void sgd_step(Bucket& b, const at::Tensor& hp, bool nesterov, bool maximize,
              const OptTensor& clip_coef, const OptTensor& inv_scale, const OptTensor& found_inf) {
  // SGD keeps momentum buffers or nothing; which one the bucket holds decides
  const size_t algo_states = b.states.size() - (has_master(b) ? 1 : 0);
  TORCH_CHECK(algo_states <= 1, "states: SGD keeps at most one state list (momentum_buffer) "
              "besides the master copies, got ", b.states.size());
  check_step(b, hp, algo_states, "momentum_buffer or none", clip_coef, inv_scale, found_inf);
  cpu::sgd_step(b, hp, nesterov, maximize, clip_coef, inv_scale, found_inf);
}

void check_norm_type(double norm_type) {
  TORCH_CHECK_VALUE(norm_type == 2.0 || (std::isinf(norm_type) && norm_type > 0),
                    "norm_type must be 2.0 or inf, got ", norm_type);
}

void check_norm_input(const at::Tensor& t, const Name& what) {
  TORCH_CHECK(t.layout() == at::kStrided, "sparse gradients are not supported (", what,
              " has layout ", t.layout(), ")");
  TORCH_CHECK(t.is_cpu(), what, " is on ", t.device(), "; the cpu backend reads CPU tensors only");
  TORCH_CHECK_TYPE(supported_float(t.scalar_type()), what, " has dtype ", t.scalar_type(),
                   "; expected float32, float64, float16 or bfloat16");
}

at::Tensor bucket_norm(const Bucket& b, double norm_type) {
  check_norm_type(norm_type);
  for (size_t i = 0; i < b.params.size(); ++i) {
    const at::Tensor& g = b.params[i].grad();
    if (g.defined()) check_norm_input(g, Name{"params", i, "grad of "});
  }
  for (size_t j = 0; j < b.pending.size(); ++j) {
    const at::Tensor& g = b.pending[j].grad();
    if (g.defined()) check_norm_input(g, Name{"pending", j, "grad of "});
  }
  return cpu::bucket_norm(b, norm_type);
}

at::Tensor tensors_norm(const std::vector<at::Tensor>& tensors, double norm_type) {
  check_norm_type(norm_type);
  for (size_t i = 0; i < tensors.size(); ++i) {
    TORCH_CHECK(tensors[i].defined(), "tensors[", i, "] is undefined");
    check_norm_input(tensors[i], Name{"tensors", i});
  }
  return cpu::tensors_norm(tensors, norm_type);
}

}  // namespace
}  // namespace fusedopt

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  using namespace fusedopt;
  m.doc() = "fusedopt's compiled kernels (CPU: csrc/cpu/)";
  py::class_<Bucket, std::shared_ptr<Bucket>>(m, "Bucket")
      .def(py::init(&make_bucket), py::arg("params"), py::arg("states"), py::arg("steps"),
           py::arg("group_index"), py::arg("pending"));
  m.def("pending_with_grad", &pending_with_grad, py::arg("bucket"),
        "indices into bucket.pending of the params whose .grad is defined now");
  m.def("adam_step", &adam_step, py::arg("bucket"), py::arg("hp"), py::arg("amsgrad"),
        py::arg("maximize"), py::arg("decoupled"), py::arg("clip_coef"), py::arg("inv_scale"),
        py::arg("found_inf"), "Adam (decoupled=False) or AdamW step of every param with a grad");
  m.def("sgd_step", &sgd_step, py::arg("bucket"), py::arg("hp"), py::arg("nesterov"),
        py::arg("maximize"), py::arg("clip_coef"), py::arg("inv_scale"), py::arg("found_inf"),
        "SGD step of every param with a grad");
  m.def("bucket_norm", &bucket_norm, py::arg("bucket"), py::arg("norm_type"),
        "0-d float32 norm of every defined grad of the bucket's params and pending");
  m.def("tensors_norm", &tensors_norm, py::arg("tensors"), py::arg("norm_type"),
        "0-d float32 norm of the tensors together");
  m.def("cpu_capability", [] { return std::string(cpu::capability_name(cpu::capability())); },
        "the CPU kernel level in use: avx512, avx2 or scalar (FUSEDOPT_CPU_CAPABILITY caps it)");
#ifdef FUSEDOPT_WITH_CUDA
  register_cuda(m);
#endif
}
