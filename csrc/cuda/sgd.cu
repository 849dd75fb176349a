// SGD over a whole bucket in one launch: torch.optim.sgd's _single_tensor_sgd math per
// element, with each tensor's row of the device hyper-parameter table. The step counter says
// whether the momentum buffer is seeded (docs/internals.md: 0 means torch's first step, where
// the buffer becomes a copy of the grad); it grows by one per step (Note [step counters]).
#include "engine.cuh"
#include "hparams.h"
#include "launchers.h"

namespace fusedopt {
namespace cuda {
namespace {

template <typename C> struct SgdRow {
  C neg_lr, weight_decay, momentum, one_minus_dampening;
  bool seeded;   // the buffer holds a value: steps[i] != 0
};

template <typename T, bool kMasterCopy> struct SgdFunctor {
  const double* hp;
  SgdFlags flags;
  StepScalars s;

  __device__ void operator()(const Table& table) const {
    using C = typename Compute<T>::type;
    constexpr int N = kVec<T>;
    if (skip_step(s.found_inf)) return;
    const Chunk c = chunk_of(table);
    __shared__ SgdRow<C> row;
    if (threadIdx.x == 0) {
      const double* h = hp + static_cast<int64_t>(c.t->group) * kHpCols;
      row.neg_lr = static_cast<C>(-h[kLr]);
      row.weight_decay = static_cast<C>(h[kWeightDecay]);
      row.momentum = static_cast<C>(h[kMomentum]);
      row.one_minus_dampening = static_cast<C>(1.0 - h[kDampening]);
      row.seeded = *c.t->step != 0.f;
    }
    __syncthreads();
    const SgdRow<C> r = row;
    const bool has_wd = r.weight_decay != C(0);
    const C inv_scale = s.inv_scale ? static_cast<C>(*s.inv_scale) : C(1);
    const C clip = s.clip_coef ? static_cast<C>(*s.clip_coef) : C(1);

    const T* g_ptr = array<T>(c, kGrad);
    T* p_ptr = array<T>(c, kParam);
    T* buf_ptr = flags.momentum ? array<T>(c, kState0) : nullptr;
    float* master_ptr = kMasterCopy ? array<float>(c, kMaster) : nullptr;
    const bool vec = aligned<N>(g_ptr) && aligned<N>(p_ptr) && (!buf_ptr || aligned<N>(buf_ptr)) &&
                     (!kMasterCopy || aligned<N>(master_ptr));

    for_each_pack<N>(c.n, vec, [&](int i, bool v_ok) {
      C g[N], p[N], buf[N];
      load(g, g_ptr, i, c.n, v_ok);
      if (kMasterCopy) {
        load(p, master_ptr, i, c.n, v_ok);
      } else {
        load(p, p_ptr, i, c.n, v_ok);
      }
      if (buf_ptr && r.seeded) load(buf, buf_ptr, i, c.n, v_ok);
#pragma unroll
      for (int k = 0; k < N; ++k) {
        C gk = g[k];
        if (s.inv_scale) gk *= inv_scale;
        if (s.clip_coef) gk *= clip;
        if (flags.maximize) gk = -gk;
        if (has_wd) gk += r.weight_decay * p[k];
        if (buf_ptr) {
          buf[k] = r.seeded ? buf[k] * r.momentum + r.one_minus_dampening * gk : gk;
          gk = flags.nesterov ? gk + r.momentum * buf[k] : buf[k];
        }
        p[k] += r.neg_lr * gk;
      }
      if (kMasterCopy) store(master_ptr, p, i, c.n, v_ok);
      store(p_ptr, p, i, c.n, v_ok);
      if (buf_ptr) store(buf_ptr, buf, i, c.n, v_ok);
    });
    finish_steps(table);
  }
};

}  // namespace

cudaError_t launch_sgd(const Table& table, DType dtype, bool master, const double* hp,
                       SgdFlags flags, StepScalars scalars, cudaStream_t stream) {
  return launch_update<SgdFunctor>(table, dtype, master, stream, hp, flags, scalars);
}

}  // namespace cuda
}  // namespace fusedopt
