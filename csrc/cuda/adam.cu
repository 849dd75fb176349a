// Adam / AdamW over a whole bucket in one launch: torch.optim.adam's _single_tensor_adam math,
// per element, with each tensor's hyper-parameters from its row of the device table and its
// bias corrections from its own step counter (Note [step counters], engine.cuh).
#include "engine.cuh"
#include "hparams.h"
#include "launchers.h"

namespace fusedopt {
namespace cuda {
namespace {

// Block-uniform scalars, computed once per block by thread 0 in double (as torch computes
// them in Python floats), then rounded to the compute type C as torch rounds a Python scalar
// for a tensor op.
template <typename C> struct AdamRow {
  C neg_step_size;   // -lr / (1 - beta1^t)
  C bc2_sqrt;        // sqrt(1 - beta2^t)
  C eps, one_minus_beta1, beta2, one_minus_beta2, weight_decay, decay;   // decay: 1 - lr*wd
};

template <typename T, bool kMasterCopy> struct AdamFunctor {
  const double* hp;
  AdamFlags flags;
  StepScalars s;

  __device__ void operator()(const Table& table) const {
    using C = typename Compute<T>::type;
    constexpr int N = kVec<T>;
    if (skip_step(s.found_inf)) return;
    const Chunk c = chunk_of(table);
    __shared__ AdamRow<C> row;
    if (threadIdx.x == 0) {
      const double* h = hp + static_cast<int64_t>(c.t->group) * kHpCols;
      const double lr = h[kLr], wd = h[kWeightDecay], beta1 = h[kBeta1], beta2 = h[kBeta2];
      const double step = static_cast<double>(*c.t->step + 1.f);   // torch: float32 step += 1
      row.neg_step_size = static_cast<C>(-(lr / (1.0 - pow(beta1, step))));
      row.bc2_sqrt = static_cast<C>(sqrt(1.0 - pow(beta2, step)));
      row.eps = static_cast<C>(h[kEps]);
      row.one_minus_beta1 = static_cast<C>(1.0 - beta1);
      row.beta2 = static_cast<C>(beta2);
      row.one_minus_beta2 = static_cast<C>(1.0 - beta2);
      row.weight_decay = static_cast<C>(wd);
      row.decay = static_cast<C>(1.0 - lr * wd);
    }
    __syncthreads();
    const AdamRow<C> r = row;
    const bool has_wd = r.weight_decay != C(0);
    const C inv_scale = s.inv_scale ? static_cast<C>(*s.inv_scale) : C(1);
    const C clip = s.clip_coef ? static_cast<C>(*s.clip_coef) : C(1);

    const T* g_ptr = array<T>(c, kGrad);
    T* p_ptr = array<T>(c, kParam);
    T* m_ptr = array<T>(c, kState0);
    T* v_ptr = array<T>(c, kState1);
    T* vmax_ptr = flags.amsgrad ? array<T>(c, kState2) : nullptr;
    float* master_ptr = kMasterCopy ? array<float>(c, kMaster) : nullptr;
    const bool vec = aligned<N>(g_ptr) && aligned<N>(p_ptr) && aligned<N>(m_ptr) &&
                     aligned<N>(v_ptr) && (!vmax_ptr || aligned<N>(vmax_ptr)) &&
                     (!kMasterCopy || aligned<N>(master_ptr));

    for_each_pack<N>(c.n, vec, [&](int i, bool v_ok) {
      C g[N], p[N], m[N], v[N], vmax[N];
      load(g, g_ptr, i, c.n, v_ok);
      if (kMasterCopy) {
        load(p, master_ptr, i, c.n, v_ok);
      } else {
        load(p, p_ptr, i, c.n, v_ok);
      }
      load(m, m_ptr, i, c.n, v_ok);
      load(v, v_ptr, i, c.n, v_ok);
      if (vmax_ptr) load(vmax, vmax_ptr, i, c.n, v_ok);
#pragma unroll
      for (int k = 0; k < N; ++k) {
        C gk = g[k];
        if (s.inv_scale) gk *= inv_scale;   // torch's unscale_, then clip_grad_norm_'s scaling
        if (s.clip_coef) gk *= clip;
        if (flags.maximize) gk = -gk;
        if (has_wd) {
          if (flags.decoupled) {
            p[k] *= r.decay;
          } else {
            gk += r.weight_decay * p[k];
          }
        }
        // exp_avg.lerp_(g, 1 - beta1), with torch's lerp formula for weights < 0.5
        m[k] = r.one_minus_beta1 < C(0.5) ? m[k] + r.one_minus_beta1 * (gk - m[k])
                                          : gk - (gk - m[k]) * (C(1) - r.one_minus_beta1);
        v[k] = v[k] * r.beta2 + r.one_minus_beta2 * gk * gk;
        C second = v[k];
        if (vmax_ptr) {
          vmax[k] = max_nan(vmax[k], v[k]);
          second = vmax[k];
        }
        const C denom = div_rn(sqrt_rn(second), r.bc2_sqrt) + r.eps;
        p[k] += r.neg_step_size * div_rn(m[k], denom);   // torch's addcdiv_: value * (m / d)
      }
      if (kMasterCopy) store(master_ptr, p, i, c.n, v_ok);
      store(p_ptr, p, i, c.n, v_ok);
      store(m_ptr, m, i, c.n, v_ok);
      store(v_ptr, v, i, c.n, v_ok);
      if (vmax_ptr) store(vmax_ptr, vmax, i, c.n, v_ok);
    });
    finish_steps(table);
  }
};

}  // namespace

cudaError_t launch_adam(const Table& table, DType dtype, bool master, const double* hp,
                        AdamFlags flags, StepScalars scalars, cudaStream_t stream) {
  return launch_update<AdamFunctor>(table, dtype, master, stream, hp, flags, scalars);
}

}  // namespace cuda
}  // namespace fusedopt
