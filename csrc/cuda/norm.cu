// The multi-tensor L2 / inf norm: one launch over the table writes one partial result per
// block, one single-block launch combines them into the norm and, for AMP, found_inf. No
// atomics on floating point, so the result is the same bit for bit on every run (and in every
// replay of a captured graph).
#include <cmath>

#include "engine.cuh"
#include "launchers.h"

namespace fusedopt {
namespace cuda {
namespace {

// Partials and the final combine are double: a sum of fp32 squares cannot overflow (each is
// below 1.2e77), so the norm is non-finite exactly when some element is (found_inf's meaning),
// and 2^31 fp16 terms lose nothing to rounding.
template <bool kInf> struct Combine {
  __device__ double operator()(double a, double b) const { return kInf ? max_nan(a, b) : a + b; }
};

// The block's combined value, valid in thread 0. Identity 0 serves both (|x| >= 0).
template <bool kInf> __device__ double block_combine(double v) {
  double one[1] = {v};
  block_reduce(one, Combine<kInf>{});
  return one[0];
}

template <bool kInf> struct NormFunctor {
  double* partials;

  __device__ void operator()(const Table& table) const {
    const Chunk c = chunk_of(table);
    // The tensor's dtype is uniform over the block, so the switch does not diverge.
    const double acc = dispatch(static_cast<DType>(c.t->dtype), [&](auto tag) {
      using T = decltype(tag);
      using C = typename Compute<T>::type;
      constexpr int N = kVec<T>;
      const T* g_ptr = array<T>(c, kGrad);
      double a = 0.0;
      for_each_pack<N>(c.n, aligned<N>(g_ptr), [&](int i, bool v_ok) {
        C g[N];
        load(g, g_ptr, i, c.n, v_ok);
#pragma unroll
        for (int k = 0; k < N; ++k) {
          const double x = static_cast<double>(g[k]);
          a = kInf ? max_nan(a, fabs(x)) : fma(x, x, a);
        }
      });
      return a;
    });
    const double block = block_combine<kInf>(acc);
    if (threadIdx.x == 0) partials[blockIdx.x] = block;
  }
};

template <bool kInf>
__global__ void __launch_bounds__(kBlockThreads) finalize_norm(const double* partials, int n,
                                                               void* out, bool out_double,
                                                               const float* inv_scale,
                                                               float* found_inf) {
  double acc = 0.0;
  for (int i = threadIdx.x; i < n; i += blockDim.x) acc = Combine<kInf>{}(acc, partials[i]);
  acc = block_combine<kInf>(acc);
  if (threadIdx.x == 0) {
    double norm = kInf ? acc : sqrt(acc);
    if (inv_scale) norm *= static_cast<double>(*inv_scale);   // the norm of the unscaled grads
    // float64 when a grad is fp64 (Note [norm dtype], fusedopt/backends/__init__.py)
    if (out_double) {
      *static_cast<double*>(out) = norm;
    } else {
      *static_cast<float*>(out) = static_cast<float>(norm);
    }
    if (found_inf && !isfinite(norm)) *found_inf = 1.f;
  }
}

}  // namespace

cudaError_t launch_norm(const Table& table, bool inf_norm, double* partials, void* out,
                        bool out_double, const float* inv_scale, float* found_inf,
                        cudaStream_t stream) {
  cudaError_t err = inf_norm ? launch_over(table, NormFunctor<true>{partials}, stream)
                             : launch_over(table, NormFunctor<false>{partials}, stream);
  if (err != cudaSuccess) return err;
  if (inf_norm) {
    finalize_norm<true><<<1, kBlockThreads, 0, stream>>>(partials, table.num_blocks, out,
                                                         out_double, inv_scale, found_inf);
  } else {
    finalize_norm<false><<<1, kBlockThreads, 0, stream>>>(partials, table.num_blocks, out,
                                                          out_double, inv_scale, found_inf);
  }
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace fusedopt
