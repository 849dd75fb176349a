// The device half of the CUDA multi-tensor engine: one kernel template that gives each CUDA
// block one chunk of one tensor of the table (table.h), the helpers every kernel shares
// (vectorised loads/stores, block reductions, the step-counter protocol, dtype dispatch), and
// the one update skeleton (UpdateKernel, run_update) that every optimizer's math plugs into.
// Only CUDA headers: `nvcc -c` compiles this on a machine whose torch has no CUDA.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "algorithms.h"
#include "hparams.h"
#include "launchers.h"
#include "table.h"

namespace fusedopt {
namespace cuda {

// Arithmetic type: fp32 for fp16/bf16/fp32 tensors, fp64 for fp64 (docs/internals.md).
template <typename T> struct Compute { using type = float; };
template <> struct Compute<double> { using type = double; };

template <typename C, typename T> __device__ __forceinline__ C to_compute(T x) {
  return static_cast<C>(x);
}
template <> __device__ __forceinline__ float to_compute<float, __half>(__half x) {
  return __half2float(x);
}
template <> __device__ __forceinline__ float to_compute<float, __nv_bfloat16>(__nv_bfloat16 x) {
  return __bfloat162float(x);
}
template <typename T, typename C> __device__ __forceinline__ T from_compute(C x) {
  return static_cast<T>(x);
}
template <> __device__ __forceinline__ __half from_compute<__half, float>(float x) {
  return __float2half_rn(x);
}
template <> __device__ __forceinline__ __nv_bfloat16 from_compute<__nv_bfloat16, float>(float x) {
  return __float2bfloat16_rn(x);
}

// Correctly rounded sqrt and division whatever the build's flags: setup.py may pass
// --use_fast_math, which turns sqrtf and '/' into ~2-ulp approximations; torch's kernels (the
// reference) round correctly. fp64 is never approximated.
__device__ __forceinline__ float sqrt_rn(float x) { return __fsqrt_rn(x); }
__device__ __forceinline__ double sqrt_rn(double x) { return sqrt(x); }
__device__ __forceinline__ float div_rn(float a, float b) { return __fdiv_rn(a, b); }
__device__ __forceinline__ double div_rn(double a, double b) { return a / b; }

// torch.maximum: NaN in either operand wins (fmax would drop it).
template <typename C> __device__ __forceinline__ C max_nan(C a, C b) {
  return (a != a || a > b) ? a : b;
}

// Elements per thread and step: one 128-bit access of the param's type (4 fp32, 2 fp64,
// 8 fp16/bf16). An fp32 master copy or fp32 states beside fp16 params then move 32 B (two
// 128-bit accesses), bf16 states beside fp32 params 8 B.
template <typename T> constexpr int kVec = static_cast<int>(16 / sizeof(T));

template <typename T, int N> struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

template <int N, typename T> __device__ __forceinline__ bool aligned(const T* p) {
  return reinterpret_cast<uintptr_t>(p) % (sizeof(T) * N) == 0;
}

// Elements [i, i + N) of p, those below n, as C (0 beyond n); one vector access if vec.
template <int N, typename T, typename C>
__device__ __forceinline__ void load(C (&r)[N], const T* p, int i, int n, bool vec) {
  if (vec) {
    const Pack<T, N> x = *reinterpret_cast<const Pack<T, N>*>(p + i);
#pragma unroll
    for (int k = 0; k < N; ++k) r[k] = to_compute<C>(x.v[k]);
  } else {
#pragma unroll
    for (int k = 0; k < N; ++k) r[k] = i + k < n ? to_compute<C>(p[i + k]) : C(0);
  }
}

// Elements [i, i + N) of p, those below n, from r, element k rounded by round(r[k], k).
template <int N, typename T, typename C, typename Round>
__device__ __forceinline__ void store(T* p, const C (&r)[N], int i, int n, bool vec, Round round) {
  if (vec) {
    Pack<T, N> x;
#pragma unroll
    for (int k = 0; k < N; ++k) x.v[k] = round(r[k], k);
    *reinterpret_cast<Pack<T, N>*>(p + i) = x;
  } else {
#pragma unroll
    for (int k = 0; k < N; ++k) {
      if (i + k < n) p[i + k] = round(r[k], k);
    }
  }
}

// The same, rounded to nearest even.
template <int N, typename T, typename C>
__device__ __forceinline__ void store(T* p, const C (&r)[N], int i, int n, bool vec) {
  store(p, r, i, n, vec, [](C x, int) { return from_compute<T>(x); });
}

// Note [stochastic rounding] (docs/internals.md), in uint32 arithmetic as written there; the
// reference's stochastic_round_bf16 (fusedopt/backends/reference.py) gives the same bits.
__device__ __forceinline__ uint32_t fmix32(uint32_t h) {
  h ^= h >> 16;
  h *= 0x85EBCA6Bu;
  h ^= h >> 13;
  h *= 0xC2B2AE35u;
  return h ^ (h >> 16);
}

// fmix32's first round, the element hash
__device__ __forceinline__ uint32_t sr_mix(uint32_t h) { return (h ^ (h >> 16)) * 0x85EBCA6Bu; }

// State list k of a tensor with `seed`.
__device__ __forceinline__ uint32_t rounding_key(uint32_t seed, int k) {
  return fmix32(seed ^ fmix32(static_cast<uint32_t>(k)));
}
constexpr uint32_t kWeyl = 0x9E3779B9u;   // 2^32 / golden ratio, times the step counter

// x rounded to bf16 with the bits of element j (row-major index mod 2^32) at the step whose
// Weyl term is `weyl`. NaN is tested on the bits: --use_fast_math may not keep x != x.
__device__ __forceinline__ __nv_bfloat16 sr_bf16(float x, uint32_t key, uint32_t weyl,
                                                 uint32_t j) {
  const uint32_t r = (sr_mix((j * 0x9E3779B1u) ^ key) + weyl) >> 16;
  const uint32_t u = __float_as_uint(x);
  const uint32_t top = (u & 0x7FFFFFFFu) > 0x7F800000u ? 0x7FC0u : (u + r) >> 16;
  return __ushort_as_bfloat16(static_cast<unsigned short>(top));
}

// This block's chunk: elements [start, start + n) of tensor t. start is int64 (tensors of
// 2^31 elements or more); offsets inside a chunk fit in int.
// index: the chunk's place in its tensor (block blockIdx.x - index is the tensor's first).
struct Chunk {
  const TensorMeta* t;
  int64_t start;
  int n;
  int index;
};

__device__ __forceinline__ Chunk chunk_of(const Table& table) {
  const BlockMeta b = table.blocks[blockIdx.x];
  const TensorMeta* t = table.tensors + b.tensor;
  const int64_t start = static_cast<int64_t>(b.chunk) * kChunk;
  const int64_t left = t->numel - start;
  return Chunk{t, start, static_cast<int>(left < kChunk ? left : kChunk), b.chunk};
}

// Slot s of the chunk's tensor as T*, advanced to the chunk's first element; null for an
// empty slot.
template <typename T> __device__ __forceinline__ T* array(const Chunk& c, int s) {
  T* base = static_cast<T*>(c.t->ptr[s]);
  return base ? base + c.start : nullptr;
}

// Calls body(i, vec) for each pack of N elements of an n-element chunk; thread k takes packs
// k, k + blockDim.x, ... so each warp's accesses are contiguous. vec: the whole pack is in
// range and every array is aligned for one vector access.
template <int N, typename F>
__device__ __forceinline__ void for_each_pack(int n, bool aligned, F body) {
  for (int i = static_cast<int>(threadIdx.x) * N; i < n; i += static_cast<int>(blockDim.x) * N) {
    body(i, aligned && i + N <= n);
  }
}

// Combines each of v[0..K) over the block with op (identity 0) along a fixed shuffle tree, so
// the same inputs give the same bits on every run and in every block; valid in thread 0. Once
// per kernel (the warps' scratch is not guarded for a second call).
template <int K, typename Op> __device__ void block_reduce(double (&v)[K], Op op) {
  __shared__ double warps[K][kBlockThreads / 32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int k = 0; k < K; ++k) {
#pragma unroll
    for (int o = 16; o > 0; o /= 2) v[k] = op(v[k], __shfl_down_sync(0xffffffffu, v[k], o));
    if (lane == 0) warps[k][warp] = v[k];
  }
  __syncthreads();
  if (warp == 0) {
#pragma unroll
    for (int k = 0; k < K; ++k) {
      v[k] = lane < static_cast<int>(blockDim.x / 32) ? warps[k][lane] : 0.0;
#pragma unroll
      for (int o = 16; o > 0; o /= 2) v[k] = op(v[k], __shfl_down_sync(0xffffffffu, v[k], o));
    }
  }
}

struct Sum {
  __device__ double operator()(double a, double b) const { return a + b; }
};

__device__ __forceinline__ bool skip_step(const float* found_inf) {
  return found_inf != nullptr && *found_inf != 0.f;
}

// A DeviceScalar's value (launchers.h; not null), exact in double whichever its dtype.
__device__ __forceinline__ double load_scalar(DeviceScalar s) {
  return s.is_double ? *static_cast<const double*>(s.ptr)
                     : static_cast<double>(*static_cast<const float*>(s.ptr));
}

// Note [step counters]: every block of a tensor needs the tensor's step count before the
// increment, yet the counter must grow by exactly one per step, without a launch of its own.
// Each block's thread 0 reads the counter at block start (into shared memory, before any
// update); finish_steps() then counts finished blocks in table.done, and the last block, which
// knows every other block has read its counter, increments all of them. A two-stage algorithm
// calls it in its second launch only (Note [two stages]): both launches read the same count,
// the first having finished before the second starts (one stream). table.done starts at 0 in
// every upload (table.h write()), including each replay of a captured upload, and one upload
// serves both launches. A skipped step (found_inf) returns before both, so counters stay
// untouched. The fences make the count a
// release (this block's reads of the counters come before its increment) and, in the last
// block, an acquire (every other block's reads come before the last block's writes).
__device__ __forceinline__ void finish_steps(const Table& table) {
  __shared__ bool last;
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence();
    last = atomicAdd(table.done, 1u) == gridDim.x - 1;
    if (last) __threadfence();
  }
  __syncthreads();
  if (last) {
    for (int k = threadIdx.x; k < table.num_tensors; k += blockDim.x) *table.tensors[k].step += 1.f;
  }
}

// (512, 2): two resident blocks per SM caps registers at 64 per thread. Unbounded, fp16 Adam
// took 91 and ran one block (25% occupancy) per SM. Capped, Adam spills per thread (nvcc 13.0,
// sm_90, -Xptxas -v): fp32 none, fp64 32 B, fp16/bf16 params 32-56 B, 64-72 B with Kahan
// compensations (all in L1).
template <typename F>
__global__ void __launch_bounds__(kBlockThreads, 2) multi_tensor_kernel(Table table, F f) {
  f(table);
}

// One launch of functor f over the table: one block per chunk.
template <typename F> cudaError_t launch_over(const Table& table, F f, cudaStream_t stream) {
  multi_tensor_kernel<<<table.num_blocks, kBlockThreads, 0, stream>>>(table, f);
  return cudaGetLastError();
}

// Calls f(T{}) with T the element type of d: one instantiation per dtype, no copies. Host
// launchers and the mixed-dtype kernels share it; the pragma lets nvcc instantiate it with a
// host-only lambda (launchers) as well as a device-only one (kernels).
#pragma nv_exec_check_disable
template <typename F> __host__ __device__ auto dispatch(DType d, F f) -> decltype(f(float{})) {
  switch (d) {
    case kF64: return f(double{});
    case kF16: return f(__half{});
    case kBF16: return f(__nv_bfloat16{});
    case kF32:
    default: return f(float{});   // the glue passes only the four DTypes
  }
}

// ---------------------------------------------------------------------------------------
// The update skeleton: one kernel body for every algorithm (Note [update math]).
//
// Note [update math]: an algorithm's CUDA side is one struct of its arithmetic only, in
// csrc/cuda/<name>.cu, built on the host from the step's flags word (csrc/algorithms.h):
//   kStates        state slots it may use (kState0.., bucket order; an absent one is null);
//   kTwoStage      as algorithm_info(id).two_stage (Note [two stages]);
//   kSeedsStates   its states hold nothing while the step counter is 0 (SGD's and LARS's
//                  momentum buffers: the first step writes them without reading them);
//   reads(stage), writes(stage)  what each stage touches (kUsesGrad | kUsesParam | kUsesStates);
//   maximize       the prologue negates g;
//   Row<C>, row<C>(h, step, totals)  block-uniform scalars from the group's hyper-parameter row
//                  h, the step counter before this step's increment and, in kApplyStage, the
//                  tensor's kSums totals; computed once per block by thread 0, in double, then
//                  rounded to the compute type C (as torch rounds a Python scalar for an op);
//   update(r, g, p, s)           one element: g the prologue's grad, p the param (its fp32
//                  master, or p + c), s[kStates] its states, updated in place (kOneStage, kApplyStage);
//   sums(r, g, p, s, acc)        one element of stage 1: adds to the kSums partial sums (and,
//                  for LAMB, updates the states).
// The engine does the rest: the prologue (skip the launch on found_inf, locate the chunk, read
// the row and the counter, load, g = grad * inv_scale * clip_coef negated with maximize, in
// that order) and the epilogue (store; finish_steps), and the precision modes around them (Note
// [precision modes], docs/internals.md): states read widened from their storage type S and
// written rounded to it (stochastically where the step has seeds), the param read as its
// master copy or as p + c with its Kahan compensation c, and written back with them.
// run_update instantiates the kernel per param dtype x state dtype x weights mode x stage, for
// the 18 combinations the contract allows (fp64 params: 1; fp32: 2; fp16: 9; bf16: 6), 8 for a
// stage that touches no state (StageStates).
//
// Note [two stages] (csrc/algorithms.h): a two-stage algorithm is two launches over the same
// table, with no host sync between them. kSumStage: each block writes its chunk's kSums partial
// sums (double, a fixed reduction order) to sums[block * kSums + j]. kApplyStage: each block
// first sums the partials of its tensor's blocks (consecutive, first = block - chunk index,
// table.h) along the same fixed order as every other block of that tensor, so all of them,
// and every run, see the same totals bit for bit, without float atomics; then it updates.
// Only kApplyStage counts the step (finish_steps), so a counter grows once per step. Cost of
// the totals: each block reads its tensor's chunks_of(numel) partials, 16 B each; 2 per
// thread for a 65M-element tensor (1000 chunks), 64 per thread at 2^31 elements.

enum Stage : int { kOneStage = 0, kSumStage = 1, kApplyStage = 2 };
enum Uses : unsigned { kUsesGrad = 1, kUsesParam = 2, kUsesStates = 4 };

// The defaults of a one-stage algorithm.
struct OneStage {
  static constexpr bool kTwoStage = false;
  static constexpr bool kSeedsStates = false;
  static constexpr unsigned reads(int) { return kUsesGrad | kUsesParam | kUsesStates; }
  static constexpr unsigned writes(int) { return kUsesParam | kUsesStates; }
};

template <typename P, typename S, int kWeights, class Math, int kStage> struct UpdateKernel {
  Math math;
  const double* hp;
  StepScalars s;
  double* sums;      // kSums per block of the table (two-stage algorithms), else null
  bool stochastic;   // round the states with each tensor's seed (S is bf16)

  __device__ void operator()(const Table& table) const {
    using C = typename Compute<P>::type;
    using Row = typename Math::template Row<C>;
    // kExtra's element type: fp32 master copies, or compensations in the param's type
    using X = std::conditional_t<kWeights == kMasterWeights, float, P>;
    constexpr int N = kVec<P>, K = Math::kStates;
    constexpr unsigned kReads = Math::reads(kStage), kWrites = Math::writes(kStage);
    constexpr bool kHasExtra = kWeights != kPlainWeights;
    constexpr bool kMayRound =
        std::is_same_v<S, __nv_bfloat16> && (kWrites & kUsesStates) != 0;
    if (skip_step(s.found_inf)) return;
    const Chunk c = chunk_of(table);
    double totals[kSums] = {};
    if constexpr (kStage == kApplyStage) {
      const int64_t first = static_cast<int64_t>(blockIdx.x) - c.index;
      const int64_t count = chunks_of(c.t->numel);
      for (int64_t b = threadIdx.x; b < count; b += blockDim.x) {
#pragma unroll
        for (int j = 0; j < kSums; ++j) totals[j] += sums[(first + b) * kSums + j];
      }
      block_reduce(totals, Sum{});
    }
    __shared__ Row row;
    __shared__ bool states_set;
    __shared__ uint32_t keys[K];   // Note [stochastic rounding]: one per state list
    __shared__ uint32_t weyl;
    if (threadIdx.x == 0) {
      const float step = *c.t->step;   // Note [step counters]: read before any block increments
      row = math.template row<C>(hp + static_cast<int64_t>(c.t->group) * kHpCols, step, totals);
      states_set = !(Math::kSeedsStates && step == 0.f);
      if (kMayRound && stochastic) {
        // the counter after this step's increment; fp32 counts exactly up to 2^24, where
        // += 1 stops changing it, so the conversion never leaves uint32
        weyl = static_cast<uint32_t>(step + 1.f) * kWeyl;
#pragma unroll
        for (int k = 0; k < K; ++k) keys[k] = rounding_key(c.t->seed, k);
      }
    }
    __syncthreads();
    const Row r = row;
    const bool load_states = (kReads & kUsesStates) && states_set;
    const C inv_scale = s.inv_scale ? static_cast<C>(*s.inv_scale) : C(1);
    const C clip = s.clip_coef.ptr ? static_cast<C>(load_scalar(s.clip_coef)) : C(1);

    const P* g_ptr = array<P>(c, kGrad);
    P* p_ptr = array<P>(c, kParam);
    X* x_ptr = kHasExtra ? array<X>(c, kExtra) : nullptr;
    S* s_ptr[K];
    bool vec = aligned<N>(p_ptr) && (!(kReads & kUsesGrad) || aligned<N>(g_ptr)) &&
               (!kHasExtra || aligned<N>(x_ptr));
#pragma unroll
    for (int k = 0; k < K; ++k) {
      s_ptr[k] = array<S>(c, kState0 + k);
      vec = vec && (!((kReads | kWrites) & kUsesStates) || !s_ptr[k] || aligned<N>(s_ptr[k]));
    }

    double acc[kSums] = {};
    for_each_pack<N>(c.n, vec, [&](int i, bool v_ok) {
      C g[N], p[N], st[K][N];
      if constexpr ((kReads & kUsesGrad) != 0) load(g, g_ptr, i, c.n, v_ok);
      if constexpr ((kReads & kUsesParam) != 0) {
        if constexpr (kWeights == kMasterWeights) {
          load(p, x_ptr, i, c.n, v_ok);
        } else {
          load(p, p_ptr, i, c.n, v_ok);
        }
        if constexpr (kWeights == kKahanWeights) {   // x = float(p) + float(c)
          C comp[N];
          load(comp, x_ptr, i, c.n, v_ok);
#pragma unroll
          for (int e = 0; e < N; ++e) p[e] += comp[e];
        }
      }
#pragma unroll
      for (int k = 0; k < K; ++k) {
        if (s_ptr[k] && load_states) load(st[k], s_ptr[k], i, c.n, v_ok);
      }
#pragma unroll
      for (int e = 0; e < N; ++e) {
        C gk = C(0);
        if constexpr ((kReads & kUsesGrad) != 0) {
          gk = g[e];
          if (s.inv_scale) gk *= inv_scale;   // torch's unscale_, then clip_grad_norm_'s scaling
          if (s.clip_coef.ptr) gk *= clip;
          if (math.maximize) gk = -gk;
        }
        C se[K];
#pragma unroll
        for (int k = 0; k < K; ++k) se[k] = st[k][e];
        if constexpr (kStage == kSumStage) {
          math.sums(r, gk, p[e], se, acc);
        } else {
          math.update(r, gk, p[e], se);
        }
#pragma unroll
        for (int k = 0; k < K; ++k) st[k][e] = se[k];
      }
      if constexpr ((kWrites & kUsesParam) != 0) {
        if constexpr (kWeights == kMasterWeights) store(x_ptr, p, i, c.n, v_ok);
        store(p_ptr, p, i, c.n, v_ok);
        if constexpr (kWeights == kKahanWeights) {   // c = rn(x - float(rn(x))), in fp32
          C lost[N];
#pragma unroll
          for (int e = 0; e < N; ++e) lost[e] = p[e] - to_compute<C>(from_compute<P>(p[e]));
          store(x_ptr, lost, i, c.n, v_ok);
        }
      }
      if constexpr ((kWrites & kUsesStates) != 0) {
        // the row-major index of element i (the glue stages non-contiguous tensors with seeds)
        const auto j = static_cast<uint32_t>(c.start + i);
#pragma unroll
        for (int k = 0; k < K; ++k) {
          if (!s_ptr[k]) continue;
          if constexpr (kMayRound) {
            if (stochastic) {
              const uint32_t key = keys[k], w = weyl;
              store(s_ptr[k], st[k], i, c.n, v_ok,
                    [&](C x, int e) { return sr_bf16(x, key, w, j + static_cast<uint32_t>(e)); });
              continue;
            }
          }
          store(s_ptr[k], st[k], i, c.n, v_ok);
        }
      }
    });
    if constexpr (kStage == kSumStage) {
      block_reduce(acc, Sum{});
      if (threadIdx.x == 0) {
#pragma unroll
        for (int j = 0; j < kSums; ++j) sums[static_cast<int64_t>(blockIdx.x) * kSums + j] = acc[j];
      }
    } else {
      finish_steps(table);
    }
  }
};

// A stage that touches no state runs the same code whatever the states' type (LARS's stage 1):
// instantiated once per param type, with S = P.
template <class Math, int kStage, typename P, typename S>
using StageStates =
    std::conditional_t<((Math::reads(kStage) | Math::writes(kStage)) & kUsesStates) != 0, S, P>;

template <typename P, typename S, int kWeights, class Math>
cudaError_t run_stages(const UpdateArgs& a) {
  const Math math(a.flags);
  const bool sr = a.stochastic;
  if constexpr (Math::kTwoStage) {
    using S1 = StageStates<Math, kSumStage, P, S>;
    const cudaError_t err = launch_over(
        a.table, UpdateKernel<P, S1, kWeights, Math, kSumStage>{math, a.hp, a.scalars, a.sums, sr},
        a.stream);
    if (err != cudaSuccess) return err;
    return launch_over(
        a.table, UpdateKernel<P, S, kWeights, Math, kApplyStage>{math, a.hp, a.scalars, a.sums, sr},
        a.stream);
  } else {
    return launch_over(
        a.table, UpdateKernel<P, S, kWeights, Math, kOneStage>{math, a.hp, a.scalars, nullptr, sr},
        a.stream);
  }
}

// Note [precision modes]: the state storage types beside params of type P: P itself, and for
// fp32/fp16/bf16 params also fp32 and bf16.
template <typename P, typename S>
constexpr bool kStatesAllowed =
    std::is_same_v<S, P> || (!std::is_same_v<P, double> &&
                             (std::is_same_v<S, float> || std::is_same_v<S, __nv_bfloat16>));

// The launches of one update step of algorithm Math for the bucket's precision: the dispatch
// on (param dtype, state dtype, weights mode) shared by every algorithm; master copies and
// compensations accompany fp16/bf16 params only (the validator admits no other bucket).
template <class Math> cudaError_t run_update(const UpdateArgs& a) {
  return dispatch(a.dtype, [&](auto param_tag) {
    using P = decltype(param_tag);
    return dispatch(a.state_dtype, [&](auto state_tag) {
      using S = decltype(state_tag);
      if constexpr (kStatesAllowed<P, S>) {
        if constexpr (sizeof(P) == 2) {
          if (a.weights == kMasterWeights) return run_stages<P, S, kMasterWeights, Math>(a);
          if (a.weights == kKahanWeights) return run_stages<P, S, kKahanWeights, Math>(a);
        }
        return run_stages<P, S, kPlainWeights, Math>(a);
      } else {
        return cudaErrorInvalidValue;
      }
    });
  });
}

}  // namespace cuda
}  // namespace fusedopt
