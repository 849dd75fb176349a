// Run-time choice of the kernel level (Note [one source, three instruction sets]).
#include <cstdlib>
#include <cstring>

#include <c10/util/Exception.h>

#include "cpu/kernels.h"

namespace fusedopt::cpu {
namespace {

Capability detected() {
  // __builtin_cpu_supports also checks that the OS saves the wide registers (XCR0)
  static const Capability c = [] {
    __builtin_cpu_init();
    bool fma_f16c = __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    if (fma_f16c && __builtin_cpu_supports("avx512f")) return Capability::kAvx512;
    if (fma_f16c && __builtin_cpu_supports("avx2")) return Capability::kAvx2;
    return Capability::kScalar;
  }();
  return c;
}

}  // namespace

const char* capability_name(Capability c) {
  switch (c) {
    case Capability::kAvx512: return "avx512";
    case Capability::kAvx2: return "avx2";
    case Capability::kScalar: return "scalar";
  }
  return "scalar";
}

Capability capability() {
  Capability best = detected();
  // getenv on every call (~100 ns) so a test can switch levels with os.environ
  const char* cap = std::getenv("FUSEDOPT_CPU_CAPABILITY");
  if (cap == nullptr || *cap == '\0') return best;
  for (Capability c : {Capability::kScalar, Capability::kAvx2, Capability::kAvx512}) {
    if (std::strcmp(cap, capability_name(c)) == 0) return c < best ? c : best;
  }
  TORCH_CHECK_VALUE(false, "FUSEDOPT_CPU_CAPABILITY must be one of scalar, avx2, avx512; got '",
                    cap, "'");
}

const KernelTable& kernel_table() {
  switch (capability()) {
    case Capability::kAvx512: return kernels_avx512();
    case Capability::kAvx2: return kernels_avx2();
    case Capability::kScalar: break;
  }
  return kernels_scalar();
}

}  // namespace fusedopt::cpu
