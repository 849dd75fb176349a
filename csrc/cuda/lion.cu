// Lion (Note [Lion], docs/internals.md): lion-pytorch's op order per element (Note [update
// math], engine.cuh). The step counter only counts.
#include "engine.cuh"

namespace fusedopt {
namespace cuda {
namespace {

// torch.sign: 0 for 0 and for NaN ((0 < x) - (x < 0)).
template <typename C> __device__ __forceinline__ C sign(C x) {
  return static_cast<C>((C(0) < x) - (x < C(0)));
}

struct LionMath : OneStage {
  static constexpr int kStates = 1;   // exp_avg
  bool maximize;

  explicit LionMath(int64_t flags) : maximize((flags & lion::kMaximize) != 0) {}

  template <typename C> struct Row {
    C decay, neg_lr, beta1, one_minus_beta1, beta2, one_minus_beta2;   // decay: 1 - lr*wd
  };

  template <typename C>
  __device__ Row<C> row(const double* h, float /*step*/, const double* /*totals*/) const {
    const double lr = h[kLr], beta1 = h[lion::kBeta1], beta2 = h[lion::kBeta2];
    Row<C> r;
    r.decay = static_cast<C>(1.0 - lr * h[kWeightDecay]);
    r.neg_lr = static_cast<C>(-lr);
    r.beta1 = static_cast<C>(beta1);
    r.one_minus_beta1 = static_cast<C>(1.0 - beta1);
    r.beta2 = static_cast<C>(beta2);
    r.one_minus_beta2 = static_cast<C>(1.0 - beta2);
    return r;
  }

  template <typename C>
  __device__ void update(const Row<C>& r, C g, C& p, C (&s)[kStates]) const {
    C& m = s[0];
    p *= r.decay;                                          // p.data.mul_(1 - lr*wd)
    const C u = sign(m * r.beta1 + r.one_minus_beta1 * g);   // m.clone().mul_(b1).add(g, 1-b1)
    p += r.neg_lr * u;                                     // p.add_(u, alpha=-lr)
    m = m * r.beta2 + r.one_minus_beta2 * g;               // m.mul_(b2).add_(g, alpha=1-b2)
  }
};

}  // namespace

cudaError_t update_lion(const UpdateArgs& a) { return run_update<LionMath>(a); }

}  // namespace cuda
}  // namespace fusedopt
