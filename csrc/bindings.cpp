// The single binding file of fusedopt._C. Each entry checks its arguments with the one validator
// (csrc/bucket.h) before any tensor is touched; the kernels (csrc/cpu/, csrc/cuda/) assume valid
// input. The CUDA host glue lives in csrc/cuda/glue.cpp and is bound here when built.
#include <torch/extension.h>

#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "bucket.h"
#include "cpu/kernels.h"
#include "cpu/ops.h"
#include "param_groups.h"

#ifdef FUSEDOPT_WITH_CUDA
#include "cuda/glue.h"

namespace {

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
}  // namespace
#endif

namespace py = pybind11;

namespace fusedopt {
namespace {

using OptTensor = std::optional<at::Tensor>;

void check_cpu(const Bucket& b, const char* fn) {
  if (b.params.empty()) return;
  TORCH_CHECK(b.params[0].is_cpu(), fn, ": params[0] is on ", b.params[0].device(),
              "; the cpu backend steps CPU tensors only");
}

std::shared_ptr<Bucket> make_bucket(std::vector<at::Tensor> params,
                                    std::vector<std::vector<at::Tensor>> states,
                                    std::vector<at::Tensor> steps, std::vector<int64_t> group_index,
                                    std::vector<at::Tensor> pending,
                                    std::vector<std::optional<at::Tensor>> grads) {
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
  b->grads.reserve(grads.size());
  for (auto& g : grads) b->grads.push_back(g.has_value() ? std::move(*g) : at::Tensor());
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
  check_cpu(b, "adam_step");
  check_step(b, hp, amsgrad ? 3 : 2,
             amsgrad ? "exp_avg, exp_avg_sq, max_exp_avg_sq" : "exp_avg, exp_avg_sq",
             clip_coef, inv_scale, found_inf);
  cpu::adam_step(b, hp, amsgrad, maximize, decoupled, clip_coef, inv_scale, found_inf);
}

void sgd_step(Bucket& b, const at::Tensor& hp, bool nesterov, bool maximize,
              const OptTensor& clip_coef, const OptTensor& inv_scale, const OptTensor& found_inf) {
  // SGD keeps momentum buffers or nothing; which one the bucket holds decides (a master copy
  // list aside: Note [master copy], bucket.h)
  const size_t algo_states = b.states.size() - (has_master(b) ? 1 : 0);
  TORCH_CHECK(algo_states <= 1, "states: SGD keeps at most one state list (momentum_buffer) "
              "besides the master copies, got ", b.states.size());
  check_cpu(b, "sgd_step");
  check_step(b, hp, algo_states, "momentum_buffer or none", clip_coef, inv_scale, found_inf);
  cpu::sgd_step(b, hp, nesterov, maximize, clip_coef, inv_scale, found_inf);
}

at::Tensor bucket_norm(const Bucket& b, double norm_type) {
  check_norm_type(norm_type);
  const at::Device cpu(at::kCPU);
  for (size_t i = 0; i < b.params.size(); ++i) {
    const at::Tensor& g = b.grad(i);
    if (g.defined()) check_norm_input(g, cpu, "grad of params", i);
  }
  for (size_t j = 0; j < b.pending.size(); ++j) {
    const at::Tensor& g = b.pending[j].grad();
    if (g.defined()) check_norm_input(g, cpu, "grad of pending", j);
  }
  return cpu::bucket_norm(b, norm_type);
}

at::Tensor tensors_norm(const std::vector<at::Tensor>& tensors, double norm_type) {
  check_norm_type(norm_type);
  for (size_t i = 0; i < tensors.size(); ++i) {
    TORCH_CHECK(tensors[i].defined(), "tensors[", i, "] is undefined");
    check_norm_input(tensors[i], at::Device(at::kCPU), "tensors", i);
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
           py::arg("group_index"), py::arg("pending"),
           py::arg("grads") = std::vector<std::optional<at::Tensor>>());
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
  py::class_<GroupWatch>(m, "GroupWatch",
                         "the param_group values the hyper-parameter table was last written from "
                         "(Note [written groups are found by identity], csrc/param_groups.h)")
      .def(py::init<const py::list&, int64_t>(), py::arg("entries"), py::arg("num_cols"))
      .def_property_readonly("rows", &GroupWatch::rows)
      .def("reset", &GroupWatch::reset, py::arg("groups"))
      .def("refresh", &GroupWatch::refresh, py::arg("groups"), py::arg("rows"))
      .def("scan", &GroupWatch::scan, py::arg("groups"), py::arg("host"))
      .def("write", &GroupWatch::write, py::arg("groups"), py::arg("entry"), py::arg("values"),
           py::arg("host"));
  m.def("read_column", &read_column, py::arg("groups"), py::arg("key"), py::arg("index"),
        "float64 tensor of group[key] (or group[key][index]) per group; None if one is not a "
        "number");
  m.def("write_column", &write_column, py::arg("groups"), py::arg("key"), py::arg("index"),
        py::arg("values"),
        "group[key] (or group[key][index]) = values[i] per group; -1, or the first malformed "
        "group (nothing written)");
  m.def("cpu_capability", [] { return std::string(cpu::capability_name(cpu::capability())); },
        "the CPU kernel level in use: avx512, avx2 or scalar (FUSEDOPT_CPU_CAPABILITY caps it)");
#ifdef FUSEDOPT_WITH_CUDA
  register_cuda(m);
#endif
}
