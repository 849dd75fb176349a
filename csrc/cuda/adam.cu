// Adam / AdamW: torch.optim.adam's _single_tensor_adam math per element (Note [update math],
// engine.cuh), with each tensor's bias corrections from its own step counter.
#include "engine.cuh"

namespace fusedopt {
namespace cuda {
namespace {

struct AdamMath : OneStage {
  static constexpr int kStates = 3;   // exp_avg, exp_avg_sq, max_exp_avg_sq (amsgrad)
  bool amsgrad, maximize;
  bool decoupled;   // AdamW's decoupled weight decay, else L2 (torch.optim.Adam)

  explicit AdamMath(int64_t flags)
      : amsgrad((flags & adam::kAmsgrad) != 0), maximize((flags & adam::kMaximize) != 0),
        decoupled((flags & adam::kDecoupled) != 0) {}

  template <typename C> struct Row {
    C neg_step_size;   // -lr / (1 - beta1^t)
    C bc2_sqrt;        // sqrt(1 - beta2^t)
    C eps, one_minus_beta1, beta2, one_minus_beta2, weight_decay, decay;   // decay: 1 - lr*wd
  };

  template <typename C>
  __device__ Row<C> row(const double* h, float step, const double* /*totals*/) const {
    const double lr = h[kLr], wd = h[kWeightDecay], beta1 = h[adam::kBeta1];
    const double beta2 = h[adam::kBeta2];
    const double t = static_cast<double>(step + 1.f);   // torch: float32 step += 1
    Row<C> r;
    r.neg_step_size = static_cast<C>(-(lr / (1.0 - pow(beta1, t))));
    r.bc2_sqrt = static_cast<C>(sqrt(1.0 - pow(beta2, t)));
    r.eps = static_cast<C>(h[adam::kEps]);
    r.one_minus_beta1 = static_cast<C>(1.0 - beta1);
    r.beta2 = static_cast<C>(beta2);
    r.one_minus_beta2 = static_cast<C>(1.0 - beta2);
    r.weight_decay = static_cast<C>(wd);
    r.decay = static_cast<C>(1.0 - lr * wd);
    return r;
  }

  template <typename C>
  __device__ void update(const Row<C>& r, C g, C& p, C (&s)[kStates]) const {
    C& m = s[0];
    C& v = s[1];
    if (r.weight_decay != C(0)) {
      if (decoupled) {
        p *= r.decay;
      } else {
        g += r.weight_decay * p;
      }
    }
    // exp_avg.lerp_(g, 1 - beta1), with torch's lerp formula for weights < 0.5
    m = r.one_minus_beta1 < C(0.5) ? m + r.one_minus_beta1 * (g - m)
                                   : g - (g - m) * (C(1) - r.one_minus_beta1);
    v = v * r.beta2 + r.one_minus_beta2 * g * g;
    C second = v;
    if (amsgrad) {
      s[2] = max_nan(s[2], v);
      second = s[2];
    }
    const C denom = div_rn(sqrt_rn(second), r.bc2_sqrt) + r.eps;
    p += r.neg_step_size * div_rn(m, denom);   // torch's addcdiv_: value * (m / d)
  }
};

}  // namespace

cudaError_t update_adam(const UpdateArgs& a) { return run_update<AdamMath>(a); }

}  // namespace cuda
}  // namespace fusedopt
