// The packed tensor table of the CUDA multi-tensor engine: what the host glue writes and the
// kernels read. Plain C++ (no CUDA, no torch), included by both sides, so the layout has one
// definition.
//
// Note [one table, one launch]: every tensor of a bucket gets one TensorMeta (its arrays, size,
// step counter, hyper-parameter row) and every 64 Ki-element chunk of it one BlockMeta (a
// tensor's chunks are consecutive and in order: block b holds chunk c of a tensor whose first
// block is b - c, Note [two stages] in engine.cuh); the glue copies the whole table to the
// device with one asynchronous copy and launches one CUDA block per chunk (a two-stage
// algorithm: two launches over the same table). Kernel-argument tables (torch's and apex's multi_tensor_apply: 4 KiB, about
// 110 tensors per launch) need a launch per 110 tensors; this table has no such limit, so a
// bucket of any size costs one launch. Size: 80 B per tensor + 8 B per chunk, i.e. 138 KiB of
// metadata for 500M fp32 parameters in 1000 tensors.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

namespace fusedopt {
namespace cuda {

// Elements per chunk (one CUDA block): 64 Ki elements is 256 KiB of fp32 per array, enough
// to hide a block's launch cost, and small enough that 1000 small tensors still spread over
// every SM. Chunk indices are int32: a tensor may have up to 2^47 elements.
constexpr int64_t kChunk = int64_t(1) << 16;
constexpr int kBlockThreads = 512;

// Array slots of a TensorMeta (Note [slots]); unused slots are null.
enum Slot : int {
  kGrad = 0,
  kParam = 1,
  kState0 = 2,   // the algorithm's states in bucket order (csrc/algorithms.h state_names)
  kState1 = 3,
  kState2 = 4,
  kExtra = 5,    // the weights mode's array (Note [precision modes], docs/internals.md): the fp32
                 // master copy or the Kahan compensation (param dtype) of an fp16/bf16 param, or null
  kSlots = 6,
};

// Element type of a tensor's arrays (the norm and scale kernels mix them in one launch).
enum DType : int32_t { kF32 = 0, kF64 = 1, kF16 = 2, kBF16 = 3 };

struct TensorMeta {
  void* ptr[kSlots];
  float* step;       // 0-d float32 step counter on the device (update kernels only)
  int64_t numel;
  int32_t group;     // row of the float64 [G, kHpCols] hyper-parameter table (csrc/hparams.h)
  int32_t dtype;     // DType of ptr[kGrad] / ptr[kParam] (the states': UpdateArgs::state_dtype)
  uint32_t seed;     // stochastic rounding of the states (Note [stochastic rounding]), else 0
};
static_assert(sizeof(TensorMeta) == 80, "the table's size above counts 80 B per tensor");

struct BlockMeta {
  int32_t tensor;
  int32_t chunk;
};

// The device view of an uploaded table.
struct Table {
  const TensorMeta* tensors;
  const BlockMeta* blocks;
  unsigned int* done;   // blocks finished so far; Note [step counters]
  int32_t num_tensors;
  int32_t num_blocks;
};

// Where each part of the table sits in the one uploaded buffer.
struct Layout {
  int32_t num_tensors = 0;
  int32_t num_blocks = 0;
  size_t blocks_at = 0;
  size_t done_at = 0;
  size_t bytes = 0;
};

// constexpr: the kernels call it too (--expt-relaxed-constexpr, torch's COMMON_NVCC_FLAGS).
constexpr int64_t chunks_of(int64_t numel) { return (numel + kChunk - 1) / kChunk; }

// An empty-only table still gets one block: the update kernels' last block increments every
// step counter (torch steps zero-element params too), and a grid cannot have zero blocks.
inline Layout plan(const std::vector<TensorMeta>& tensors) {
  Layout l;
  l.num_tensors = static_cast<int32_t>(tensors.size());
  int64_t blocks = 0;
  for (const auto& t : tensors) blocks += chunks_of(t.numel);
  l.num_blocks = static_cast<int32_t>(blocks > 0 ? blocks : 1);
  l.blocks_at = sizeof(TensorMeta) * tensors.size();
  l.done_at = l.blocks_at + sizeof(BlockMeta) * static_cast<size_t>(l.num_blocks);
  l.bytes = l.done_at + sizeof(unsigned int);
  return l;
}

// Writes the table into host memory of l.bytes bytes (the glue's pinned staging buffer).
inline void write(const Layout& l, const std::vector<TensorMeta>& tensors, void* host) {
  auto* base = static_cast<unsigned char*>(host);
  std::memcpy(base, tensors.data(), sizeof(TensorMeta) * tensors.size());
  auto* blocks = reinterpret_cast<BlockMeta*>(base + l.blocks_at);
  int32_t b = 0;
  for (int32_t t = 0; t < l.num_tensors; ++t) {
    const int64_t n = chunks_of(tensors[t].numel);
    for (int64_t c = 0; c < n; ++c) blocks[b++] = BlockMeta{t, static_cast<int32_t>(c)};
  }
  if (b == 0) blocks[b++] = BlockMeta{0, 0};   // the lone block of an empty-only table
  const unsigned int zero = 0;
  std::memcpy(base + l.done_at, &zero, sizeof(zero));
}

inline Table view(const Layout& l, void* device) {
  auto* base = static_cast<unsigned char*>(device);
  return Table{reinterpret_cast<const TensorMeta*>(base),
               reinterpret_cast<const BlockMeta*>(base + l.blocks_at),
               reinterpret_cast<unsigned int*>(base + l.done_at), l.num_tensors, l.num_blocks};
}

}  // namespace cuda
}  // namespace fusedopt
