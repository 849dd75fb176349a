// Column layout of the hyper-parameter table shared by every backend.
// Note [lr lives on the device]: each (optimizer, device) owns one float64 table of shape
// [num_groups, kHpCols]; a tensor's row is group_index[t]. Schedulers and the dirty-group
// check write rows of it with one device copy, so nothing on the per-step path reads a
// Python float and a captured graph sees the new lr. float64 so that fp64 parameters get the
// exact hyper-parameters torch would use. 8 columns: 64-byte rows, room for LARS's 7.
// Columns 0 and 1 are every algorithm's; the others are named per algorithm
// (csrc/algorithms.h, fusedopt/algorithms/<name>.py `columns`).
// Python mirror: fusedopt/_hparams.py. Keep the two in step.
#pragma once

namespace fusedopt {

enum HpCol : int {
  kLr = 0,
  kWeightDecay = 1,
  kHpCols = 8,
};

}  // namespace fusedopt
