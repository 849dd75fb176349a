// The portable level: plain C++ for the baseline x86-64 (or any) target.
// Note [one source, three instruction sets] in kernels_isa.h.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "cpu/kernels.h"

#pragma GCC optimize("fp-contract=off")
#define FUSEDOPT_ISA scalar
#include "cpu/kernels_isa.h"

namespace fusedopt::cpu {
const KernelTable& kernels_scalar() { return scalar::table(); }
}  // namespace fusedopt::cpu
