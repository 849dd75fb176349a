// The one staging helper of the C++ backends (CPU: csrc/cpu/ops.cpp, CUDA: csrc/cuda/glue.cpp).
//
// Note [dense arrays]: the kernels walk each tensor's storage as one flat array, which visits
// the elements of a param, its grad and its states in the same order only when they are
// non-overlapping and dense with equal strides. That holds for every layout torch.optim's own
// state gets (zeros_like(param) keeps the param's strides), transposed and channels-last params
// included. Anything else (a param that is a view with gaps, a grad laid out unlike its param)
// goes through a temporary in the walking layout: a copy in, and a copy back (write_back) for
// what the step writes.
#pragma once
#include <ATen/ATen.h>

#include <algorithm>
#include <utility>
#include <vector>

namespace fusedopt {

class Staging {
 public:
  // The strides every array of `p` is walked in: p's own when dense, else contiguous.
  // A DimVector: no heap allocation for up to 5 dimensions (this runs per tensor and step).
  static at::DimVector layout_of(const at::Tensor& p) {
    if (p.is_non_overlapping_and_dense()) return at::DimVector(p.strides());
    return contiguous_strides(p);
  }

  static at::DimVector contiguous_strides(const at::Tensor& t) {
    at::DimVector strides(t.dim());
    int64_t stride = 1;
    for (int64_t d = t.dim() - 1; d >= 0; --d) {
      strides[d] = stride;
      stride *= std::max<int64_t>(t.size(d), 1);
    }
    return strides;
  }

  // t's memory as one flat array in the element order of `strides`: t's own when it is laid
  // out so, else a staged copy (copied back into t by write_back() if `written`).
  void* flat(const at::Tensor& t, at::IntArrayRef strides, bool written) {
    if (t.is_non_overlapping_and_dense() && t.strides() == strides) return t.data_ptr();
    at::Tensor tmp = at::empty_strided(t.sizes(), strides, t.options());
    tmp.copy_(t);
    if (written) write_back_.emplace_back(t, tmp);
    keep_.push_back(tmp);
    return tmp.data_ptr();
  }

  // The CPU engine's form: t's own memory if `in_place` (its group is dense alike), else a
  // contiguous one.
  void* data(const at::Tensor& t, bool in_place, bool written) {
    if (in_place || t.is_contiguous()) return t.data_ptr();
    return flat(t, contiguous_strides(t), written);
  }

  // The staged results reach their tensors (on CUDA: after the launch, on the same stream),
  // then every staged copy is dropped.
  void write_back() {
    for (auto& [original, tmp] : write_back_) original.copy_(tmp);
    clear();
  }

  void clear() {
    keep_.clear();
    write_back_.clear();
  }

 private:
  std::vector<at::Tensor> keep_;
  std::vector<std::pair<at::Tensor, at::Tensor>> write_back_;
};

}  // namespace fusedopt
