// The CPU multi-tensor engine: a bucket's tensors flattened into (tensor, chunk) work items
// and run in one parallel region per call. Compiled for the baseline ISA (it only schedules;
// the kernels it calls are picked per level, Note [one source, three instruction sets]).
#pragma once
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace fusedopt::cpu {

// Note [work items]: a tensor is cut into chunks of at most kChunkElems elements (256 KB of
// fp32 per stream: long enough for the hardware prefetchers to stay ahead, short enough that
// splitting by whole chunks balances threads to within one chunk). The total is split into
// one contiguous run of elements per thread, so each thread streams through memory in order.
// Below kMinElemsPerThread elements per thread no parallel region is opened: one core steps
// 2^18 fp32 Adam elements in ~0.1 ms from cache, while a parallel region costs ~5-20 us to
// open and, on a shared machine whose other cores are busy, can wait a scheduler slice
// (measured: median 16 ms instead of 60 us for 143K elements at 2 threads under load 5).
// So a bucket of 1000 x 16 elements runs on the calling thread. Chunk boundaries depend
// only on the tensor sizes, never on the thread count, so per-chunk norm partials summed in
// chunk order give the same bits for any torch.set_num_threads.
constexpr int64_t kChunkElems = int64_t{1} << 16;
constexpr int64_t kMinElemsPerThread = int64_t{1} << 18;

struct Chunk {
  int64_t tensor;   // index into the caller's list
  int64_t begin;    // element range inside that tensor
  int64_t end;
  int64_t offset;   // first element's position in the whole bucket
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
        chunks_.push_back({static_cast<int64_t>(t), b, e, total_});
        total_ += e - b;
      }
    }
  }

  int64_t num_chunks() const { return static_cast<int64_t>(chunks_.size()); }

  // Calls f(chunk, chunk_index) once per chunk, in one parallel region when the work is
  // large enough (Note [work items]).
  template <class F>
  void run(const F& f) const {
    int64_t threads = std::min<int64_t>(at::get_num_threads(), total_ / kMinElemsPerThread);
    if (threads <= 1 || at::in_parallel_region()) {
      for (int64_t i = 0; i < num_chunks(); ++i) f(chunks_[i], i);
      return;
    }
    at::parallel_for(0, threads, 1, [&](int64_t first_thread, int64_t last_thread) {
      for (int64_t t = first_thread; t < last_thread; ++t) {
        // this thread's chunks: those starting in [total*t/threads, total*(t+1)/threads)
        auto starts_before = [](const Chunk& c, int64_t pos) { return c.offset < pos; };
        auto lo = std::lower_bound(chunks_.begin(), chunks_.end(), total_ * t / threads,
                                   starts_before);
        auto hi = std::lower_bound(lo, chunks_.end(), total_ * (t + 1) / threads,
                                   starts_before);
        for (auto c = lo; c != hi; ++c) f(*c, c - chunks_.begin());
      }
    });
  }

 private:
  std::vector<Chunk> chunks_;
  int64_t total_ = 0;
};

}  // namespace fusedopt::cpu
