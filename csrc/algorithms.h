// The algorithm table of the C++ backends: what the one binding per device, the one validator
// and the engines need to know of each algorithm. Python mirror: fusedopt/algorithms/<name>.py
// (`id`, `flags`, `columns`, `states`); keep the two in step (tests/test_algorithms.py compares
// them through fusedopt._C.algorithm_info).
//
// Note [algorithm as data]: a step call names its algorithm by id and its options by a flags
// word (bit k = the k-th flag of the descriptor). The state lists of a bucket are the
// algorithm's states for those flags, in this order, then the fp32 master copies (Note [master
// copy], bucket.h). Hyper-parameter columns 0 and 1 are lr and weight_decay for every algorithm.
#pragma once
#include <cstdint>

namespace fusedopt {

enum AlgoId : int { kAdam = 0, kSgd = 1, kLion = 2, kLars = 3, kLamb = 4, kNumAlgos = 5 };

// Flag bits, per algorithm.
namespace adam {
constexpr int kAmsgrad = 1, kMaximize = 2, kDecoupled = 4;
constexpr int kBeta1 = 2, kBeta2 = 3, kEps = 4;                       // columns
}  // namespace adam
namespace sgd {
constexpr int kMomentum = 1, kNesterov = 2, kMaximize = 4;            // kMomentum: buffers kept
constexpr int kMomentumCol = 2, kDampening = 3;
}  // namespace sgd
namespace lion {
constexpr int kMaximize = 1;
constexpr int kBeta1 = 2, kBeta2 = 3;
}  // namespace lion
namespace lars {
constexpr int kMomentum = 1, kNesterov = 2, kMaximize = 4;            // kMomentum: buffers kept
constexpr int kMomentumCol = 2, kDampening = 3, kEps = 4, kEta = 5, kExclude = 6;
}  // namespace lars
namespace lamb {
constexpr int kBiasCorrection = 1, kGradAveraging = 2, kTrustClip = 4, kAlwaysAdapt = 8,
              kDecoupled = 16, kMaximize = 32;
constexpr int kBeta1 = 2, kBeta2 = 3, kEps = 4;
}  // namespace lamb

struct AlgorithmInfo {
  const char* name;
  // Note [two stages]: a two-stage algorithm needs per-tensor sums over the whole tensor before
  // it can update any element (LARS: |p|^2 and |g|^2; LAMB: |p|^2 and |update|^2). Stage 1
  // runs over every chunk and returns kSums partial sums per chunk; stage 2 updates, reading
  // the tensor's totals. Step counters grow once per step, after stage 2.
  bool two_stage;
  int num_flags;            // flag bits 0 .. num_flags-1 exist; any higher bit is an error
  const char* flag_names;   // bit k = the k-th name (the Python descriptor's `flag_names`)
};

inline bool valid_algo(int64_t algo) { return algo >= 0 && algo < kNumAlgos; }

inline const AlgorithmInfo& algorithm_info(int algo) {
  static const AlgorithmInfo table[kNumAlgos] = {
      {"adam", false, 3, "amsgrad, maximize, decoupled"},
      {"sgd", false, 3, "momentum, nesterov, maximize"},
      {"lion", false, 1, "maximize"},
      {"lars", true, 3, "momentum, nesterov, maximize"},
      {"lamb", true, 6, "bias_correction, grad_averaging, trust_clip, always_adapt, decoupled, "
                        "maximize"}};
  return table[algo];
}

// The algorithm's own state lists for `flags` (a master list aside), and their names for errors.
inline int num_states(int algo, int64_t flags) {
  switch (algo) {
    case kAdam: return (flags & adam::kAmsgrad) ? 3 : 2;
    case kSgd: return (flags & sgd::kMomentum) ? 1 : 0;
    case kLion: return 1;
    case kLars: return (flags & lars::kMomentum) ? 1 : 0;
    case kLamb: return 2;
    default: return -1;
  }
}

inline const char* state_names(int algo, int64_t flags) {
  switch (algo) {
    case kAdam:
      return (flags & adam::kAmsgrad) ? "exp_avg, exp_avg_sq, max_exp_avg_sq"
                                      : "exp_avg, exp_avg_sq";
    case kSgd: return (flags & sgd::kMomentum) ? "momentum_buffer" : "none";
    case kLion: return "exp_avg";
    case kLars: return (flags & lars::kMomentum) ? "momentum_buffer" : "none";
    case kLamb: return "exp_avg, exp_avg_sq";
    default: return "?";
  }
}

constexpr int kSums = 2;   // per-tensor sums of a two-stage algorithm (Note [two stages])

// A bucket's weights mode (Note [precision modes], docs/internals.md; BucketSpec.weights):
// kMaster and kKahan add one last state list after the algorithm's, fp32 master copies or
// compensations in the params' dtype (fp16/bf16 params only).
enum Weights : int { kPlain = 0, kMaster = 1, kKahan = 2 };

}  // namespace fusedopt
