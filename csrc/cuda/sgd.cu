// SGD: torch.optim.sgd's _single_tensor_sgd math per element (Note [update math], engine.cuh).
// The step counter says whether the momentum buffer is seeded (docs/internals.md: 0 means
// torch's first step, where the buffer becomes a copy of the grad and is not read).
#include "engine.cuh"

namespace fusedopt {
namespace cuda {
namespace {

struct SgdMath : OneStage {
  static constexpr int kStates = 1;   // momentum_buffer
  static constexpr bool kSeedsStates = true;
  bool momentum;    // the bucket keeps momentum buffers (its groups have momentum != 0)
  bool nesterov, maximize;

  explicit SgdMath(int64_t flags)
      : momentum((flags & sgd::kMomentum) != 0), nesterov((flags & sgd::kNesterov) != 0),
        maximize((flags & sgd::kMaximize) != 0) {}

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
    if (momentum) {
      C& buf = s[0];
      buf = r.seeded ? buf * r.momentum + r.one_minus_dampening * g : g;
      g = nesterov ? g + r.momentum * buf : buf;
    }
    p += r.neg_lr * g;
  }
};

}  // namespace

cudaError_t update_sgd(const UpdateArgs& a) { return run_update<SgdMath>(a); }

}  // namespace cuda
}  // namespace fusedopt
