// The CPU step and norms: per-tensor scalars on the calling thread, then engine runs
// (multi_tensor.h) over every chunk of the bucket with the kernels of the chosen level.
#include "cpu/ops.h"

#include <algorithm>
#include <array>
#include <cmath>

#include <c10/core/GradMode.h>

#include "algorithms.h"
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
// (Staging, csrc/staging.h). With stochastic rounding (Note [stochastic rounding]) the
// random bits of an element come from its row-major index, which is its place in memory only
// in contiguous tensors: a param with any other layout is stepped on contiguous copies.
bool dense_alike(const at::Tensor& p, const at::Tensor* const* others, int count,
                 bool row_major) {
  bool all_contiguous = p.is_contiguous();
  for (int k = 0; k < count; ++k) all_contiguous = all_contiguous && others[k]->is_contiguous();
  if (all_contiguous) return true;
  if (row_major || !p.is_non_overlapping_and_dense()) return false;
  for (int k = 0; k < count; ++k) {
    const at::Tensor& t = *others[k];
    if (t.strides() != p.strides() || !t.is_non_overlapping_and_dense()) return false;
  }
  return true;
}

// Per-call lists, reused across calls (one per calling thread): after a bucket's first step
// the fast path allocates nothing. A step of 1000 16-element tensors takes ~130 us in all, so
// regrowing these lists every call would be a visible share of it.
struct Scratch {
  TensorStep* tensors = nullptr;   // the stepped bucket's (BucketSteps::steps), by param index
  std::vector<float*> counters;
  std::vector<char> needs_sums;
  std::vector<int64_t> numels;
  std::vector<size_t> staged;      // params stepped through Staging this call
  std::vector<const void*> norm_data;
  std::vector<NormFn> norm_fn;
  std::vector<double> partials;
  std::vector<double> kept;         // larger tensors' kept updates (Note [kept update], lamb.h)
  std::vector<void*> kept_at;       // by param index: where its kept update starts
  Staging staging;
  WorkPlan plan;
};

Scratch& scratch() {
  thread_local Scratch s;
  s.counters.clear();
  s.needs_sums.clear();
  s.numels.clear();
  s.staged.clear();
  s.norm_data.clear();
  s.norm_fn.clear();
  s.staging.clear();
  return s;
}

// A step scalar as the double StepContext keeps: float32, or float64 (clip_coef, csrc/bucket.h
// check_scalar), each exact in double; a kernel rounds it to its compute type.
double scalar_or(const std::optional<at::Tensor>& t, double fallback) {
  if (!t.has_value()) return fallback;
  return t->scalar_type() == at::kDouble ? *t->data_ptr<double>() : *t->data_ptr<float>();
}

bool skipped(const std::optional<at::Tensor>& found_inf) {
  return found_inf.has_value() && *found_inf->data_ptr<float>() != 0.0f;
}

// A two-stage algorithm (Note [two stages], csrc/algorithms.h) through the engine (Note [two
// stages in cache] and Note [pipelined stages], multi_tensor.h): stage 1 writes the kSums partial
// sums of each chunk, a tensor's totals are added in chunk order (its chunks are consecutive in
// the plan) and folded into its scalars by the algorithm's finish, on whichever thread summed its
// last chunk; then stage 2.
// Where the algorithm keeps its update (Note [kept update], lamb.h), a tensor that takes both
// stages on one thread keeps it in this thread's buffer: 2^18 elements of at most 8 bytes (2
// MiB), allocated once per thread of the pool. Larger tensors are stepped in groups
// (kWholeElems), the updates kept in s.kept: a group's elements in the compute type
// (`compute_size` bytes each), at most 64 MiB of fp32 or one larger tensor's, kept for the next
// step as the staging buffers are (timm's Lamb allocates an `update` of each param's size every
// step).
template <class Update>
void run_two_stages(Scratch& s, FinishFn finish, const Update& update, bool keeps,
                    size_t compute_size) {
  s.partials.assign(static_cast<size_t>(s.plan.num_chunks()) * kSums, 0.0);
  const auto sum = [&](const Chunk& c, int64_t index) {
    const TensorStep& d = s.tensors[c.tensor];
    d.sums(d, c.begin, c.end, &s.partials[index * kSums]);
  };
  const auto fold = [&](int64_t t, int64_t first, int64_t end) {
    std::array<double, kSums> totals{};
    for (int64_t index = first; index < end; ++index) {
      for (int k = 0; k < kSums; ++k) totals[k] += s.partials[index * kSums + k];
    }
    finish(s.tensors[t], totals.data());
  };
  const auto both = [&](int64_t t, int64_t first, int64_t end) {
    const TensorStep& d = s.tensors[t];
    if (d.keep == nullptr) {
      for (int64_t c = first; c < end; ++c) sum(s.plan.chunk(c), c);
      fold(t, first, end);
      for (int64_t c = first; c < end; ++c) update(s.plan.chunk(c));
      return;
    }
    thread_local std::vector<double> kept(kCachedChunks * kChunkElems);
    for (int64_t c = first; c < end; ++c) {
      const Chunk& chunk = s.plan.chunk(c);
      d.keep(d, chunk.begin, chunk.end, &s.partials[c * kSums], kept.data());
    }
    fold(t, first, end);
    for (int64_t c = first; c < end; ++c) {
      const Chunk& chunk = s.plan.chunk(c);
      d.apply(d, chunk.begin, chunk.end, kept.data());
    }
  };
  const auto whole = [&](const std::vector<int64_t>& tensors, int64_t elems) {
    if (!keeps) {
      s.plan.run_pipelined(
          tensors, elems, sum,
          [&](int64_t t) { fold(t, s.plan.first_chunk(t), s.plan.first_chunk(t + 1)); }, update);
      return;
    }
    const size_t doubles = (static_cast<size_t>(elems) * compute_size + 7) / 8;
    if (s.kept.size() < doubles) s.kept.resize(doubles);
    s.kept_at.resize(s.numels.size());
    char* at = reinterpret_cast<char*>(s.kept.data());
    for (int64_t t : tensors) {      // each tensor's update from its own place in the buffer
      s.kept_at[t] = at;
      at += static_cast<size_t>(s.numels[t]) * compute_size;
    }
    s.plan.run_pipelined(
        tensors, elems,
        [&](const Chunk& c, int64_t index) {
          const TensorStep& d = s.tensors[c.tensor];
          d.keep(d, c.begin, c.end, &s.partials[index * kSums], s.kept_at[c.tensor]);
        },
        [&](int64_t t) { fold(t, s.plan.first_chunk(t), s.plan.first_chunk(t + 1)); },
        [&](const Chunk& c) {
          const TensorStep& d = s.tensors[c.tensor];
          d.apply(d, c.begin, c.end, s.kept_at[c.tensor]);
        });
  };
  s.plan.run_two_stages(s.needs_sums, update, both, whole);
}

}  // namespace

// Note [persistent steps]: each param's TensorStep (its kernels' arguments) is kept in the
// bucket from one step to the next. It is filled from the tensors when check_step_cached ran a
// full check (Note [pack-time checks], bucket.h: the tensors' prints changed, or a first step);
// a step then writes only what changes at every step: the grad's address, the kernels (the
// level can change between calls: FUSEDOPT_CPU_CAPABILITY), the rounding keys and the
// algorithm's scalars. With the checks of Note [pack-time checks], `fusedopt-bench --preset
// host --impl fusedopt-cpu,torch-fused` (64-element AdamW tensors, one group each, interleaved
// with torch fused, two runs each of c005757 and this change) went from 350-374 to 264-334 us at
// 465 tensors, 619-640 to 459-475 us at 1000 and 4.2-5.0 to 3.0-3.1 ms at 5000; the C++ step
// alone (`python bench/host_step.py`, ns per tensor in cache / cold) from 162-188 / 327-348 to
// 137-172 / 228-245 at 465-1000 tensors, and 413 / 471 to 319-366 / 339-421 at 5000.
struct BucketSteps {
  std::vector<TensorStep> steps;   // per param
  std::vector<float*> counters;    // per param: its step counter
  std::vector<int64_t> numels;     // per param
  std::vector<char> in_place;      // per param: it and its states are contiguous
};

namespace {

// d's param and state pointers at params[i]'s own memory (Note [dense fast path]).
void point_home(TensorStep& d, const Bucket& b, size_t i, int num, bool extra) {
  d.param = b.params[i].data_ptr();
  for (int k = 0; k < num; ++k) d.states[k] = b.states[k][i].data_ptr();
  d.extra = extra ? b.states.back()[i].data_ptr() : nullptr;
}

BucketSteps& steps_of(Bucket& b, bool rechecked, int num, bool extra) {
  if (b.cpu_steps && !rechecked) return *b.cpu_steps;
  if (!b.cpu_steps) b.cpu_steps = std::make_shared<BucketSteps>();
  BucketSteps& home = *b.cpu_steps;
  const size_t n = b.params.size();
  home.steps.assign(n, TensorStep{});
  home.counters.resize(n);
  home.numels.resize(n);
  home.in_place.resize(n);
  for (size_t i = 0; i < n; ++i) {
    bool contiguous = b.params[i].is_contiguous();
    for (const auto& list : b.states) contiguous = contiguous && list[i].is_contiguous();
    home.in_place[i] = contiguous;
    if (contiguous) point_home(home.steps[i], b, i, num, extra);
    home.counters[i] = b.steps[i].data_ptr<float>();
    home.numels[i] = b.params[i].numel();
  }
  return home;
}

// params[i] stepped through Staging (csrc/staging.h): on contiguous copies unless it, its grad
// and its states are dense alike (Note [dense fast path]).
void stage(Scratch& s, const Bucket& b, size_t i, TensorStep& d, int num, bool extra,
           bool stochastic) {
  const at::Tensor& p = b.params[i];
  const at::Tensor& g = b.grad(i);
  std::array<const at::Tensor*, kMaxStates + 2> others{&g};
  for (int k = 0; k < num; ++k) others[1 + k] = &b.states[k][i];
  if (extra) others[1 + num] = &b.states.back()[i];
  const bool fast = dense_alike(p, others.data(), 1 + num + (extra ? 1 : 0), stochastic);
  d.param = s.staging.data(p, fast, true);
  d.grad = s.staging.data(g, fast, false);
  for (int k = 0; k < num; ++k) d.states[k] = s.staging.data(b.states[k][i], fast, true);
  d.extra = extra ? s.staging.data(b.states.back()[i], fast, true) : nullptr;
  s.staged.push_back(i);
}

}  // namespace

// Note [one driver]: every algorithm steps through this one function. An algorithm contributes,
// in its csrc/cpu/<name>.h, a `prepare` (its per-tensor scalars in double from its table row,
// counter and flags), for two-stage algorithms a `finish` (the tensor's sums folded into those
// scalars) and an element functor `Math<C>` templated on the vector type; kernels_isa.h
// instantiates the kernels per param dtype, state dtype and state-list count into the table
// this driver indexes by algorithm id. The driver stages, plans and runs the chunks, and grows
// each counter once, after the last stage.
void step(Bucket& b, const std::vector<GradView>& grads, bool rechecked, const at::Tensor& hp,
          int algo, int64_t flags, const std::optional<at::Tensor>& clip_coef,
          const std::optional<at::Tensor>& inv_scale,
          const std::optional<at::Tensor>& found_inf) {
  if (skipped(found_inf) || b.params.empty()) return;
  // the slow path copies into leaf params that require grad (Note [dense fast path])
  c10::AutoGradMode no_grad(false);
  const AlgoKernels& kernels = kernel_table().algo[algo];
  const bool two_stage = kernels.finish != nullptr;
  Scratch& s = scratch();
  const double* table = hp.data_ptr<double>();
  const bool extra = b.weights != kPlain;
  const bool stochastic = !b.seeds.empty();
  const int num = num_states(algo, flags);
  BucketSteps& home = steps_of(b, rechecked, num, extra);
  // one dtype and one state dtype per bucket (the validator's)
  const DType dtype = dtype_of(b.params[0]);
  const DType state_dtype = num > 0 ? dtype_of(b.states[0][0]) : dtype;
  const UpdateFn update = kernels.update[dtype][state_dtype][num][b.weights][stochastic];
  const SumsFn sums = kernels.sums[dtype][state_dtype][num][b.weights];
  const KeepFn keep = kernels.keep[dtype][state_dtype][num][b.weights][stochastic];
  const ApplyFn apply = kernels.apply[dtype][state_dtype][num][b.weights];
  StepContext context{scalar_or(inv_scale, 1.0), scalar_or(clip_coef, 1.0)};
  const size_t n = b.params.size();
  s.tensors = home.steps.data();
  s.numels.assign(n, 0);           // a param without a grad: no chunks, no sums
  s.needs_sums.assign(n, 0);
  for (size_t i = 0; i < n; ++i) {
    if (!grads[i].defined) continue;
    TensorStep& d = home.steps[i];
    d.update = update;
    d.sums = sums;
    d.keep = keep;
    d.apply = apply;
    if (home.in_place[i] && grads[i].contiguous) {
      d.grad = grads[i].data;
    } else {
      stage(s, b, i, d, num, extra, stochastic);
    }
    float* counter = home.counters[i];
    if (stochastic) {
      // t: the counter after this step's increment, as the reference's int(steps[i] + 1)
      const double t = static_cast<double>(*counter + 1.0f);
      const auto seed = static_cast<uint32_t>(b.seeds[i]);
      for (int k = 0; k < num; ++k) d.keys[k] = rounding_key(seed, t, k);
    }
    const double* row = table + static_cast<int64_t>(b.group_index[i]) * kHpCols;
    s.needs_sums[i] = kernels.prepare(d, row, *counter, flags, context);
    s.counters.push_back(counter);
    s.numels[i] = home.numels[i];
  }
  s.plan.build(s.numels);
  const auto update_chunk = [&](const Chunk& c) {
    const TensorStep& d = s.tensors[c.tensor];
    d.update(d, c.begin, c.end);
  };
  if (two_stage) {
    run_two_stages(s, kernels.finish, update_chunk, keep != nullptr, dtype == kDouble ? 8 : 4);
  } else {
    s.plan.run([&](const Chunk& c, int64_t) { update_chunk(c); });
  }
  for (float* counter : s.counters) *counter += 1.0f;
  s.staging.write_back();
  for (size_t i : s.staged) {   // back at their own memory for the next step's fast path
    if (home.in_place[i]) point_home(home.steps[i], b, i, num, extra);
  }
}

namespace {

// One reduction over every chunk of `tensors` (defined ones only), partials combined in
// chunk order (Note [norm accumulation] in norm.h). The result is float64 when a tensor is fp64,
// else float32: torch's clip_grad_norm_ takes each grad's norm in its dtype and their norm in
// the promoted one (Note [norm dtype], fusedopt/backends/__init__.py). The double total holds either.
template <class Tensors>
at::Tensor norm_of(const Tensors& tensors, double norm_type) {
  const bool inf = std::isinf(norm_type);
  const KernelTable& kernels = kernel_table();
  Scratch& s = scratch();
  at::ScalarType out = at::kFloat;
  for (const at::Tensor* t : tensors) {
    if (!t->defined()) continue;
    if (t->scalar_type() == at::kDouble) out = at::kDouble;
    if (t->numel() == 0) continue;
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
  return at::scalar_tensor(inf ? result : std::sqrt(result), out);
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
