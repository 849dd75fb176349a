// The CPU multi-tensor engine: a bucket's tensors flattened into (tensor, chunk) work items
// and run in one parallel region per call. Compiled for the baseline ISA (it only schedules;
// the kernels it calls are picked per level, Note [one source, three instruction sets]).
#pragma once
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <vector>

namespace fusedopt::cpu {

// Note [work items]: a tensor is cut into chunks of at most kChunkElems elements (256 KB of
// fp32 per stream: long enough for the hardware prefetchers to stay ahead; ~60 us of fp32
// Adam from DRAM on one core, so the last chunk leaves little imbalance; 2^18 measured no
// faster). Threads claim chunks in order from one atomic counter instead of a fixed share
// each: on a shared machine a thread of the team may be descheduled for a scheduler tick
// (4 ms here) and the others then do its share.
// Below kMinElemsPerThread elements per thread no parallel region is opened: one core steps
// 2^18 fp32 Adam elements in ~0.12 ms from cache (0.44 ns/element measured), while a
// parallel region must wake the team and, when the other cores are busy, can wait a tick
// (measured: median 16 ms instead of 60 us for 143K elements at 2 threads under load 5).
// So a bucket of 1000 x 16 elements runs on the calling thread. Chunk boundaries depend
// only on the tensor sizes, never on the thread count or the claiming order, so per-chunk
// norm partials summed in chunk order give the same bits for any torch.set_num_threads.
constexpr int64_t kChunkElems = int64_t{1} << 16;
constexpr int64_t kMinElemsPerThread = int64_t{1} << 18;

struct Chunk {
  int64_t tensor;   // index into the caller's list
  int64_t begin;    // element range inside that tensor
  int64_t end;
};

class WorkPlan {
 public:
  // Cuts tensors of the given sizes into chunks. Reuses its storage: after the first call
  // of a given bucket, planning allocates nothing.
  void build(const std::vector<int64_t>& numels) {
    chunks_.clear();
    total_ = 0;
    for (size_t t = 0; t < numels.size(); ++t) {
      for (int64_t b = 0; b < numels[t]; b += kChunkElems) {
        int64_t e = std::min(numels[t], b + kChunkElems);
        chunks_.push_back({static_cast<int64_t>(t), b, e});
        total_ += e - b;
      }
    }
  }

  int64_t num_chunks() const { return static_cast<int64_t>(chunks_.size()); }
  // Chunks are in tensor order, each tensor's in element order.
  const Chunk& chunk(int64_t i) const { return chunks_[i]; }

  // Calls f(chunk, chunk_index) once per chunk, in one parallel region when the work is
  // large enough (Note [work items]).
  template <class F>
  void run(const F& f) const {
    int64_t threads = std::min<int64_t>(at::get_num_threads(), total_ / kMinElemsPerThread);
    if (threads <= 1 || at::in_parallel_region()) {
      for (int64_t i = 0; i < num_chunks(); ++i) f(chunks_[i], i);
      return;
    }
    std::atomic<int64_t> next{0};
    at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
      for (int64_t i = next.fetch_add(1, std::memory_order_relaxed); i < num_chunks();
           i = next.fetch_add(1, std::memory_order_relaxed)) {
        f(chunks_[i], i);
      }
    });
  }

 private:
  std::vector<Chunk> chunks_;
  int64_t total_ = 0;
};

}  // namespace fusedopt::cpu
