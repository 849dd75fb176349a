// Throughput of the CPU kernels (ns per element, one thread, best of REPEATS x CALLS calls) for
// bf16 AdamW in each precision mode (Note [precision modes], docs/internals.md): bf16 states
// rounded to nearest or stochastically, fp32 states behind fp32 master copies, Kahan-compensated
// params (bf16 states, both roundings), bf16 Adam with amsgrad, and fp32 AdamW beside them.
//   g++ -O3 -std=c++20 -DLEVEL=2 -Icsrc $(python -c "import torch.utils.cpp_extension as c; \
//       print(' '.join('-I' + p for p in c.include_paths()))") bench/cpu_micro.cpp -o /tmp/micro
//   /tmp/micro            # LEVEL=2 avx512, 1 avx2, 0 scalar; NELEM=8192 (in L2) by default,
//                         # -DNELEM=20000000 -DREPEATS=3 -DCALLS=2 for DRAM
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <type_traits>
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
#pragma GCC pop_options

using namespace fusedopt;
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

// One AdamW tensor of params P, states S, in weights mode `weights`, stochastically rounded
// states if `sr`; the counter grows each call (a new Weyl term), as in training.
template <class P, class S>
void run(const char* name, int weights, bool sr, bool amsgrad = false) {
  const int64_t n = NELEM;
  std::vector<P> p(n), g(n), comp(n);
  std::vector<S> m(n), v(n), vmax(n);
  std::vector<float> master(n);
  for (int64_t i = 0; i < n; ++i) {
    p[i] = P(0.01f * (i % 97));
    g[i] = P(0.001f * (i % 89) - 0.04f);
    master[i] = static_cast<float>(p[i]);
  }
  const AlgoKernels& k = micro::table().algo[kAdam];
  constexpr DType dp = std::is_same_v<P, float> ? kFloat : kBFloat16;
  constexpr DType ds = std::is_same_v<S, float> ? kFloat : kBFloat16;
  TensorStep t{};
  t.update = k.update[dp][ds][amsgrad ? 3 : 2][weights][sr];
  t.param = p.data();
  t.grad = g.data();
  t.states[0] = m.data();
  t.states[1] = v.data();
  t.states[2] = vmax.data();
  t.extra = weights == kMaster ? static_cast<void*>(master.data())
            : weights == kKahan ? static_cast<void*>(comp.data())
                                : nullptr;
  double row[kHpCols] = {1e-3, 1e-2, 0.9, 0.999, 1e-8};
  StepContext context{1.0, 1.0};
  float step = 0;
  const double ns = ns_per_elem([&] {
    k.prepare(t, row, step, adam::kDecoupled, context);
    for (int s = 0; s < 3; ++s) t.keys[s] = rounding_key(12345, step + 1.0, s);
    t.update(t, 0, n);
    step += 1;
  });
  std::printf("%-34s %.3f ns/element\n", name, ns);
}

int main() {
  std::printf("level %d, %d elements, best of %d x %d calls\n", LEVEL, NELEM, REPEATS, CALLS);
  run<float, float>("fp32 AdamW", kPlain, false);
  run<c10::BFloat16, c10::BFloat16>("bf16 AdamW, bf16 states (RN)", kPlain, false);
  run<c10::BFloat16, c10::BFloat16>("bf16 Adam amsgrad (RN)", kPlain, false, true);
  run<c10::BFloat16, c10::BFloat16>("bf16 AdamW, bf16 states (SR)", kPlain, true);
  run<c10::BFloat16, float>("bf16 AdamW, fp32 states + master", kMaster, false);
  run<c10::BFloat16, c10::BFloat16>("bf16 AdamW, kahan, bf16 (RN)", kKahan, false);
  run<c10::BFloat16, c10::BFloat16>("bf16 AdamW, kahan, bf16 (SR)", kKahan, true);
  return 0;
}
