// The AVX2 level (256-bit, with FMA and F16C, as every AVX2 CPU since Haswell has).
// Note [one source, three instruction sets] in kernels_isa.h.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <immintrin.h>

#include "cpu/kernels.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#pragma GCC optimize("fp-contract=off")
#define FUSEDOPT_ISA avx2
#define FUSEDOPT_VEC_HEADER "cpu/vec_avx2.h"
#include "cpu/kernels_isa.h"
#pragma GCC pop_options

namespace fusedopt::cpu {
const KernelTable& kernels_avx2() { return avx2::table(); }
}  // namespace fusedopt::cpu
