// LARS (Note [LARS], docs/internals.md): mmpretrain's LARS step per element, two stages (Note
// [two stages], engine.cuh): stage 1 sums |p|^2 and |g|^2 per tensor, stage 2 forms the local
// lr from their roots on the device (mmpretrain reads them with .item(): 2 host syncs per
// tensor) and updates.
#include "momentum.cuh"

namespace fusedopt {
namespace cuda {
namespace {

struct LarsMath : MomentumFlags {
  static constexpr int kStates = 1;   // momentum_buffer
  static constexpr bool kTwoStage = true;
  static constexpr bool kSeedsStates = true;   // buf = d on the first step, as SGD's
  static constexpr unsigned reads(int stage) {
    return stage == kSumStage ? kUsesGrad | kUsesParam : kUsesGrad | kUsesParam | kUsesStates;
  }
  static constexpr unsigned writes(int stage) {
    return stage == kSumStage ? 0u : kUsesParam | kUsesStates;
  }

  explicit LarsMath(int64_t flags) : MomentumFlags(flags) {}

  template <typename C> struct Row {
    C scale;   // lr * local_lr
    C weight_decay, momentum, one_minus_dampening;
    bool seeded;   // the buffer holds a value: steps[i] != 0
  };

  // totals: |p|^2, |g|^2 of the tensor (kApplyStage; zeros in stage 1, which uses no row).
  template <typename C>
  __device__ Row<C> row(const double* h, float step, const double* totals) const {
    const double lr = h[kLr], wd = h[kWeightDecay];
    // the norms in double, as the reference (fusedopt/algorithms/lars.py) takes them;
    // mmpretrain's Python floats: eta*wn / (gn + wd*wn + eps), no fused multiply-add
    const double wn = sqrt(totals[0]), gn = sqrt(totals[1]);
    const double local_lr =
        h[lars::kExclude] != 0.0 || wn == 0.0 || gn == 0.0
            ? 1.0
            : __dmul_rn(h[lars::kEta], wn) /
                  __dadd_rn(__dadd_rn(gn, __dmul_rn(wd, wn)), h[lars::kEps]);
    Row<C> r;
    r.scale = static_cast<C>(lr * local_lr);
    r.weight_decay = static_cast<C>(wd);
    r.momentum = static_cast<C>(h[lars::kMomentumCol]);
    r.one_minus_dampening = static_cast<C>(1.0 - h[lars::kDampening]);
    r.seeded = step != 0.f;
    return r;
  }

  template <typename C>
  __device__ void sums(const Row<C>& /*r*/, C g, C p, C (& /*s*/)[kStates],
                       double (&acc)[kSums]) const {
    const double pd = static_cast<double>(p), gd = static_cast<double>(g);
    acc[0] = fma(pd, pd, acc[0]);
    acc[1] = fma(gd, gd, acc[1]);
  }

  template <typename C>
  __device__ void update(const Row<C>& r, C g, C& p, C (&s)[kStates]) const {
    const C d = (g + r.weight_decay * p) * r.scale;   // d_p.add(p, alpha=wd).mul(actual_lr)
    p -= apply(d, s[0], r.seeded, r.momentum, r.one_minus_dampening);   // p.add_(-d_p)
  }
};

}  // namespace

cudaError_t update_lars(const UpdateArgs& a) { return run_update<LarsMath>(a); }

}  // namespace cuda
}  // namespace fusedopt
