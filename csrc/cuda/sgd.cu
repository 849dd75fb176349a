// SGD: torch.optim.sgd's _single_tensor_sgd math per element (Note [update math], engine.cuh).
// The step counter says whether the momentum buffer is seeded (docs/internals.md: 0 means
// torch's first step, where the buffer becomes a copy of the grad and is not read).
#include "momentum.cuh"

namespace fusedopt {
namespace cuda {
namespace {

struct SgdMath : OneStage, MomentumFlags {
  static constexpr int kStates = 1;   // momentum_buffer
  static constexpr bool kSeedsStates = true;

  explicit SgdMath(int64_t flags) : MomentumFlags(flags) {}

  template <typename C> struct Row {
    C neg_lr, weight_decay, momentum, one_minus_dampening;
    bool seeded;   // the buffer holds a value: steps[i] != 0
  };

  template <typename C>
  __device__ Row<C> row(const double* h, float step, const double* /*totals*/) const {
    Row<C> r;
    r.neg_lr = static_cast<C>(-h[kLr]);
    r.weight_decay = static_cast<C>(h[kWeightDecay]);
    r.momentum = static_cast<C>(h[sgd::kMomentumCol]);
    r.one_minus_dampening = static_cast<C>(1.0 - h[sgd::kDampening]);
    r.seeded = step != 0.f;
    return r;
  }

  template <typename C>
  __device__ void update(const Row<C>& r, C g, C& p, C (&s)[kStates]) const {
    if (r.weight_decay != C(0)) g += r.weight_decay * p;
    g = apply(g, s[0], r.seeded, r.momentum, r.one_minus_dampening);
    p += r.neg_lr * g;
  }
};

}  // namespace

cudaError_t update_sgd(const UpdateArgs& a) { return run_update<SgdMath>(a); }

}  // namespace cuda
}  // namespace fusedopt
