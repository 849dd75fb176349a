// The CPU multi-tensor engine: a bucket's tensors flattened into (tensor, chunk) work items
// and run in one parallel region per call. Compiled for the baseline ISA (it only schedules;
// the kernels it calls are picked per level, Note [one source, three instruction sets]).
#pragma once
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>
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

// Note [two stages in cache]: a two-stage algorithm (Note [two stages], csrc/algorithms.h)
// reads every stream of a tensor in stage 1 and again in stage 2. A tensor of at most
// kCachedChunks chunks that needs sums is one work item: one thread sums its chunks, folds the
// totals in (finish), then updates its chunks while they are still in its L2 (1 MiB per core
// here) or the L3 (32 MiB, shared, filled with L2's victims): 2^18 fp32 elements are 4 MiB
// over LAMB's four streams, 8 MiB for two threads. Larger tensors are stepped in groups, their
// chunks shared by the threads (Note [pipelined stages]). Either way a chunk's partial sums are
// the same and a tensor's totals are added in chunk order, so the bits do not depend on which
// path, thread or order took them; a bucket of a few cached tensors can be imbalanced by one
// tensor (at most 2^18 elements, ~0.3 ms of fp32 LAMB on one core). What this saves from DRAM,
// fp32, per param: LAMB 48 -> 32 B (the global clip's norm reads g; stage 1 reads p, g, m, v;
// stage 2 writes p, m, v), LARS with momentum 28 -> 20 B.
// Measured (20M params in 200 tensors, 2 threads, `python bench/two_stage.py --repeats 3
// --rounds 15`, the ratios' medians of four runs per build, builds alternated, load ~2.2 on the
// 2 cores): LAMB/AdamW 2.59, 2.16, 2.15, 2.13 -> 1.57, 1.62, 1.62, 1.57 (repeats within 3%),
// LARS/AdamW 1.60, 1.21, 1.22, 1.18 -> 0.89, 0.87, 0.87, 0.86; AdamW itself unchanged (10-12
// ms). At load 5-7 the LAMB gain vanished in the noise (2.05, 2.50, 2.02 -> 1.99, 2.17, 2.14):
// what is left of LAMB's step is its divider, shared with whatever else runs. Each stage
// computes the update (3 divisions and a root per lane, AdamW 2 and 1): in L2, one thread,
// AVX-512 (a kernel micro-benchmark), fp32 AdamW's update takes 0.434 ns/element, LAMB's
// stage 2 0.543 and its stage 1 0.504. Note [kept update] in lamb.h then took the second
// update out of a cached tensor's stage 2.
constexpr int64_t kCachedChunks = 4;
// Larger tensors are stepped in groups of at most this many elements (Note [pipelined stages];
// LAMB keeps 64 MiB of fp32 updates for them, Note [kept update] in lamb.h), or one alone
constexpr int64_t kWholeElems = int64_t{1} << 24;

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
    first_chunk_.clear();
    total_ = 0;
    for (size_t t = 0; t < numels.size(); ++t) {
      first_chunk_.push_back(num_chunks());
      for (int64_t b = 0; b < numels[t]; b += kChunkElems) {
        int64_t e = std::min(numels[t], b + kChunkElems);
        chunks_.push_back({static_cast<int64_t>(t), b, e});
        total_ += e - b;
      }
    }
    first_chunk_.push_back(num_chunks());
  }

  int64_t num_chunks() const { return static_cast<int64_t>(chunks_.size()); }
  const Chunk& chunk(int64_t i) const { return chunks_[i]; }

  // Calls f(chunk, chunk_index) once per chunk, in one parallel region when the work is
  // large enough (Note [work items]).
  template <class F>
  void run(const F& f) const {
    claim(num_chunks(), total_, [&](int64_t i) { f(chunks_[i], i); });
  }

  // Note [pipelined stages]: the given tensors, of `work` elements in all, both stages each,
  // in one parallel region. A tensor's chunks are claimed in order for stage1(chunk,
  // chunk_index); the thread that completes its last one calls fold(t); then each thread runs
  // stage2(chunk) on the chunks it took in stage 1, last first, after waiting for the stage 1
  // chunks still running on other threads (never for a thread: a claimed chunk is always
  // finished, so the wait ends), and goes on to the next tensor. So a chunk's stage 2 runs on the
  // core whose caches hold what its stage 1 wrote, and there is no barrier between tensors.
  // Measured (ViT-B/16, fp32 LAMB/AdamW, one process per run, 2 threads): stepping each larger
  // tensor in two parallel regions of its own took 4.1-4.6 whenever the VM woke the threads
  // late (the recompute path: 2.08-2.16); stage 2 claimed by any thread, 1.78-1.87 in most runs
  // but 3.0-3.1 in the runs whose AdamW was fastest (likely the two vCPUs on two cores, a chunk's
  // kept update then read from the other core's cache half the time); each thread its own
  // chunks: 1.75-1.84 in 9 runs of either kind. LARS, which keeps nothing, gains as much from
  // finding a chunk's p and g still in the caches in stage 2: LARS/AdamW (momentum 0.9) on
  // ResNet-50's shapes 1.15-1.16 -> 0.93-0.94, ViT-B's 1.19-1.20 -> 0.92-0.94, against summing
  // every larger tensor in one region and updating them in a second (three runs, in one process).
  // Before it, larger tensors took that path; now every two-stage step takes this one.
  template <class Stage1, class Fold, class Stage2>
  void run_pipelined(const std::vector<int64_t>& tensors, int64_t work, const Stage1& stage1,
                     const Fold& fold, const Stage2& stage2) {
    const size_t n = tensors.size();
    if (progress_size_ < n) {
      progress_ = std::make_unique<Progress[]>(n);
      progress_size_ = n;
    }
    for (size_t k = 0; k < n; ++k) progress_[k].reset();
    const auto body = [&] {
      // the chunks of the tensor this thread took in stage 1; the pool's threads persist, so a
      // step allocates nothing once each has grown its list
      thread_local std::vector<int64_t> mine;
      for (size_t k = 0; k < n; ++k) {
        const int64_t t = tensors[k], first = first_chunk_[t], count = first_chunk_[t + 1] - first;
        Progress& p = progress_[k];
        mine.clear();
        for (int64_t i = p.claimed.fetch_add(1); i < count; i = p.claimed.fetch_add(1)) {
          stage1(chunks_[first + i], first + i);
          mine.push_back(first + i);
          if (p.done.fetch_add(1, std::memory_order_acq_rel) + 1 == count) {
            fold(t);
            p.ready.store(true, std::memory_order_release);
          }
        }
        while (!p.ready.load(std::memory_order_acquire)) std::this_thread::yield();
        for (auto i = mine.rbegin(); i != mine.rend(); ++i) stage2(chunks_[*i]);
      }
    };
    const int64_t threads = std::min<int64_t>(at::get_num_threads(), work / kMinElemsPerThread);
    if (threads <= 1 || at::in_parallel_region()) {
      body();
    } else {
      at::parallel_for(0, threads, 1, [&](int64_t, int64_t) { body(); });
    }
  }

  int64_t first_chunk(int64_t t) const { return first_chunk_[t]; }

  // A two-stage step (Note [two stages in cache]): update(chunk) for every chunk of each tensor
  // t without needs_sums[t]; both(t, first, end) for a tensor of at most kCachedChunks chunks
  // that needs sums, with its chunk indices [first, end), all of it on one thread; then
  // whole(tensors, elements) for the larger ones that need sums, in groups of consecutive tensors
  // of at most kWholeElems elements in all or of one tensor, each group stepped by
  // run_pipelined (Note [pipelined stages]). The chunks are run()'s, whichever thread takes them.
  template <class Update, class Both, class Whole>
  void run_two_stages(const std::vector<char>& needs_sums, const Update& update, const Both& both,
                      const Whole& whole) {
    const int64_t tensors = static_cast<int64_t>(first_chunk_.size()) - 1;
    const auto cached = [&](int64_t t) {
      return first_chunk_[t + 1] - first_chunk_[t] <= kCachedChunks;
    };
    // first the tensors that take both stages at once, the largest items; then single chunks
    items_.clear();
    for (int64_t t = 0; t < tensors; ++t) {
      if (needs_sums[t] && cached(t)) items_.push_back({kBothStages, t});
    }
    for (int64_t t = 0; t < tensors; ++t) {
      if (needs_sums[t]) continue;
      for (int64_t i = first_chunk_[t]; i < first_chunk_[t + 1]; ++i) {
        items_.push_back({kUpdate, i});
      }
    }
    claim(static_cast<int64_t>(items_.size()), total_, [&](int64_t i) {
      const Item item = items_[i];
      if (item.kind == kUpdate) {
        update(chunks_[item.index]);
      } else {
        both(item.index, first_chunk_[item.index], first_chunk_[item.index + 1]);
      }
    });
    for (int64_t t = 0; t < tensors;) {
      group_.clear();
      int64_t elems = 0;
      for (; t < tensors; ++t) {
        if (!needs_sums[t] || cached(t)) continue;
        const int64_t n = chunks_[first_chunk_[t + 1] - 1].end;
        if (!group_.empty() && elems + n > kWholeElems) break;
        group_.push_back(t);
        elems += n;
      }
      if (!group_.empty()) whole(group_, elems);
    }
  }

 private:
  // f(i) for each i in [0, n), over `work` elements: claimed from one counter by the threads of
  // one parallel region when the work is large enough (Note [work items]).
  template <class F>
  void claim(int64_t n, int64_t work, const F& f) const {
    int64_t threads = std::min<int64_t>(at::get_num_threads(), work / kMinElemsPerThread);
    if (threads <= 1 || at::in_parallel_region()) {
      for (int64_t i = 0; i < n; ++i) f(i);
      return;
    }
    std::atomic<int64_t> next{0};
    at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
      for (int64_t i = next.fetch_add(1, std::memory_order_relaxed); i < n;
           i = next.fetch_add(1, std::memory_order_relaxed)) {
        f(i);
      }
    });
  }

  enum Kind : int64_t { kUpdate, kBothStages };
  struct Progress {   // one tensor's in run_pipelined
    std::atomic<int64_t> claimed, done;   // its stage 1 chunks
    std::atomic<bool> ready;              // folded
    void reset() {
      claimed = 0;
      done = 0;
      ready = false;
    }
  };
  struct Item {
    Kind kind;
    int64_t index;   // a chunk's, or for kBothStages the tensor's
  };

  std::vector<Chunk> chunks_;          // in tensor order, each tensor's in element order
  std::vector<int64_t> first_chunk_;   // tensor t's: [first_chunk_[t], first_chunk_[t + 1])
  std::vector<Item> items_;            // run_two_stages' work, reused as chunks_
  std::vector<int64_t> group_;         // run_two_stages' tensors stepped whole together
  std::unique_ptr<Progress[]> progress_;   // run_pipelined's, per tensor of its group
  size_t progress_size_ = 0;
  int64_t total_ = 0;
};

}  // namespace fusedopt::cpu
