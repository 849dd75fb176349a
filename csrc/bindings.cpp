// The single binding file of fusedopt._C. Every argument check of the C++ backends lives here,
// before any tensor is touched; the kernels (csrc/cpu/, csrc/cuda/) assume valid input.
#include <torch/extension.h>

#include "bucket.h"

#ifdef FUSEDOPT_WITH_CUDA
// ==== CUDA backend glue: edited only by the CUDA work ====
void register_cuda(pybind11::module_& m);
// ==== end CUDA backend glue ====
#endif

namespace py = pybind11;

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fusedopt's compiled kernels (CPU: csrc/cpu/)";
  py::class_<fusedopt::Bucket, std::shared_ptr<fusedopt::Bucket>>(m, "Bucket");
#ifdef FUSEDOPT_WITH_CUDA
  register_cuda(m);
#endif
}
