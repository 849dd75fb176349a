// Column layout of the hyper-parameter table shared by every backend.
// Note [lr lives on the device]: each (optimizer, device) owns one float64 table of shape
// [num_groups, kHpCols]; a tensor's row is group_index[t]. Schedulers and the dirty-group
// check write rows of it with one device copy, so nothing on the per-step path reads a
// Python float and a captured graph sees the new lr. float64 so that fp64 parameters get the
// exact hyper-parameters torch would use (the table is a few hundred bytes: the width is free).
// Python mirror: fusedopt/_hparams.py. Keep the two in step.
#pragma once

namespace fusedopt {

enum HpCol : int {
  kLr = 0,
  kWeightDecay = 1,
  kBeta1 = 2,      // Adam beta1;  SGD momentum
  kBeta2 = 3,      // Adam beta2;  SGD dampening
  kEps = 4,        // Adam eps;    unused by SGD
  kHpCols = 5,
};
constexpr int kMomentum = kBeta1;
constexpr int kDampening = kBeta2;

}  // namespace fusedopt
