// The device half of the CUDA multi-tensor engine: one kernel template that gives each CUDA
// block one chunk of one tensor of the table (table.h), and the helpers the algorithm functors
// share (vectorised loads/stores, the step-counter protocol, dtype dispatch). Only CUDA headers:
// `nvcc -c` compiles this on a machine whose torch has no CUDA.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

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

// Elements per thread and step: one 128-bit access of the tensor's own type (4 fp32, 2 fp64,
// 8 fp16/bf16). An fp32 master copy beside fp16 params then moves 32 B: two 128-bit accesses.
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

template <int N, typename T, typename C>
__device__ __forceinline__ void store(T* p, const C (&r)[N], int i, int n, bool vec) {
  if (vec) {
    Pack<T, N> x;
#pragma unroll
    for (int k = 0; k < N; ++k) x.v[k] = from_compute<T>(r[k]);
    *reinterpret_cast<Pack<T, N>*>(p + i) = x;
  } else {
#pragma unroll
    for (int k = 0; k < N; ++k) {
      if (i + k < n) p[i + k] = from_compute<T>(r[k]);
    }
  }
}

// This block's chunk: elements [start, start + n) of tensor t. start is int64 (tensors of
// 2^31 elements or more); offsets inside a chunk fit in int.
struct Chunk {
  const TensorMeta* t;
  int64_t start;
  int n;
};

__device__ __forceinline__ Chunk chunk_of(const Table& table) {
  const BlockMeta b = table.blocks[blockIdx.x];
  const TensorMeta* t = table.tensors + b.tensor;
  const int64_t start = static_cast<int64_t>(b.chunk) * kChunk;
  const int64_t left = t->numel - start;
  return Chunk{t, start, static_cast<int>(left < kChunk ? left : kChunk)};
}

// Slot s of the chunk's tensor as T*, advanced to the chunk's first element.
template <typename T> __device__ __forceinline__ T* array(const Chunk& c, int s) {
  return static_cast<T*>(c.t->ptr[s]) + c.start;
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

__device__ __forceinline__ bool skip_step(const float* found_inf) {
  return found_inf != nullptr && *found_inf != 0.f;
}

// Note [step counters]: every block of a tensor needs the tensor's step count before the
// increment, yet the counter must grow by exactly one per launch, without a second launch. Each
// block's thread 0 reads the counter at block start (into shared memory, before any update);
// finish_steps() then counts finished blocks in table.done, and the last block, which knows
// every other block has read its counter, increments all of them. table.done starts at 0 in
// every upload (table.h write()), including each replay of a captured upload. A skipped step
// (found_inf) returns before both, so counters stay untouched. The fences make the count a
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
// took 91 and ran one block (25% occupancy) per SM; capped, only fp64 Adam spills (36 B).
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

// One launch of an update functor Update<T, kMasterCopy>{args...} for the bucket's dtype:
// the dtype and master-copy dispatch shared by every algorithm's launcher.
template <template <typename, bool> class Update, typename... Args>
cudaError_t launch_update(const Table& table, DType dtype, bool master, cudaStream_t stream,
                          const Args&... args) {
  return dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    if constexpr (sizeof(T) == 2) {   // master copies accompany fp16/bf16 params only
      if (master) return launch_over(table, Update<T, true>{args...}, stream);
    }
    return launch_over(table, Update<T, false>{args...}, stream);
  });
}

}  // namespace cuda
}  // namespace fusedopt
