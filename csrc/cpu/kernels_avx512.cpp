// The AVX-512 level (512-bit; AVX-512F with FMA and F16C).
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
#pragma GCC target("avx512f,avx2,fma,f16c")
#pragma GCC optimize("fp-contract=off")
#define FUSEDOPT_ISA avx512
#define FUSEDOPT_VEC_HEADER "cpu/vec_avx512.h"
#include "cpu/kernels_isa.h"
#pragma GCC pop_options

namespace fusedopt::cpu {
const KernelTable& kernels_avx512() { return avx512::table(); }
}  // namespace fusedopt::cpu
