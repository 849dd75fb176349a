// Throughput of the CPU kernels (ns per element) for bf16 AdamW in each precision mode (Note
// [precision modes], docs/internals.md): bf16 states rounded to nearest or stochastically, fp32
// states behind fp32 master copies, Kahan-compensated params (bf16 states, both roundings), bf16
// Adam with amsgrad, fp32 AdamW, and fp32 LAMB's two stages (Note [kept update],
// csrc/cpu/lamb.h) beside them; then the same memory as bf16 AdamW moved with no
// compute, and a stream (fp32 a += c*b, 12 B/element). The rows run interleaved, REPEATS rounds
// of CALLS calls each in an order rotated every round; min, median and max per row.
//   g++ -O3 -fopenmp -std=c++20 -DLEVEL=2 -Icsrc $(python -c "import torch.utils.cpp_extension \
//       as c; print(' '.join('-I' + p for p in c.include_paths()))") bench/cpu_micro.cpp -o /tmp/micro
//   /tmp/micro   # LEVEL=2 avx512, 1 avx2, 0 scalar; NELEM=8192 (in L2), one thread, by default
// Compute: the default, in cache, one thread, whose timer is the thread's CPU time (a loaded
// machine's descheduling left out). Overlap of compute and memory (Note [bf16 NaN check] in
// elementwise.h): -DNELEM=20000000 -DREPEATS=9 -DCALLS=1 (DRAM), and -DTHREADS=2 to cut the
// range into the engine's chunks claimed by two threads (wall clock); rows then also print
// their bytes over the stream row's bandwidth ("of stream").
#include <algorithm>
#include <atomic>
#include <functional>
#include <memory>
#include <ctime>
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
#ifndef THREADS
#define THREADS 1
#endif
constexpr int64_t kChunk = int64_t{1} << 16;   // kChunkElems (multi_tensor.h)

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

// One case: a name, the bytes one element moves, and one call over [0, NELEM).
struct Case {
  const char* name;
  double bytes;
  std::function<void()> call;
  std::vector<double> ns;   // per repeat, ns per element
};

// Runs update(t, begin, end) over [0, n) in chunks of kChunkElems claimed from one counter by
// THREADS threads, as the engine does (Note [work items], multi_tensor.h).
template <class F>
void chunked(int64_t n, const F& f) {
#if THREADS > 1
  std::atomic<int64_t> next{0};
#pragma omp parallel num_threads(THREADS)
  for (int64_t b = next.fetch_add(kChunk); b < n; b = next.fetch_add(kChunk)) {
    f(b, std::min(n, b + kChunk));
  }
#else
  for (int64_t b = 0; b < n; b += kChunk) f(b, std::min(n, b + kChunk));
#endif
}

// One AdamW tensor of params P, states S, in weights mode `weights`, stochastically rounded
// states if `sr`; the counter grows each call (a new Weyl term), as in training.
template <class P, class S>
Case adamw_case(const char* name, int weights, bool sr, bool amsgrad = false) {
  const int64_t n = NELEM;
  auto p = std::make_shared<std::vector<P>>(n), g = std::make_shared<std::vector<P>>(n),
       comp = std::make_shared<std::vector<P>>(n);
  auto m = std::make_shared<std::vector<S>>(n), v = std::make_shared<std::vector<S>>(n),
       vmax = std::make_shared<std::vector<S>>(n);
  auto master = std::make_shared<std::vector<float>>(n);
  for (int64_t i = 0; i < n; ++i) {
    (*p)[i] = P(0.01f * (i % 97));
    (*g)[i] = P(0.001f * (i % 89) - 0.04f);
    (*master)[i] = static_cast<float>((*p)[i]);
  }
  const AlgoKernels& k = micro::table().algo[kAdam];
  constexpr DType dp = std::is_same_v<P, float> ? kFloat : kBFloat16;
  constexpr DType ds = std::is_same_v<S, float> ? kFloat : kBFloat16;
  auto t = std::make_shared<TensorStep>();
  t->update = k.update[dp][ds][amsgrad ? 3 : 2][weights][sr];
  t->param = p->data();
  t->grad = g->data();
  t->states[0] = m->data();
  t->states[1] = v->data();
  t->states[2] = vmax->data();
  t->extra = weights == kMaster ? static_cast<void*>(master->data())
             : weights == kKahan ? static_cast<void*>(comp->data())
                                 : nullptr;
  const double P_ = sizeof(P), S_ = sizeof(S);
  const double bytes = P_ * 3 + S_ * 2 * (amsgrad ? 3 : 2) +
                       (weights == kMaster ? 8 : weights == kKahan ? 2 * P_ : 0) -
                       (weights == kMaster ? P_ : 0);   // a master's param is written only
  auto step = std::make_shared<float>(0);
  return {name, bytes, [=] {
            double row[kHpCols] = {1e-3, 1e-2, 0.9, 0.999, 1e-8};
            StepContext context{1.0, 1.0};
            k.prepare(*t, row, *step, adam::kDecoupled, context);
            for (int s = 0; s < 3; ++s) t->keys[s] = rounding_key(12345, *step + 1.0, s);
            chunked(n, [&](int64_t b, int64_t e) { t->update(*t, b, e); });
            *step += 1;
            (void)p, (void)g, (void)comp, (void)m, (void)v, (void)vmax, (void)master;
          }, {}};
}

// fp32 LAMB's stage 1 (Note [kept update], csrc/cpu/lamb.h): m and v written, the update kept in
// a buffer of its own, the chunks' |p|^2 and |u|^2 summed; then, in a second row, its stage 2
// alone (p read and written, the kept update read).
Case lamb_case(const char* name, bool stage2) {
  const int64_t n = NELEM;
  auto p = std::make_shared<std::vector<float>>(n), g = std::make_shared<std::vector<float>>(n),
       m = std::make_shared<std::vector<float>>(n), v = std::make_shared<std::vector<float>>(n),
       u = std::make_shared<std::vector<float>>(n);
  auto sums = std::make_shared<std::vector<double>>((n / kChunk + 1) * kSums);
  for (int64_t i = 0; i < n; ++i) {
    (*p)[i] = 0.01f * (i % 97);
    (*g)[i] = 0.001f * (i % 89) - 0.04f;
    (*u)[i] = 1e-3f * (i % 7);
  }
  const AlgoKernels& k = micro::table().algo[kLamb];
  auto t = std::make_shared<TensorStep>();
  t->keep = k.keep[kFloat][kFloat][2][kPlain][0];
  t->apply = k.apply[kFloat][kFloat][2][kPlain];
  t->param = p->data();
  t->grad = g->data();
  t->states[0] = m->data();
  t->states[1] = v->data();
  auto step = std::make_shared<float>(0);
  return {name, stage2 ? 12.0 : 28.0, [=] {
            double row[kHpCols] = {1e-3, 1e-2, 0.9, 0.999, 1e-6};
            StepContext context{1.0, 1.0};
            k.prepare(*t, row, *step, lamb::kBiasCorrection | lamb::kGradAveraging |
                      lamb::kDecoupled, context);
            chunked(n, [&](int64_t b, int64_t e) {
              if (stage2) {
                t->apply(*t, b, e, u->data());
              } else {
                t->keep(*t, b, e, sums->data() + b / kChunk * kSums, u->data());
              }
            });
            *step += 1;
            (void)p, (void)g, (void)m, (void)v;
          }, {}};
}

// The memory of bf16 AdamW (read grad, param and two states, write the three back) with no
// compute: bits added as integers.
Case touch() {
  const int64_t n = NELEM;
  auto a = std::make_shared<std::vector<uint16_t>>(4 * n, 1);
  return {"memory of bf16 AdamW, no compute", 14, [=] {
            uint16_t* g = a->data();
            uint16_t* p = g + n;
            uint16_t* m = p + n;
            uint16_t* v = m + n;
            chunked(n, [&](int64_t b, int64_t e) {
              for (int64_t i = b; i < e; ++i) {
                p[i] += g[i];
                m[i] += g[i];
                v[i] ^= g[i];
              }
            });
          }, {}};
}

// torch's in-place add_ on fp32, the "stream" of bench/cpu_lowprec.py: 12 B/element
Case stream() {
  const int64_t n = NELEM;
  auto a = std::make_shared<std::vector<float>>(2 * n, 1.0f);
  return {"stream (fp32 a += 1e-6 b)", 12, [=] {
            float* x = a->data();
            const float* y = x + n;
            chunked(n, [&](int64_t b, int64_t e) {
              for (int64_t i = b; i < e; ++i) x[i] += 1e-6f * y[i];
            });
          }, {}};
}

// Seconds. One thread: its CPU time, which leaves out the time a loaded machine keeps it
// descheduled (memory stalls still count); more: wall clock.
double now() {
  timespec ts;
  clock_gettime(THREADS == 1 ? CLOCK_THREAD_CPUTIME_ID : CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

int main() {
  std::printf("level %d, %d elements, %d threads, %d repeats of %d calls\n", LEVEL, NELEM,
              THREADS, REPEATS, CALLS);
  std::vector<Case> cases;
  cases.push_back(adamw_case<float, float>("fp32 AdamW", kPlain, false));
  cases.push_back(adamw_case<c10::BFloat16, c10::BFloat16>("bf16 AdamW, bf16 states (RN)", kPlain, false));
  cases.push_back(adamw_case<c10::BFloat16, c10::BFloat16>("bf16 Adam amsgrad (RN)", kPlain, false, true));
  cases.push_back(adamw_case<c10::BFloat16, c10::BFloat16>("bf16 AdamW, bf16 states (SR)", kPlain, true));
  cases.push_back(adamw_case<c10::BFloat16, float>("bf16 AdamW, fp32 states + master", kMaster, false));
  cases.push_back(adamw_case<c10::BFloat16, c10::BFloat16>("bf16 AdamW, kahan, bf16 (RN)", kKahan, false));
  cases.push_back(adamw_case<c10::BFloat16, c10::BFloat16>("bf16 AdamW, kahan, bf16 (SR)", kKahan, true));
  cases.push_back(lamb_case("fp32 LAMB stage 1 (keep)", false));
  cases.push_back(lamb_case("fp32 LAMB stage 2 (apply)", true));
  cases.push_back(touch());
  cases.push_back(stream());
  for (Case& c : cases) c.call();   // warm up, first touch
  for (int r = 0; r < REPEATS; ++r) {
    for (size_t j = 0; j < cases.size(); ++j) {   // interleaved, in an order rotated each round
      Case& c = cases[(j + r) % cases.size()];
      const double t0 = now();
      for (int k = 0; k < CALLS; ++k) c.call();
      c.ns.push_back((now() - t0) / CALLS / NELEM * 1e9);
    }
  }
  auto median = [](std::vector<double> x) {
    std::sort(x.begin(), x.end());
    return x[x.size() / 2];
  };
  const double stream_gbps = 12 / median(cases.back().ns);
  for (Case& c : cases) {
    std::vector<double> x = c.ns;
    std::sort(x.begin(), x.end());
    std::printf("%-34s %.3f ns/element (min; median %.3f, max %.3f)", c.name, x.front(),
                median(x), x.back());
    if (NELEM > (1 << 20)) std::printf("  of stream %.2f", c.bytes / median(x) / stream_gbps);
    std::printf("\n");
  }
  return 0;
}
