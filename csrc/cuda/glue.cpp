// The torch-facing half of the CUDA backend (glue.h): every check before anything is staged or
// launched (the one validator, csrc/bucket.h), then one table upload and one launch per call
// on the current stream, without a host sync. Compiled by the host compiler with CUDA headers.
#include "cuda/glue.h"

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "algorithms.h"
#include "cuda/launchers.h"
#include "staging.h"

namespace fusedopt {
namespace cuda_glue {
namespace {
namespace fc = fusedopt::cuda;

constexpr bool same_mode(fc::WeightsMode cuda, Weights bucket) {
  return static_cast<int>(cuda) == static_cast<int>(bucket);
}
static_assert(same_mode(fc::kPlainWeights, kPlain) && same_mode(fc::kMasterWeights, kMaster) &&
                  same_mode(fc::kKahanWeights, kKahan),
              "launchers.h WeightsMode must number the modes as csrc/bucket.h Weights");

// The validator has admitted only these four dtypes by the time this runs.
fc::DType dtype_code(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kDouble: return fc::kF64;
    case at::kHalf: return fc::kF16;
    case at::kBFloat16: return fc::kBF16;
    default: return fc::kF32;
  }
}

const float* scalar_ptr(const std::optional<at::Tensor>& t) {
  return t.has_value() ? t->data_ptr<float>() : nullptr;
}

// A clip coefficient, float32 or float64 (check_scalar's float64_too), for the kernels.
fc::DeviceScalar device_scalar(const std::optional<at::Tensor>& t) {
  if (!t.has_value()) return fc::DeviceScalar{nullptr, false};
  return fc::DeviceScalar{t->data_ptr(), t->scalar_type() == at::kDouble};
}

// Note [table upload]: each step's table (one for both launches of a two-stage algorithm) goes
// up through a pinned staging buffer with one asynchronous copy on the current stream (no host sync; torch's pinned allocator reuses the
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

// The table of one update step: every param of the bucket that has a grad (a param without
// one is neither updated nor counted as stepped, as in torch); the algorithm's `algo_states`
// state lists from kState0 on, the weights mode's list (if any) in kExtra (Note [slots],
// launchers.h). Note [dense arrays], staging.h.
std::vector<fc::TensorMeta> build_update(const Bucket& b, size_t algo_states, Staging& staging) {
  std::vector<fc::TensorMeta> metas;
  const fc::DType dtype = dtype_code(b.params[0]);
  const bool stochastic = !b.seeds.empty();
  for (size_t i = 0; i < b.params.size(); ++i) {
    const at::Tensor& p = b.params[i];
    const at::Tensor& g = b.grad(i);
    if (!g.defined()) continue;
    // Note [stochastic rounding]: an element's random bits follow its row-major index, which
    // the kernels take from their walk; so with seeds a param that is not contiguous (a
    // transposed or channels-last one too) is stepped in contiguous copies.
    const at::DimVector strides = !stochastic || p.is_contiguous()
                                      ? Staging::layout_of(p)
                                      : Staging::contiguous_strides(p);
    fc::TensorMeta m{};
    m.ptr[fc::kGrad] = staging.flat(g, strides, false);
    m.ptr[fc::kParam] = staging.flat(p, strides, true);
    for (size_t k = 0; k < b.states.size(); ++k) {
      const size_t slot = k == algo_states ? size_t{fc::kExtra} : fc::kState0 + k;
      m.ptr[slot] = staging.flat(b.states[k][i], strides, true);
    }
    m.seed = stochastic ? static_cast<uint32_t>(b.seeds[i]) : 0u;
    m.step = b.steps[i].data_ptr<float>();
    m.numel = p.numel();
    m.group = b.group_index[i];
    m.dtype = dtype;
    metas.push_back(m);
  }
  return metas;
}

// One reduction launch and one finalize over tensors of any of the four dtypes (mixed), which
// the validator has checked (check_bucket_norm, check_tensors_norm).
at::Tensor norm_of(const std::vector<at::Tensor>& tensors, const at::Device& device, bool inf,
                   const std::optional<at::Tensor>& inv_scale,
                   const std::optional<at::Tensor>& found_inf) {
  check_scalar(inv_scale, device, "inv_scale");
  check_scalar(found_inf, device, "found_inf");
  c10::cuda::CUDAGuard guard(device);
  std::vector<fc::TensorMeta> metas;
  std::vector<at::Tensor> dense;   // keeps contiguous copies of non-dense tensors alive
  // float64 when a tensor is fp64 (Note [norm dtype], fusedopt/backends/__init__.py)
  bool out_double = false;
  for (const at::Tensor& t : tensors) {
    out_double = out_double || t.scalar_type() == at::kDouble;
    if (t.numel() == 0) continue;   // adds nothing (and inf has no identity in torch)
    // The norm does not depend on element order: any dense layout is walked as it is.
    dense.push_back(t.is_non_overlapping_and_dense() ? t : t.contiguous());
    fc::TensorMeta m{};
    m.ptr[fc::kGrad] = dense.back().data_ptr();
    m.numel = t.numel();
    m.dtype = dtype_code(t);
    metas.push_back(m);
  }
  at::Tensor out = at::empty(
      {}, at::TensorOptions().dtype(out_double ? at::kDouble : at::kFloat).device(device));
  if (metas.empty()) return out.zero_();
  const Uploaded up = upload(metas, device);
  at::Tensor partials =
      at::empty({up.table.num_blocks}, at::TensorOptions().dtype(at::kDouble).device(device));
  C10_CUDA_CHECK(fc::launch_norm(up.table, inf, partials.data_ptr<double>(), out.data_ptr(),
                                 out_double, scalar_ptr(inv_scale),
                                 const_cast<float*>(scalar_ptr(found_inf)),
                                 c10::cuda::getCurrentCUDAStream()));
  return out;
}

}  // namespace

void step(Bucket& b, const at::Tensor& hp, int64_t algo, int64_t flags,
          const std::optional<at::Tensor>& clip_coef, const std::optional<at::Tensor>& inv_scale,
          const std::optional<at::Tensor>& found_inf) {
  check_device_type(b, c10::DeviceType::CUDA, "cuda_step");
  thread_local std::vector<GradView> grads;   // (build_update reads the grads again)
  check_step_cached(b, hp, static_cast<int>(algo), flags, clip_coef, inv_scale, found_inf, grads);
  if (b.params.empty()) return;
  const at::Device device = b.params[0].device();
  c10::cuda::CUDAGuard guard(device);
  Staging staging;
  const auto algo_states = static_cast<size_t>(num_states(static_cast<int>(algo), flags));
  const std::vector<fc::TensorMeta> metas = build_update(b, algo_states, staging);
  if (metas.empty()) return;
  const Uploaded up = upload(metas, device);
  // Note [two stages] (engine.cuh): kSums partial sums per block, written by the first launch
  // and read by the second; from torch's caching allocator, so no sync and capturable.
  at::Tensor sums;
  if (algorithm_info(static_cast<int>(algo)).two_stage) {
    sums = at::empty({static_cast<int64_t>(up.table.num_blocks) * kSums},
                     at::TensorOptions().dtype(at::kDouble).device(device));
  }
  const fc::DType dtype = dtype_code(b.params[0]);
  const fc::UpdateArgs args{up.table,
                            dtype,
                            algo_states > 0 ? dtype_code(b.states[0][0]) : dtype,
                            static_cast<fc::WeightsMode>(b.weights),
                            !b.seeds.empty(),
                            hp.data_ptr<double>(),
                            flags,
                            fc::StepScalars{device_scalar(clip_coef), scalar_ptr(inv_scale),
                                            scalar_ptr(found_inf)},
                            sums.defined() ? sums.data_ptr<double>() : nullptr,
                            c10::cuda::getCurrentCUDAStream()};
  C10_CUDA_CHECK(fc::launch_update(static_cast<int>(algo), args));
  staging.write_back();
}

// Norm of every grad of the bucket, pending params included (the reference's bucket_norm).
at::Tensor bucket_norm(const Bucket& b, double norm_type,
                       const std::optional<at::Tensor>& inv_scale,
                       const std::optional<at::Tensor>& found_inf) {
  check_device_type(b, c10::DeviceType::CUDA, "cuda_bucket_norm");
  if (b.params.empty() && b.pending.empty()) {
    check_norm_type(norm_type);
    return at::zeros({}, at::kFloat);
  }
  const at::Device device = (b.params.empty() ? b.pending : b.params)[0].device();
  const bool inf = check_bucket_norm(b, norm_type, device);
  std::vector<at::Tensor> grads;
  for (size_t i = 0; i < b.params.size(); ++i) {
    if (b.grad(i).defined()) grads.push_back(b.grad(i));
  }
  for (const at::Tensor& p : b.pending) {
    if (p.grad().defined()) grads.push_back(p.grad());
  }
  return norm_of(grads, device, inf, inv_scale, found_inf);
}

at::Tensor tensors_norm(const std::vector<at::Tensor>& tensors, double norm_type,
                        const std::optional<at::Tensor>& inv_scale,
                        const std::optional<at::Tensor>& found_inf) {
  if (tensors.empty()) {
    check_norm_type(norm_type);
    return at::zeros({}, at::kFloat);
  }
  TORCH_CHECK(tensors[0].device().is_cuda(), "cuda_tensors_norm: tensors[0] is on ",
              tensors[0].device());
  const at::Device device = tensors[0].device();
  return norm_of(tensors, device, check_tensors_norm(tensors, norm_type, device), inv_scale,
                 found_inf);
}

void tensors_scale_(const std::vector<at::Tensor>& tensors, const at::Tensor& coef) {
  if (tensors.empty()) return;
  const at::Device device = tensors[0].device();
  TORCH_CHECK(device.is_cuda(), "cuda_tensors_scale_: tensors[0] is on ", device);
  for (size_t i = 0; i < tensors.size(); ++i) check_norm_input(tensors[i], device, "tensors", i);
  check_scalar(coef, device, "coef", true);
  c10::cuda::CUDAGuard guard(device);
  std::vector<fc::TensorMeta> metas;
  Staging staging;
  for (const at::Tensor& t : tensors) {
    if (t.numel() == 0) continue;
    fc::TensorMeta m{};
    m.ptr[fc::kGrad] = staging.flat(t, Staging::layout_of(t), true);
    m.numel = t.numel();
    m.dtype = dtype_code(t);
    metas.push_back(m);
  }
  if (metas.empty()) return;
  const Uploaded up = upload(metas, device);
  C10_CUDA_CHECK(fc::launch_scale(up.table, device_scalar(coef),
                                  c10::cuda::getCurrentCUDAStream()));
  staging.write_back();
}

}  // namespace cuda_glue
}  // namespace fusedopt
