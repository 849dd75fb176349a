// In-place scaling of many tensors of mixed dtypes by one device scalar in one launch: what
// torch._foreach_mul_(tensors, coef) does once per dtype, for grads that no fusedopt step will
// scale inline (Note [clip inside the step], fusedopt/optimizer.py).
#include "engine.cuh"
#include "launchers.h"

namespace fusedopt {
namespace cuda {
namespace {

struct ScaleFunctor {
  DeviceScalar coef;

  __device__ void operator()(const Table& table) const {
    const Chunk c = chunk_of(table);
    dispatch(static_cast<DType>(c.t->dtype), [&](auto tag) {
      using T = decltype(tag);
      using C = typename Compute<T>::type;
      constexpr int N = kVec<T>;
      const C factor = static_cast<C>(load_scalar(coef));
      T* g_ptr = array<T>(c, kGrad);
      for_each_pack<N>(c.n, aligned<N>(g_ptr), [&](int i, bool v_ok) {
        C g[N];
        load(g, g_ptr, i, c.n, v_ok);
#pragma unroll
        for (int k = 0; k < N; ++k) g[k] *= factor;
        store(g_ptr, g, i, c.n, v_ok);
      });
    });
  }
};

}  // namespace

cudaError_t launch_scale(const Table& table, DeviceScalar coef, cudaStream_t stream) {
  return launch_over(table, ScaleFunctor{coef}, stream);
}

}  // namespace cuda
}  // namespace fusedopt
