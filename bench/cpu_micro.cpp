// In-cache throughput of the CPU kernels (ns per element, one thread, best of REPEATS x CALLS calls):
// what a step costs when memory is not the limit, per level and dtype, and a bare "p += g" for
// the cost of the loads and stores alone. Used for Note [bf16 lane order] (elementwise.h).
//   g++ -O3 -std=c++17 -DLEVEL=2 -Icsrc $(python -c "import torch.utils.cpp_extension as c; \
//       print(' '.join('-I' + p for p in c.include_paths()))") bench/cpu_micro.cpp -o /tmp/micro
//   /tmp/micro            # LEVEL=2 avx512, 1 avx2, 0 scalar; -DNELEM=20000000 -DREPEATS=3
//                         # -DCALLS=3 for DRAM (builds against the kernels.h of 0509b1b)
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <vector>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <immintrin.h>

#include "cpu/kernels.h"

#ifndef NELEM
#define NELEM 8192   // 4 streams of 32 KB (fp32): in L2
#endif
#ifndef REPEATS      // best of REPEATS timings of CALLS calls each
#define REPEATS 7
#endif
#ifndef CALLS
#define CALLS 20
#endif

#pragma GCC push_options
#if LEVEL == 2
#pragma GCC target("avx512f,avx2,fma,f16c")
#define FUSEDOPT_VEC_HEADER "cpu/vec_avx512.h"
#elif LEVEL == 1
#pragma GCC target("avx2,fma,f16c")
#define FUSEDOPT_VEC_HEADER "cpu/vec_avx2.h"
#endif
#pragma GCC optimize("fp-contract=off")
#define FUSEDOPT_ISA micro
#include "cpu/kernels_isa.h"
namespace fusedopt::cpu::micro {
struct AddGrad {
  template <class V, int K>
  void operator()(V g, V (&x)[K]) const { x[0] = x[0] + g; }
};
template <class S>
void add_grad(const S* g, S* p, int64_t n) {
  S* const rw[1] = {p};
  elementwise<false>(AddGrad{}, g, rw, nullptr, 0, n);
}
}  // namespace fusedopt::cpu::micro
#pragma GCC pop_options

using namespace fusedopt::cpu;

template <class F>
double ns_per_elem(F f) {
  double best = 1e9;
  for (int r = 0; r < REPEATS; ++r) {
    auto t0 = std::chrono::steady_clock::now();
    for (int k = 0; k < CALLS; ++k) f();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0)
                                  .count() / CALLS);
  }
  return best / NELEM * 1e9;
}

template <class S>
void run(const char* name, DType d) {
  const int64_t n = NELEM;
  std::vector<S> p(n), g(n), m(n), v(n), vmax(n);
  for (int64_t i = 0; i < n; ++i) {
    p[i] = S(0.01f * (i % 97));
    g[i] = S(0.001f * (i % 89) - 0.04f);
  }
  const KernelTable& kt = micro::table();
  AdamTensor a{};
  a.param = p.data(); a.grad = g.data(); a.exp_avg = m.data(); a.exp_avg_sq = v.data();
  a.max_exp_avg_sq = vmax.data();
  a.grad_scale = a.grad_coef = 1; a.decay = 1 - 1e-5; a.lerp_weight = 0.1; a.beta2 = 0.999;
  a.one_minus_beta2 = 0.001; a.bias_correction2_sqrt = 0.03; a.neg_step_size = -1e-3;
  a.eps = 1e-8;
  SgdTensor s{};
  s.param = p.data(); s.grad = g.data(); s.momentum_buffer = m.data();
  s.grad_scale = s.grad_coef = 1; s.momentum = 0.9; s.one_minus_dampening = 1; s.neg_lr = -1e-3;
  SgdTensor nes = s;
  nes.nesterov = true;
  std::printf("%-5s adamw %.3f  amsgrad %.3f  sgd-momentum %.3f  nesterov %.3f  sgd %.3f  "
              "p+=g %.3f\n", name,
              ns_per_elem([&] { kt.adam[d][0][0](a, 0, n); }),
              ns_per_elem([&] { kt.adam[d][1][0](a, 0, n); }),
              ns_per_elem([&] { kt.sgd[d][1][0](s, 0, n); }),
              ns_per_elem([&] { kt.sgd[d][1][0](nes, 0, n); }),
              ns_per_elem([&] { kt.sgd[d][0][0](s, 0, n); }),
              ns_per_elem([&] { micro::add_grad(g.data(), p.data(), n); }));
}

int main() {
  std::printf("ns/element, level %d, %d elements\n", LEVEL, NELEM);
  run<float>("fp32", kFloat);
  run<c10::BFloat16>("bf16", kBFloat16);
  run<c10::Half>("fp16", kHalf);
}
