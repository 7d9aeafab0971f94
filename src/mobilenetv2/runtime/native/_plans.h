// The run-time plans the kernels (_kernels.inc) read: shared by _engine.cpp and the kernel
// harness bench/native_kernels.cpp, so both compile the kernels against one definition.
#pragma once

#include <stdint.h>

#include <atomic>

namespace {

constexpr int KIND_STEM = 0, KIND_EXPAND = 1, KIND_DIRECT = 2;

inline int pad_to(int n, int m) { return (n + m - 1) / m * m; }

// The output columns [*lo, *hi) of a 3x3 conv row (stride, dilation, left padding padl) whose
// three taps all lie inside the `win`-wide input row: the kernels run them without bounds
// checks (fp32 depthwise and stem, int8 depthwise) and the rest as edges.
inline void interior_columns(int win, int wout, int stride, int dil, int padl, int* lo,
                             int* hi) {
  int l = (padl + stride - 1) / stride;
  int h = (win - 1 + padl - 2 * dil) >= 0 ? (win - 1 + padl - 2 * dil) / stride + 1 : 0;
  if (h > wout) h = wout;
  if (l > h) l = h;
  *lo = l;
  *hi = h;
}

// run_head's rows in a thread's scratch, in vectors: HEAD_PIX (64) pixels x at most 3 vectors
// (NR on AVX-512); the thread's partial logits follow them.
constexpr long HEAD_ROWS_VECTORS = 64L * 3;

// Everything one fused block needs at run time: weights (packed for the ISA's width) and the
// geometry of the current input size.
struct BlockPlan {
  int kind, cin, hid, cout, cin_p, hid_p, cout_p, stride, dil;
  bool residual;
  const float *we, *be, *ws, *bs, *wd, *bd, *wp, *bp;
  int s_stride, s_dil;  // the stem's, when kind == KIND_STEM
  // per input size
  int hin, win, hout, wout, padt, padl;
  int img_h, img_w, s_padt, s_padl;
  int ring, cs;
  bool map;  // the whole map per channel slice, threads split channels (run_block_map)
};

struct HeadPlan {
  int cin_p, cout, cout_p, classes, classes_p;
  const float *wh, *bh, *wf, *bf;
  int h, w;
};

// Work shared by the threads that split one image (batch 1), claimed as they go instead of
// fixed in advance (rows here; map mode's channels and the head's in _kernels.inc): on a
// shared machine one core is often slower than the other for minutes (bench/native_trace.py
// measured one thread's work at 1.39x the other's on every layer), and a fixed split makes
// the fast thread wait at each layer's barrier. One per layer and pair of threads, on its
// own cache line. In each channel slice of a row-split block the pair's first thread claims
// rows from the top of the pair's segment and the second from the bottom until they meet,
// so the split follows the threads' speeds slice by slice; a row's slices are summed in
// slice order whoever computes them (`done`), so the result does not depend on the split.
struct alignas(64) Share {
  // (slice + 1) << 48 | lo << 24 | hi: the rows [lo, hi) of that slice not yet claimed
  std::atomic<uint64_t> rows{0};
  std::atomic<int>* done = nullptr;  // per output row of the layer: slices added to it
  // map mode's two steps and the head: the first channel not yet claimed (pair 0's only)
  std::atomic<int> next[2];
};

// Nothing claimed; `done`: the layer's per-row counters, zeroed by the caller (one array
// for every pair of the layer).
inline void share_reset(Share& s, std::atomic<int>* done) {
  s.rows.store(0, std::memory_order_relaxed);
  s.next[0].store(0, std::memory_order_relaxed);
  s.next[1].store(0, std::memory_order_relaxed);
  s.done = done;
}

// The next row of slice `slice` in the pair's segment [lo, hi), from the top or (down) from
// the bottom; false when the two threads have met. The first of the pair to ask for a slice
// opens it (the previous one is then all claimed: a thread asks for the next slice only
// after its claim in this one failed). Relaxed: the rows' data is ordered by `done` and the
// layers' barriers.
inline bool claim_row(Share* s, int slice, int lo, int hi, bool down, int* row) {
  const uint64_t gen = (uint64_t)(slice + 1) << 48, mask = (1u << 24) - 1;
  uint64_t v = s->rows.load(std::memory_order_relaxed);
  for (;;) {
    const uint64_t g = v & ~((1ull << 48) - 1);
    if (g > gen) return false;
    int a = lo, b = hi;
    if (g == gen) {
      a = (int)((v >> 24) & mask);
      b = (int)(v & mask);
    }
    if (a >= b) return false;
    const uint64_t nv = gen | (uint64_t)(down ? a : a + 1) << 24 | (uint64_t)(down ? b - 1 : b);
    if (s->rows.compare_exchange_weak(v, nv, std::memory_order_relaxed)) {
      *row = down ? b - 1 : a;
      return true;
    }
  }
}

// The rows [*lo, *hi) of `rows` that thread `me` of `T` works on in a split image: its
// pair's segment, which it claims from with its partner (returns the pair's index), or, for
// an odd thread out and a thread alone, its own fixed share (returns -1).
inline int pair_segment(int rows, int me, int T, int* lo, int* hi) {
  if (T > 1 && !(T % 2 == 1 && me == T - 1)) {
    const int pair = me / 2, end = 2 * pair + 2 < T ? 2 * pair + 2 : T;
    *lo = (int)((long)rows * 2 * pair / T);
    *hi = (int)((long)rows * end / T);
    return pair;
  }
  *lo = (int)((long)rows * me / T);
  *hi = (int)((long)rows * (me + 1) / T);
  return -1;
}

// Shares (`Share`) per layer: one per pair of threads, the odd thread out's included.
inline int pair_count(int threads) { return (threads + 1) / 2; }

// Until `slices` slices of row `row` are summed (release/acquire: their sums are then visible).
inline void wait_done(const Share* s, int row, int slices) {
  while (s->done[row].load(std::memory_order_acquire) < slices) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
  }
}

}  // namespace
