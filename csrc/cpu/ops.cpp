// The CPU steps: per-tensor scalars on the calling thread, then one engine run
// (multi_tensor.h) over every chunk of the bucket with the kernels of the chosen level.
#include "cpu/ops.h"

#include <cmath>
#include <limits>

#include <c10/core/GradMode.h>

#include "cpu/kernels.h"
#include "cpu/multi_tensor.h"
#include "hparams.h"
#include "staging.h"

namespace fusedopt::cpu {
namespace {

DType dtype_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kDouble: return kDouble;
    case at::kHalf: return kHalf;
    case at::kBFloat16: return kBFloat16;
    default: return kFloat;   // the validator (csrc/bucket.h) admits only these four
  }
}

// Note [dense fast path]: a param is stepped in place when it, its grad and its states are
// all non-overlapping and dense with the same strides: element j of each memory block is
// then the same logical element (contiguous tensors, but also transposed or channels-last
// params whose grads and states follow their layout, as autograd and zeros_like make them).
// Anything else is stepped on contiguous copies, which are copied back after the run
// (Staging, csrc/staging.h). Null entries (a state the step does not have) are skipped.
bool dense_alike(const at::Tensor& p, std::initializer_list<const at::Tensor*> others) {
  bool all_contiguous = p.is_contiguous();
  for (const at::Tensor* t : others) all_contiguous = all_contiguous && (!t || t->is_contiguous());
  if (all_contiguous) return true;
  if (!p.is_non_overlapping_and_dense()) return false;
  for (const at::Tensor* t : others) {
    if (t && (t->strides() != p.strides() || !t->is_non_overlapping_and_dense())) return false;
  }
  return true;
}

// Per-call lists, reused across calls (one per calling thread): after a bucket's first step
// the fast path allocates nothing. A step of 1000 16-element tensors takes ~130 us in all, so
// regrowing these lists every call would be a visible share of it.
struct Scratch {
  std::vector<AdamTensor> adam;
  std::vector<SgdTensor> sgd;
  std::vector<int64_t> numels;
  std::vector<const void*> norm_data;
  std::vector<NormFn> norm_fn;
  std::vector<double> partials;
  Staging staging;
  WorkPlan plan;
};

Scratch& scratch() {
  thread_local Scratch s;
  s.adam.clear();
  s.sgd.clear();
  s.numels.clear();
  s.norm_data.clear();
  s.norm_fn.clear();
  s.staging.clear();
  return s;
}

float scalar_or(const std::optional<at::Tensor>& t, float fallback) {
  return t.has_value() ? *t->data_ptr<float>() : fallback;
}

// torch's 1 - beta**step (and its **0.5), remembered for the last (beta, step): the params
// of a model share betas and step count, and pow was the largest single cost in a profile
// of steps of 1000 16-element tensors (13% of all samples, Python included).
class BiasCorrection {
 public:
  explicit BiasCorrection(bool root) : root_(root) {}
  double operator()(double beta, double step) {
    if (beta != beta_ || step != step_) {
      beta_ = beta;
      step_ = step;
      value_ = 1.0 - std::pow(beta, step);
      if (root_) value_ = std::pow(value_, 0.5);
    }
    return value_;
  }

 private:
  bool root_;
  double beta_ = std::numeric_limits<double>::quiet_NaN(), step_ = 0, value_ = 0;
};

bool skipped(const std::optional<at::Tensor>& found_inf) {
  return found_inf.has_value() && *found_inf->data_ptr<float>() != 0.0f;
}

}  // namespace

void adam_step(Bucket& b, const at::Tensor& hp, bool amsgrad, bool maximize, bool decoupled,
               const std::optional<at::Tensor>& clip_coef,
               const std::optional<at::Tensor>& inv_scale,
               const std::optional<at::Tensor>& found_inf) {
  if (skipped(found_inf)) return;
  // the slow path copies into leaf params that require grad (Note [dense fast path])
  c10::AutoGradMode no_grad(false);
  const KernelTable& kernels = kernel_table();
  Scratch& s = scratch();
  const double* table = hp.data_ptr<double>();
  const double grad_scale = scalar_or(inv_scale, 1.0f);
  const double grad_coef = static_cast<double>(scalar_or(clip_coef, 1.0f)) * (maximize ? -1 : 1);
  const bool master = has_master(b);
  BiasCorrection bias_correction1(false), bias_correction2_sqrt(true);
  for (size_t i = 0; i < b.params.size(); ++i) {
    const at::Tensor& p = b.params[i];
    const at::Tensor& g = b.grad(i);
    if (!g.defined()) continue;
    const at::Tensor& m = b.states[0][i];
    const at::Tensor& v = b.states[1][i];
    const at::Tensor* vmax = amsgrad ? &b.states[2][i] : nullptr;
    const at::Tensor* copy = master ? &b.states.back()[i] : nullptr;
    bool fast = dense_alike(p, {&g, &m, &v, vmax, copy});

    // torch: step_t += 1 in float32, then bias corrections from its value in double
    float* step = b.steps[i].data_ptr<float>();
    *step += 1.0f;
    const double t = *step;
    const double* row = table + static_cast<int64_t>(b.group_index[i]) * kHpCols;
    const double lr = row[kLr], wd = row[kWeightDecay], beta1 = row[kBeta1], beta2 = row[kBeta2];

    AdamTensor d;
    d.fn = kernels.adam[dtype_of(p)][amsgrad][master];
    d.param = s.staging.data(p, fast, true);
    d.grad = s.staging.data(g, fast, false);
    d.exp_avg = s.staging.data(m, fast, true);
    d.exp_avg_sq = s.staging.data(v, fast, true);
    d.max_exp_avg_sq = amsgrad ? s.staging.data(*vmax, fast, true) : nullptr;
    d.master = master ? static_cast<float*>(s.staging.data(*copy, fast, true)) : nullptr;
    d.grad_scale = grad_scale;
    d.grad_coef = grad_coef;
    d.l2 = decoupled ? 0.0 : wd;
    d.decay = decoupled ? 1.0 - lr * wd : 1.0;
    d.lerp_weight = 1.0 - beta1;
    d.beta2 = beta2;
    d.one_minus_beta2 = 1.0 - beta2;
    d.bias_correction2_sqrt = bias_correction2_sqrt(beta2, t);
    d.neg_step_size = -(lr / bias_correction1(beta1, t));
    d.eps = row[kEps];
    s.adam.push_back(d);
    s.numels.push_back(p.numel());
  }
  s.plan.build(s.numels);
  s.plan.run([&](const Chunk& c, int64_t) {
    const AdamTensor& d = s.adam[c.tensor];
    d.fn(d, c.begin, c.end);
  });
  s.staging.write_back();
}

void sgd_step(Bucket& b, const at::Tensor& hp, bool nesterov, bool maximize,
              const std::optional<at::Tensor>& clip_coef,
              const std::optional<at::Tensor>& inv_scale,
              const std::optional<at::Tensor>& found_inf) {
  if (skipped(found_inf)) return;
  c10::AutoGradMode no_grad(false);
  const KernelTable& kernels = kernel_table();
  Scratch& s = scratch();
  const double* table = hp.data_ptr<double>();
  const bool master = has_master(b);
  const bool buffered = b.states.size() - master == 1;
  const double grad_scale = scalar_or(inv_scale, 1.0f);
  const double grad_coef = static_cast<double>(scalar_or(clip_coef, 1.0f)) * (maximize ? -1 : 1);
  for (size_t i = 0; i < b.params.size(); ++i) {
    const at::Tensor& p = b.params[i];
    const at::Tensor& g = b.grad(i);
    if (!g.defined()) continue;
    const at::Tensor* buf = buffered ? &b.states[0][i] : nullptr;
    const at::Tensor* copy = master ? &b.states.back()[i] : nullptr;
    bool fast = dense_alike(p, {&g, buf, copy});

    // SGD's counter only tells whether the buffer was seeded (torch's "buf is None")
    float* step = b.steps[i].data_ptr<float>();
    const bool seed = *step == 0.0f;
    *step += 1.0f;
    const double* row = table + static_cast<int64_t>(b.group_index[i]) * kHpCols;

    SgdTensor d;
    d.fn = kernels.sgd[dtype_of(p)][buffered][master];
    d.param = s.staging.data(p, fast, true);
    d.grad = s.staging.data(g, fast, false);
    d.momentum_buffer = buffered ? s.staging.data(*buf, fast, true) : nullptr;
    d.master = master ? static_cast<float*>(s.staging.data(*copy, fast, true)) : nullptr;
    d.grad_scale = grad_scale;
    d.grad_coef = grad_coef;
    d.weight_decay = row[kWeightDecay];
    d.momentum = row[kMomentum];
    d.one_minus_dampening = 1.0 - row[kDampening];
    d.neg_lr = -row[kLr];
    d.seed = seed;
    d.nesterov = nesterov;
    s.sgd.push_back(d);
    s.numels.push_back(p.numel());
  }
  s.plan.build(s.numels);
  s.plan.run([&](const Chunk& c, int64_t) {
    const SgdTensor& d = s.sgd[c.tensor];
    d.fn(d, c.begin, c.end);
  });
  s.staging.write_back();
}

namespace {

// One reduction over every chunk of `tensors` (defined ones only), partials combined in
// chunk order (Note [norm accumulation] in norm.h).
template <class Tensors>
at::Tensor norm_of(const Tensors& tensors, double norm_type) {
  const bool inf = std::isinf(norm_type);
  const KernelTable& kernels = kernel_table();
  Scratch& s = scratch();
  for (const at::Tensor* t : tensors) {
    if (!t->defined() || t->numel() == 0) continue;
    s.norm_fn.push_back(kernels.norm[dtype_of(*t)][inf]);
    // any dense layout will do: a norm does not care about element order
    s.norm_data.push_back(s.staging.data(*t, t->is_non_overlapping_and_dense(), false));
    s.numels.push_back(t->numel());
  }
  s.plan.build(s.numels);
  s.partials.assign(s.plan.num_chunks(), 0.0);
  s.plan.run([&](const Chunk& c, int64_t index) {
    s.partials[index] = s.norm_fn[c.tensor](s.norm_data[c.tensor], c.begin, c.end);
  });
  s.staging.clear();
  double result = 0;
  for (double x : s.partials) {
    if (inf) {
      result = (x != x || x > result) ? x : result;   // NaN propagates, as in torch
    } else {
      result += x;
    }
  }
  return at::scalar_tensor(inf ? result : std::sqrt(result), at::kFloat);
}

}  // namespace

at::Tensor bucket_norm(const Bucket& b, double norm_type) {
  std::vector<const at::Tensor*> grads;
  grads.reserve(b.params.size() + b.pending.size());
  for (size_t i = 0; i < b.params.size(); ++i) grads.push_back(&b.grad(i));
  for (const at::Tensor& p : b.pending) grads.push_back(&p.grad());
  return norm_of(grads, norm_type);
}

at::Tensor tensors_norm(at::TensorList tensors, double norm_type) {
  std::vector<const at::Tensor*> list;
  list.reserve(tensors.size());
  for (const at::Tensor& t : tensors) list.push_back(&t);
  return norm_of(list, norm_type);
}

}  // namespace fusedopt::cpu
