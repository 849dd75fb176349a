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
void register_cuda(pybind11::module_& m);
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
      check_like_param(b.states[k][i], p, Name{"states", i, "", static_cast<int64_t>(k)},
                       Name{"params", i});
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
  TORCH_CHECK(b.states.size() == num_states, "states: expected ", num_states, " state lists (",
              states_are, "), got ", b.states.size());
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
  TORCH_CHECK(b.states.size() <= 1, "states: SGD keeps at most one state list "
              "(momentum_buffer), got ", b.states.size());
  check_step(b, hp, b.states.size(), "momentum_buffer or none", clip_coef, inv_scale, found_inf);
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
