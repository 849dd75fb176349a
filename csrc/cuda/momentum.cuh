// SGD's and LARS's shared heavy-ball momentum: the same flag bits (csrc/algorithms.h) and the
// same buffer update, torch.optim.sgd's, which mmpretrain's LARS applies to its scaled step.
#pragma once
#include "engine.cuh"

namespace fusedopt {
namespace cuda {

static_assert(sgd::kMomentum == lars::kMomentum && sgd::kNesterov == lars::kNesterov &&
              sgd::kMaximize == lars::kMaximize);

struct MomentumFlags {
  bool momentum;    // the bucket keeps momentum buffers (its groups have momentum != 0)
  bool nesterov, maximize;

  explicit MomentumFlags(int64_t flags)
      : momentum((flags & sgd::kMomentum) != 0), nesterov((flags & sgd::kNesterov) != 0),
        maximize((flags & sgd::kMaximize) != 0) {}

  // d after momentum: buf = d on the buffer's first step (not `seeded`), else
  // buf * momentum + (1 - dampening) * d; then d + momentum * buf (nesterov) or buf
  template <typename C>
  __device__ C apply(C d, C& buf, bool seeded, C mom, C one_minus_dampening) const {
    if (!momentum) return d;
    buf = seeded ? buf * mom + one_minus_dampening * d : d;
    return nesterov ? d + mom * buf : buf;
  }
};

}  // namespace cuda
}  // namespace fusedopt
