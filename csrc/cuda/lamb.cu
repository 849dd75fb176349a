// LAMB (Note [LAMB], docs/internals.md): timm's / mmpretrain's Lamb step per element, with
// apex's adam_w_mode (decoupled) as a flag, in two stages (Note [two stages], engine.cuh):
// stage 1 computes the new moments and u in registers and sums |p|^2 and |u|^2 per tensor,
// writing nothing; stage 2 computes them again from the same old moments and g (the same
// function of the same values, so the same bits), applies the trust ratio and writes p and the
// moments. Recomputing from the stored, rounded fp16/bf16 moments instead would depart from the
// reference, which uses the unrounded ones (1 of 70,000 fp16 masters 6.6e-5 off after 6 steps
// on the cpu backend); the CPU and Triton backends recompute the same way. It costs one more
// read of g per step. The global grad-norm clip arrives as clip_coef.
#include "engine.cuh"

namespace fusedopt {
namespace cuda {
namespace {

struct LambMath {
  static constexpr int kStates = 2;   // exp_avg, exp_avg_sq
  static constexpr bool kTwoStage = true;
  static constexpr bool kSeedsStates = false;
  static constexpr unsigned reads(int) { return kUsesGrad | kUsesParam | kUsesStates; }
  static constexpr unsigned writes(int stage) {
    return stage == kSumStage ? 0u : unsigned{kUsesParam} | kUsesStates;
  }
  bool bias_correction, grad_averaging, trust_clip, always_adapt, decoupled, maximize;

  explicit LambMath(int64_t flags)
      : bias_correction((flags & lamb::kBiasCorrection) != 0),
        grad_averaging((flags & lamb::kGradAveraging) != 0),
        trust_clip((flags & lamb::kTrustClip) != 0),
        always_adapt((flags & lamb::kAlwaysAdapt) != 0),
        decoupled((flags & lamb::kDecoupled) != 0), maximize((flags & lamb::kMaximize) != 0) {}

  template <typename C> struct Row {
    C beta1, beta3, beta2, one_minus_beta2;
    C bc1, bc2_sqrt;   // 1 - beta1^t and sqrt(1 - beta2^t), or 1 without bias_correction
    C eps, weight_decay, neg_lr;
    C ratio;           // the trust ratio (kApplyStage)
  };

  // totals: |p|^2, |u|^2 of the tensor (kApplyStage; zeros in stage 1, which uses no ratio).
  template <typename C>
  __device__ Row<C> row(const double* h, float step, const double* totals) const {
    const double beta1 = h[lamb::kBeta1], beta2 = h[lamb::kBeta2], wd = h[kWeightDecay];
    const double t = static_cast<double>(step + 1.f);   // torch: float32 step += 1
    Row<C> r;
    r.beta1 = static_cast<C>(beta1);
    r.beta3 = static_cast<C>(grad_averaging ? 1.0 - beta1 : 1.0);
    r.beta2 = static_cast<C>(beta2);
    r.one_minus_beta2 = static_cast<C>(1.0 - beta2);
    r.bc1 = static_cast<C>(bias_correction ? 1.0 - pow(beta1, t) : 1.0);
    r.bc2_sqrt = static_cast<C>(bias_correction ? sqrt(1.0 - pow(beta2, t)) : 1.0);
    r.eps = static_cast<C>(h[lamb::kEps]);
    r.weight_decay = static_cast<C>(wd);
    r.neg_lr = static_cast<C>(-h[kLr]);
    // |p| / |u| in double (as the reference, fusedopt/algorithms/lamb.py), 1 where either is
    // 0, at most 1 with trust_clip; then rounded to C as a Python scalar for direction.mul_
    double ratio = 1.0;
    if (wd != 0.0 || always_adapt) {
      const double wn = sqrt(totals[0]), un = sqrt(totals[1]);
      if (wn > 0.0 && un > 0.0) ratio = wn / un;
      if (trust_clip && ratio > 1.0) ratio = 1.0;
    }
    r.ratio = static_cast<C>(ratio);
    return r;
  }

  // (exp_avg / bc1) / (sqrt(exp_avg_sq) / sqrt(bc2) + eps), plus wd*p when decoupled
  template <typename C> __device__ C direction(const Row<C>& r, C p, const C (&s)[kStates]) const {
    C u = div_rn(div_rn(s[0], r.bc1), div_rn(sqrt_rn(s[1]), r.bc2_sqrt) + r.eps);
    if (decoupled && r.weight_decay != C(0)) u += r.weight_decay * p;   // update.add_(p, alpha=wd)
    return u;
  }

  template <typename C> __device__ void moments(const Row<C>& r, C g, C p, C (&s)[kStates]) const {
    if (!decoupled && r.weight_decay != C(0)) g += r.weight_decay * p;   // L2 into the moments
    s[0] = s[0] * r.beta1 + r.beta3 * g;                   // exp_avg.mul_(b1).add_(g, alpha=b3)
    s[1] = s[1] * r.beta2 + r.one_minus_beta2 * g * g;     // .mul_(b2).addcmul_(g, g, 1-b2)
  }

  // stage 1: the moments in registers only (writes(kSumStage) stores nothing)
  template <typename C>
  __device__ void sums(const Row<C>& r, C g, C p, C (&s)[kStates], double (&acc)[kSums]) const {
    moments(r, g, p, s);
    const double pd = static_cast<double>(p), ud = static_cast<double>(direction(r, p, s));
    acc[0] = fma(pd, pd, acc[0]);
    acc[1] = fma(ud, ud, acc[1]);
  }

  template <typename C>
  __device__ void update(const Row<C>& r, C g, C& p, C (&s)[kStates]) const {
    moments(r, g, p, s);
    p += r.neg_lr * (direction(r, p, s) * r.ratio);   // update.mul_(ratio); p.add_(u, -lr)
  }
};

}  // namespace

cudaError_t update_lamb(const UpdateArgs& a) { return run_update<LambMath>(a); }

}  // namespace cuda
}  // namespace fusedopt
