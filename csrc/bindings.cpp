// The single binding file of fusedopt._C. Each entry checks its arguments with the one validator
// (csrc/bucket.h) before any tensor is touched; the kernels (csrc/cpu/, csrc/cuda/) assume valid
// input. The CUDA host glue lives in csrc/cuda/glue.cpp and is bound here when built.
#include <torch/extension.h>

#include <algorithm>
#include <optional>
#include <string>
#include <vector>

#include "algorithms.h"
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
  m.def("cuda_step", &g::step,
        "one step of algorithm `algo` (csrc/algorithms.h) with `flags` of a CUDA bucket: no "
        "host sync (docs/internals.md, Note [algorithm as data])",
        arg("bucket"), arg("hp"), arg("algo"), arg("flags"), arg("clip_coef") = none,
        arg("inv_scale") = none, arg("found_inf") = none);
  m.def("cuda_bucket_norm", &g::bucket_norm,
        "2- or inf-norm of the bucket's grads as a 0-d device tensor, float64 for fp64 grads, else "
        "float32 (times inv_scale if given; sets found_inf to 1 if given and the norm is not "
        "finite)",
        arg("bucket"), arg("norm_type"), arg("inv_scale") = none, arg("found_inf") = none);
  m.def("cuda_tensors_norm", &g::tensors_norm, "2- or inf-norm of CUDA tensors of mixed dtypes (float64 if one is fp64, else float32)",
        arg("tensors"), arg("norm_type"), arg("inv_scale") = none, arg("found_inf") = none);
  m.def("cuda_tensors_scale_", &g::tensors_scale_,
        "tensors[i] *= coef in place (a 0-d float32 or float64 device tensor), one launch",
        arg("tensors"), arg("coef"));
}
}  // namespace
#endif

namespace py = pybind11;

namespace fusedopt {
namespace {

using OptTensor = std::optional<at::Tensor>;

std::shared_ptr<Bucket> make_bucket(std::vector<at::Tensor> params,
                                    std::vector<std::vector<at::Tensor>> states,
                                    std::vector<at::Tensor> steps, std::vector<int64_t> group_index,
                                    std::vector<at::Tensor> pending,
                                    std::vector<std::optional<at::Tensor>> grads, int weights,
                                    std::vector<int64_t> seeds) {
  auto b = std::make_shared<Bucket>();
  b->weights = weights;
  b->seeds = std::move(seeds);
  b->params = std::move(params);
  b->states = std::move(states);
  b->steps = std::move(steps);
  b->group_index = group_rows(group_index);
  for (int32_t row : b->group_index) b->max_row = std::max(b->max_row, row);
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

void step(Bucket& b, const at::Tensor& hp, int algo, int64_t flags, const OptTensor& clip_coef,
          const OptTensor& inv_scale, const OptTensor& found_inf) {
  check_device_type(b, c10::DeviceType::CPU, "step");
  thread_local std::vector<GradView> grads;
  const bool rechecked =
      check_step_cached(b, hp, algo, flags, clip_coef, inv_scale, found_inf, grads);
  cpu::step(b, grads, rechecked, hp, algo, flags, clip_coef, inv_scale, found_inf);
}

// The C++ table's view of an algorithm, for tests/test_cpp_table.py to hold against the Python
// descriptors (fusedopt/algorithms/).
py::dict algorithm_info_of(int algo, int64_t flags) {
  check_algo(algo, flags);
  const AlgorithmInfo& info = algorithm_info(algo);
  auto split = [](const std::string& joined) {
    py::list out;
    for (size_t start = 0; start < joined.size();) {
      size_t end = joined.find(", ", start);
      if (end == std::string::npos) end = joined.size();
      out.append(joined.substr(start, end - start));
      start = end + 2;
    }
    return py::tuple(out);
  };
  py::dict out;
  out["name"] = info.name;
  out["two_stage"] = info.two_stage;
  out["flag_names"] = split(info.flag_names);
  out["state_names"] = num_states(algo, flags) == 0 ? py::tuple() : split(state_names(algo, flags));
  return out;
}

at::Tensor bucket_norm(const Bucket& b, double norm_type) {
  check_bucket_norm(b, norm_type, at::Device(at::kCPU));
  return cpu::bucket_norm(b, norm_type);
}

at::Tensor tensors_norm(const std::vector<at::Tensor>& tensors, double norm_type) {
  check_tensors_norm(tensors, norm_type, at::Device(at::kCPU));
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
           py::arg("grads") = std::vector<std::optional<at::Tensor>>(), py::arg("weights") = 0,
           py::arg("seeds") = std::vector<int64_t>(),
           "a bucket (csrc/bucket.h; fusedopt/_engine.py BucketSpec): weights is 0 (plain), 1 "
           "(the last state list: fp32 master copies) or 2 (kahan compensations); seeds: none, "
           "or one per param for stochastically rounded bf16 states (docs/internals.md, Note "
           "[precision modes])");
  m.def("pending_with_grad", &pending_with_grad, py::arg("bucket"),
        "indices into bucket.pending of the params whose .grad is defined now");
  m.def("step", &step, py::arg("bucket"), py::arg("hp"), py::arg("algo"), py::arg("flags"),
        py::arg("clip_coef"), py::arg("inv_scale"), py::arg("found_inf"),
        "one step of algorithm `algo` (csrc/algorithms.h) with `flags` of every param with a "
        "grad (docs/internals.md, Note [algorithm as data])");
  m.def("algorithm_info", &algorithm_info_of, py::arg("algo"), py::arg("flags") = 0,
        "the C++ table's entry of an algorithm: dict(name, two_stage, flag_names, state_names "
        "(for these flags))");
  m.def("bucket_norm", &bucket_norm, py::arg("bucket"), py::arg("norm_type"),
        "0-d norm of every defined grad of the bucket's params and pending (float64 if one is "
        "fp64, else float32)");
  m.def("tensors_norm", &tensors_norm, py::arg("tensors"), py::arg("norm_type"),
        "0-d norm of the tensors together (float64 if one is fp64, else float32)");
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
