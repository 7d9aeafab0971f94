// mobilenetv2's native fp32 engine: MobileNetV2 as one call, each inverted residual a fused
// operator computed over rows and channel slices (paper section 5.1), so the 6x-wide expanded
// tensor never exists whole. Plain CPython C API and the buffer protocol (no pybind11, no
// numpy headers): the build needs a C++17 compiler and nothing else (setup.py says why).
//
// Python side: mobilenetv2/runtime/native/__init__.py (NativeEngine) flattens a BN-folded
// classifier into the `spec` this module's Engine takes; the kernels are in _kernels.inc.

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#if defined(__linux__)
#include <sys/mman.h>
#include <linux/futex.h>
#include <sys/syscall.h>
#endif

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>  // the int8 engine's kernels (_int8.inc)
#endif
#include <math.h>
#include <stdint.h>

#include "_plans.h"
#include "_plans_int8.h"

// ------------------------------------------------------------------ the kernels, per ISA
#if defined(__x86_64__) || defined(__i386__)
#pragma GCC push_options
#pragma GCC target("avx512f")
namespace isa_avx512 {
#define VW 16
#include "_kernels.inc"
#undef VW
}  // namespace isa_avx512
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace isa_avx2 {
#define VW 8
#include "_kernels.inc"
#undef VW
}  // namespace isa_avx2
#pragma GCC pop_options
#endif

namespace isa_generic {  // SSE2 on x86-64, the compiler's baseline elsewhere
#define VW 4
#include "_kernels.inc"
#undef VW
}  // namespace isa_generic

namespace {

struct Kernels {
  const char* name;
  int vw;
  int (*block)(const BlockPlan&, const float*, float*, int, int, float*, Share*, bool);
  void (*head)(const HeadPlan&, const float*, int, int, float*, float*, const float*, int);
  void (*block_map)(const BlockPlan&, const float*, float*, float*);
  void (*map_dw)(const BlockPlan&, const float*, float*, float*, std::atomic<int>*);
  void (*map_project)(const BlockPlan&, const float*, const float*, float*, std::atomic<int>*);
  int head_step;  // run_head's channel block (NR vectors)
};

const Kernels KERNELS[] = {
#if defined(__x86_64__) || defined(__i386__)
    {"avx512", 16, isa_avx512::run_block, isa_avx512::run_head, isa_avx512::run_block_map,
     isa_avx512::run_map_dw, isa_avx512::run_map_project, isa_avx512::NR * 16},
    {"avx2", 8, isa_avx2::run_block, isa_avx2::run_head, isa_avx2::run_block_map,
     isa_avx2::run_map_dw, isa_avx2::run_map_project, isa_avx2::NR * 8},
#endif
    {"generic", 4, isa_generic::run_block, isa_generic::run_head, isa_generic::run_block_map,
     isa_generic::run_map_dw, isa_generic::run_map_project, isa_generic::NR * 4},
};

bool isa_supported(const std::string& name) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (name == "avx512") return __builtin_cpu_supports("avx512f");
  if (name == "avx2") return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
  return name == "generic";
}

// ------------------------------------------------------------------ aligned float buffers
// Large buffers on transparent huge pages where the kernel offers them only on request
// (THP "madvise" mode, the default of many distributions): 2 MiB-aligned and madvised
// before their first touch. The packed fp32 weights are ~14 MB at width 1.0; in 4 KiB pages
// every forward walks ~3,500 pages, more than Zen 3's 2,048-entry L2 TLB holds.
constexpr size_t HUGE_PAGE = 2u << 20;

void* alloc_huge(size_t bytes) {
  const size_t rounded = (bytes + HUGE_PAGE - 1) / HUGE_PAGE * HUGE_PAGE;
  void* q = nullptr;
  if (posix_memalign(&q, HUGE_PAGE, rounded) != 0) return nullptr;
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  madvise(q, rounded, MADV_HUGEPAGE);  // advice only: without THP the pages stay 4 KiB
#endif
  return q;
}

struct Buf {
  float* p = nullptr;
  size_t n = 0;
  bool own = true;  // false: a view into an Arena (weights after Arena::adopt)
  Buf() = default;
  Buf(const Buf&) = delete;
  Buf& operator=(const Buf&) = delete;
  ~Buf() {
    if (own) free(p);
  }
  bool reserve(size_t count) {  // zero-filled; keeps the buffer when large enough
    if (count <= n && p) return true;
    if (own) free(p);
    p = nullptr;
    n = 0;
    own = true;
    void* q = nullptr;
    if (posix_memalign(&q, 64, std::max<size_t>(count, 1) * sizeof(float)) != 0) return false;
    p = static_cast<float*>(q);
    n = count;
    memset(p, 0, count * sizeof(float));
    return true;
  }
  size_t bytes() const { return n * sizeof(float); }
};

// One huge-page region holding many buffers (the packed weights): packed one by one into
// ordinary buffers at load time, then moved here together, so the whole set spans a handful
// of 2 MiB pages instead of thousands of 4 KiB ones.
struct Arena {
  void* base = nullptr;
  ~Arena() { free(base); }
  bool adopt(const std::vector<Buf*>& bufs) {
    size_t total = 0;
    for (const Buf* b : bufs) total += (b->bytes() + 63) / 64 * 64;
    if (total == 0) return true;
    base = alloc_huge(total);
    if (!base) return false;  // keep the ordinary buffers
    char* at = static_cast<char*>(base);
    for (Buf* b : bufs) {
      if (!b->p) continue;
      memcpy(at, b->p, b->bytes());
      if (b->own) free(b->p);
      b->p = reinterpret_cast<float*>(at);
      b->own = false;
      at += (b->bytes() + 63) / 64 * 64;
    }
    return true;
  }
};

}  // namespace

#include "_pool.h"  // the thread pool (shared with model/_bnact.cpp)

namespace {

// ------------------------------------------------------------------ weights, packed
struct BlockWeights {
  int kind, cin, hid, cout, stride, dil, s_stride, s_dil;
  bool residual;
  Buf we, be, ws, bs, wd, bd, wp, bp;
};

// A 1x1 conv's weight [cout][cin] -> [cout_p / vw][cin_p][vw], the micro-kernel's order.
void pack_pw(const float* w, int cout, int cin, int cout_p, int cin_p, int vw, Buf& out) {
  out.reserve((size_t)cout_p * cin_p);
  for (int o = 0; o < cout; ++o)
    for (int i = 0; i < cin; ++i)
      out.p[((size_t)(o / vw) * cin_p + i) * vw + o % vw] = w[(size_t)o * cin + i];
}

// The classifier [classes][cin] -> [cin_p / vw][classes_p / vw][vw channels][vw classes]:
// one channel vector's weights for every class contiguous (run_head's fc_chunk reads them
// right after pooling those channels).
void pack_fc(const float* w, int classes, int cin, int classes_p, int cin_p, int vw, Buf& out) {
  out.reserve((size_t)classes_p * cin_p);
  for (int j = 0; j < classes; ++j)
    for (int c = 0; c < cin; ++c)
      out.p[(((size_t)(c / vw) * (classes_p / vw) + j / vw) * vw + c % vw) * vw + j % vw] =
          w[(size_t)j * cin + c];
}

// A per-output-channel kernel [cout][taps] -> [taps][cout_p] (depthwise, stem).
void pack_taps(const float* w, int cout, int taps, int cout_p, Buf& out) {
  out.reserve((size_t)taps * cout_p);
  for (int o = 0; o < cout; ++o)
    for (int t = 0; t < taps; ++t) out.p[(size_t)t * cout_p + o] = w[(size_t)o * taps + t];
}

void pack_bias(const float* b, int n, int n_p, Buf& out) {
  out.reserve(n_p);
  memcpy(out.p, b, n * sizeof(float));
}

// TF "SAME" padding before the first pixel, or the symmetric one (model/layers.py).
int pad_before(int size, int stride, int dil, bool tf_same) {
  if (!tf_same || stride == 1) return dil;
  const int out = (size + stride - 1) / stride;
  const int total = std::max((out - 1) * stride + 2 * dil + 1 - size, 0);
  return total / 2;
}
int conv_out(int size, int stride, int dil, int padb, bool tf_same) {
  if (tf_same && stride > 1) return (size + stride - 1) / stride;
  return (size + 2 * padb - 2 * dil - 1) / stride + 1;
}

struct Engine {
  PyObject_HEAD
  const Kernels* k;
  int threads;
  bool tf_same;
  std::vector<BlockWeights>* blocks;
  int head_cin, head_cout, classes;
  Buf* wh;
  Buf* bh;
  Buf* wf;
  Buf* bf;
  Arena* warena;  // every packed weight above, on huge pages
  Pool* pool;
  // per-shape state
  std::vector<BlockPlan>* plans;
  HeadPlan head;
  int cur_h, cur_w;
  long act_a, act_b, scratch_floats, tmp_floats;  // floats per lane / per thread
  std::vector<Buf>* lanes_a;
  std::vector<Buf>* lanes_b;
  std::vector<Buf>* scratch;  // per thread: ring + depthwise row, or the head's rows
  std::atomic<bool>* busy;
  Share* shares;  // [layer][pair of threads]: run_image's claims
  int pairs;
  std::vector<std::atomic<int>>* done;  // two layers' rows (Share::done), alternating
  int done_rows;
};

// The shares of block j (the head when j == blocks) made ready for a split image: nothing
// claimed, no row summed. The rows' `done` counters alternate between two arrays by block,
// so block j's can be reset while the threads still work on block j - 1.
void reset_shares(Engine* e, size_t j) {
  std::atomic<int>* done = e->done->data() + (j % 2) * e->done_rows;
  const int rows = j == e->plans->size() ? 0 : (*e->plans)[j].hout;
  for (int r = 0; r < rows; ++r) done[r].store(0, std::memory_order_relaxed);
  for (int s = 0; s < e->pairs; ++s) share_reset(e->shares[j * e->pairs + s], done);
}

// A split image's head: its channels are claimed HEAD_UNIT_STEPS run_head blocks at a time,
// each unit's partial logits kept apart (run_image) and summed in unit order, so the logits
// do not depend on the split.
constexpr int HEAD_UNIT_STEPS = 4;
int head_unit(const Engine* e) { return HEAD_UNIT_STEPS * e->k->head_step; }

void plan_shape(Engine* e, int H, int W) {
  if (e->cur_h == H && e->cur_w == W) return;
  auto& bw = *e->blocks;
  auto& plans = *e->plans;
  plans.assign(bw.size(), BlockPlan());
  int h = H, w = W;
  long a = 0, b = 0, scr = 0;
  const int vw = e->k->vw;
  for (size_t i = 0; i < bw.size(); ++i) {
    const BlockWeights& B = bw[i];
    BlockPlan& p = plans[i];
    p.kind = B.kind;
    p.cin = B.cin;
    p.hid = B.hid;
    p.cout = B.cout;
    p.cin_p = pad_to(B.cin, vw);
    p.hid_p = pad_to(B.hid, vw);
    p.cout_p = pad_to(B.cout, vw);
    p.stride = B.stride;
    p.dil = B.dil;
    p.residual = B.residual;
    p.we = B.we.p;
    p.be = B.be.p;
    p.ws = B.ws.p;
    p.bs = B.bs.p;
    p.wd = B.wd.p;
    p.bd = B.bd.p;
    p.wp = B.wp.p;
    p.bp = B.bp.p;
    p.s_stride = B.s_stride;
    p.s_dil = B.s_dil;
    if (B.kind == KIND_STEM) {
      p.img_h = h;
      p.img_w = w;
      p.s_padt = pad_before(h, B.s_stride, B.s_dil, e->tf_same);
      p.s_padl = pad_before(w, B.s_stride, B.s_dil, e->tf_same);
      h = conv_out(h, B.s_stride, B.s_dil, p.s_padt, e->tf_same);
      w = conv_out(w, B.s_stride, B.s_dil, p.s_padl, e->tf_same);
    }
    p.hin = h;
    p.win = w;
    p.padt = pad_before(h, B.stride, B.dil, e->tf_same);
    p.padl = pad_before(w, B.stride, B.dil, e->tf_same);
    p.hout = conv_out(h, B.stride, B.dil, p.padt, e->tf_same);
    p.wout = conv_out(w, B.stride, B.dil, p.padl, e->tf_same);
    // The ring holds the 2 * dil + 1 consecutive input rows one output row's taps span: the
    // next output row's new rows replace only rows no longer needed.
    p.ring = 2 * B.dil + 1;
    // Small maps (7x7 at 224) run in map mode: every pixel per channel slice (run_block_map
    // says why), the threads of a split image claiming channels instead of rows. Not the
    // stem block: its map is the largest.
    const long ipix = (long)h * w, opix = (long)p.hout * p.wout;
    p.map = p.kind != KIND_STEM && opix <= 64 && ipix <= 64;
    long s;
    if (p.map) {
      // the slice's expanded map and its depthwise output within ~48 KiB (L1 + L2)
      const long per_ch = 4 * ((p.kind == KIND_DIRECT ? 0L : ipix) + opix);
      int cs = (int)((48 * 1024) / std::max(per_ch, 1L)) / (2 * vw) * (2 * vw);
      p.cs = std::min(std::max(cs, 2 * vw), p.hid_p);
      s = (p.kind == KIND_DIRECT ? 0L : ipix * p.cs) + opix * p.cs;
    } else {
      // The channel slice: as wide as keeps the ring of expanded rows within ~32 KiB (L1/L2,
      // section 5.1's "t" slices; 40-64 KiB measured no faster), at least two vectors so the
      // micro-kernel has work. The stem block takes all its channels at once (32 at width
      // 1.0): a slice would redo the stem's taps and the projection's accumulation per slice.
      const long row = (long)p.win * 4 * p.ring;
      // (whole pairs of vectors: an odd count leaves the micro-kernel a 1-vector column)
      int cs = (int)((32 * 1024) / std::max(row, 1L)) / (2 * vw) * (2 * vw);
      cs = std::max(cs, 2 * vw);
      if (p.kind == KIND_STEM && p.hid_p <= 64) cs = p.hid_p;
      p.cs = std::min(cs, p.hid_p);
      s = (p.kind == KIND_DIRECT ? 0L : (long)p.ring * p.win * p.cs) + (long)p.wout * p.cs;
    }
    scr = std::max(scr, s);
    // map mode with several threads: the depthwise output of every channel (run_map_dw's D)
    // follows the output in its buffer
    const long out_floats = opix * (p.cout_p + (p.map && e->threads > 1 ? p.hid_p : 0));
    if (i % 2 == 0) a = std::max(a, out_floats);
    else b = std::max(b, out_floats);
    h = p.hout;
    w = p.wout;
  }
  HeadPlan& hp = e->head;
  hp.cin_p = pad_to(e->head_cin, vw);
  hp.cout = e->head_cout;
  hp.cout_p = pad_to(e->head_cout, vw);
  hp.classes = e->classes;
  hp.classes_p = pad_to(e->classes, vw);
  hp.wh = e->wh->p;
  hp.bh = e->bh->p;
  hp.wf = e->wf->p;
  hp.bf = e->bf->p;
  hp.h = h;
  hp.w = w;
  // a split image's head: each unit's partial logits in the lane the head does not read
  const int unit = head_unit(e);
  if (e->threads > 1) {
    const long parts = (long)(hp.cout_p + unit - 1) / unit * hp.classes_p;
    if (bw.size() % 2 == 0) a = std::max(a, parts);
    else b = std::max(b, parts);
  }
  // run_head's HEAD_PIX x NR*VW, then this thread's partial logits
  e->tmp_floats = HEAD_ROWS_VECTORS * vw + hp.classes_p;
  e->act_a = a;
  e->act_b = b;
  e->scratch_floats = std::max(scr, e->tmp_floats);
  e->done_rows = 0;
  for (const BlockPlan& p : plans) e->done_rows = std::max(e->done_rows, p.hout);
  delete e->done;
  e->done = new std::vector<std::atomic<int>>(2 * (size_t)e->done_rows);
  e->cur_h = H;
  e->cur_w = W;
}

// One image, all layers, rows split over the pool's threads (batch 1), or, with `solo`, the
// whole image on the calling thread (large batches: one image per thread, no barriers).
// `more`: another image follows in this job (rows split). `times` (thread 0, when profiling):
// seconds since the start at the end of each layer.

// `trace` (every thread, profile mode 2): per layer this thread's seconds of work and of
// waiting at barriers, and the row-slices it computed (row mode: an output row's share of
// one channel slice), to see where the threads' time goes (load imbalance vs kernels).
// `handicap_us` (trace only): the last thread spins that long before each layer, as if its
// core were slower (bench/native_trace.py, tests).
constexpr int TRACE_FIELDS = 3;  // per layer: work, wait, row-slices
void run_image(Engine* e, const float* img, float* logits, int tid, bool solo, int lane,
               bool more, double* times = nullptr, double* trace = nullptr,
               int handicap_us = 0) {
  const double t0 = times ? now_s() : 0.0;
  double tl = trace ? now_s() : 0.0;
  // mark(slot): add the seconds since the last mark to this layer's work (0) or wait (1)
  auto mark = [&](size_t layer, int slot) {
    if (!trace) return;
    const double t = now_s();
    trace[TRACE_FIELDS * layer + slot] += t - tl;
    tl = t;
  };
  const int T = solo ? 1 : e->threads;
  const int me = solo ? 0 : tid;
  const auto& plans = *e->plans;
  float* bufs[2] = {(*e->lanes_a)[lane].p, (*e->lanes_b)[lane].p};
  float* scr = (*e->scratch)[tid].p;
  const float* in = img;
  // Split images: in the row-split blocks pairs of threads claim rows as they go (Share; an
  // odd thread out keeps its fixed share), and thread 0 makes the next block's shares ready
  // before it meets the others at this block's barrier (no thread touches them before that
  // barrier; the head readies block 0's for the next image).
  const size_t L = plans.size();
  Share* sh = solo ? nullptr : e->shares;
  auto ready_next = [&](size_t layer) {  // layer L: the head, which readies block 0
    if (sh && me == 0) reset_shares(e, layer == L ? 0 : layer + 1);
  };
  for (size_t i = 0; i < L; ++i) {
    const BlockPlan& p = plans[i];
    float* out = bufs[i % 2];
    if (handicap_us > 0 && tid == e->threads - 1)
      for (const double t = now_s(); now_s() - t < handicap_us * 1e-6;) cpu_relax();
    int rows = 0;  // row-slices this thread computed (trace)
    if (p.map && !sh) {
      e->k->block_map(p, in, out, scr);
    } else if (p.map) {
      // two steps with a barrier between, each claimed as the threads go (run_map_dw); the
      // depthwise output of every channel follows the output in its buffer
      float* D = out + (long)p.hout * p.wout * p.cout_p;
      e->k->map_dw(p, in, D, scr, &sh[i * e->pairs].next[0]);
      mark(i, 0);
      e->pool->barrier();
      mark(i, 1);
      e->k->map_project(p, in, D, out, &sh[i * e->pairs].next[1]);
    } else {
      // a pair of threads claims its segment's rows together (one thread alone: T == 1)
      int r0, r1;
      const int pr = pair_segment(p.hout, me, T, &r0, &r1);
      rows = e->k->block(p, in, out, r0, r1, scr, pr >= 0 ? &sh[i * e->pairs + pr] : nullptr,
                         me % 2 == 1);
    }
    if (trace) trace[TRACE_FIELDS * i + 2] += rows;
    mark(i, 0);
    if (!solo) {
      ready_next(i);
      e->pool->barrier();
      mark(i, 1);
    }
    if (times) times[i] = now_s() - t0;
    in = out;
  }
  const HeadPlan& hp = e->head;
  if (!sh) {  // one thread: every channel, the logits from the bias (after run_head's rows)
    float* part = scr + HEAD_ROWS_VECTORS * e->k->vw;
    e->k->head(hp, in, 0, hp.cout_p, scr, part, hp.bf, -1);
    for (int j = 0; j < hp.classes; ++j) logits[j] = part[j];
    mark(L, 0);
  } else {
    // The threads claim head_unit(e) channels at a time, one ahead (run_head prefetches its
    // classifier columns), each unit's partial logits in the lane the head does not read;
    // after the barrier each thread sums a share of the classes over the units in unit
    // order. A last barrier only when another image follows in this job (its block 1
    // overwrites the partials); after the job's last image the pool's end of job is that
    // wait.
    const int unit = head_unit(e), units = (hp.cout_p + unit - 1) / unit;
    float* parts = bufs[L % 2];
    std::atomic<int>* next = &sh[L * e->pairs].next[0];
    for (int c = next->fetch_add(unit, std::memory_order_relaxed); c < hp.cout_p;) {
      const int nc = next->fetch_add(unit, std::memory_order_relaxed);
      e->k->head(hp, in, c, std::min(c + unit, hp.cout_p), scr,
                 parts + (long)(c / unit) * hp.classes_p, nullptr, nc < hp.cout_p ? nc : -1);
      c = nc;
    }
    mark(L, 0);
    ready_next(L);
    e->pool->barrier();
    mark(L, 1);
    const int j0 = (int)((long)hp.classes * me / T), j1 = (int)((long)hp.classes * (me + 1) / T);
    for (int j = j0; j < j1; ++j) logits[j] = hp.bf[j];
    for (int u = 0; u < units; ++u)
      for (int j = j0; j < j1; ++j) logits[j] += parts[(long)u * hp.classes_p + j];
    mark(L, 0);
    if (more) e->pool->barrier();
  }
  if (times) times[plans.size()] = now_s() - t0;
}

// ------------------------------------------------------------------ Python type
PyObject* fail(const char* msg) {
  PyErr_SetString(PyExc_ValueError, msg);
  return nullptr;
}

struct View {  // a float32 C-contiguous buffer
  Py_buffer b;
  bool ok = false;
  ~View() {
    if (ok) PyBuffer_Release(&b);
  }
  bool get(PyObject* o, bool writable, const char* what) {
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(o, &b, flags) != 0) return false;
    ok = true;
    if (b.itemsize != 4 || !b.format || (strcmp(b.format, "f") != 0 &&
                                         strcmp(b.format, "<f") != 0 &&
                                         strcmp(b.format, "=f") != 0)) {
      PyErr_Format(PyExc_ValueError, "%s must be float32", what);
      return false;
    }
    return true;
  }
  const float* f() const { return static_cast<const float*>(b.buf); }
  Py_ssize_t n() const { return b.len / 4; }
};

void engine_dealloc(Engine* e) {
  // a pool inherited through fork has no threads in this process: leave it alone
  if (e->pool && e->pool->fork_gen == g_fork_generation.load()) delete e->pool;
  delete e->blocks;
  delete e->wh;
  delete e->bh;
  delete e->wf;
  delete e->bf;
  delete e->warena;
  delete e->plans;
  delete e->lanes_a;
  delete e->lanes_b;
  delete e->scratch;
  delete e->busy;
  delete[] e->shares;
  delete e->done;
  Py_TYPE(e)->tp_free(reinterpret_cast<PyObject*>(e));
}

bool get_ints(PyObject* seq, int* out, int n) {
  if (!PyTuple_Check(seq) || PyTuple_GET_SIZE(seq) != n) return false;
  for (int i = 0; i < n; ++i) {
    long v = PyLong_AsLong(PyTuple_GET_ITEM(seq, i));
    if (v == -1 && PyErr_Occurred()) return false;
    out[i] = (int)v;
  }
  return true;
}

// Engine(blocks, head, fc, threads, isa, tf_same)
//   blocks: tuple of (ints, weights): ints = (kind, cin, hid, cout, stride, dil, residual,
//     s_stride, s_dil); weights = (we, be, ws, bs, wd, bd, wp, bp), None where absent;
//     we [hid][cin], ws [hid][3][3][3], wd [hid][9], wp [cout][hid]
//   head: (cin, cout, wh [cout][cin], bh); fc: (classes, wf [classes][cout], bf)
int engine_init(Engine* e, PyObject* args, PyObject*) {
  PyObject *blocks, *head, *fc;
  int threads, tf_same;
  const char* isa;
  if (!PyArg_ParseTuple(args, "O!O!O!isp", &PyTuple_Type, &blocks, &PyTuple_Type, &head,
                        &PyTuple_Type, &fc, &threads, &isa, &tf_same))
    return -1;
  if (threads < 1) {
    PyErr_SetString(PyExc_ValueError, "threads must be >= 1");
    return -1;
  }
  e->k = nullptr;
  for (const Kernels& k : KERNELS)
    if (isa == std::string(k.name)) e->k = &k;
  if (!e->k || !isa_supported(isa)) {
    PyErr_Format(PyExc_ValueError, "ISA %s is not available on this CPU", isa);
    return -1;
  }
  const int vw = e->k->vw;
  e->threads = threads;
  e->tf_same = tf_same;
  e->blocks = new std::vector<BlockWeights>(PyTuple_GET_SIZE(blocks));
  e->wh = new Buf();
  e->bh = new Buf();
  e->wf = new Buf();
  e->bf = new Buf();
  e->warena = new Arena();
  e->plans = new std::vector<BlockPlan>();
  e->lanes_a = new std::vector<Buf>(threads);
  e->lanes_b = new std::vector<Buf>(threads);
  e->scratch = new std::vector<Buf>(threads);
  e->busy = new std::atomic<bool>(false);
  e->pairs = pair_count(threads);
  e->shares = new Share[(PyTuple_GET_SIZE(blocks) + 1) * e->pairs];
  e->done = nullptr;
  e->pool = nullptr;
  e->cur_h = e->cur_w = -1;
  for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(blocks); ++i) {
    PyObject* item = PyTuple_GET_ITEM(blocks, i);
    int v[9];
    if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2 ||
        !get_ints(PyTuple_GET_ITEM(item, 0), v, 9)) {
      if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "bad block spec");
      return -1;
    }
    PyObject* ws = PyTuple_GET_ITEM(item, 1);
    if (!PyTuple_Check(ws) || PyTuple_GET_SIZE(ws) != 8) {
      PyErr_SetString(PyExc_ValueError, "bad block weights");
      return -1;
    }
    BlockWeights& B = (*e->blocks)[i];
    B.kind = v[0];
    B.cin = v[1];
    B.hid = v[2];
    B.cout = v[3];
    B.stride = v[4];
    B.dil = v[5];
    B.residual = v[6] != 0;
    B.s_stride = v[7];
    B.s_dil = v[8];
    if (B.kind < 0 || B.kind > 2 || B.stride < 1 || B.dil < 1 || 2 * B.dil + B.stride + 1 > 64 ||
        (B.residual && (B.stride != 1 || B.cin != B.cout)) ||
        (B.kind == KIND_DIRECT && B.cin != B.hid) || (B.kind == KIND_STEM && i != 0)) {
      PyErr_SetString(PyExc_ValueError, "unsupported block geometry");
      return -1;
    }
    const int cin_p = pad_to(B.cin, vw), hid_p = pad_to(B.hid, vw), cout_p = pad_to(B.cout, vw);
    View we, be, wsv, bsv, wd, bd, wp, bp;
    if (B.kind == KIND_EXPAND) {
      if (!we.get(PyTuple_GET_ITEM(ws, 0), false, "weights") ||
          !be.get(PyTuple_GET_ITEM(ws, 1), false, "weights"))
        return -1;
      if (we.n() != (Py_ssize_t)B.hid * B.cin || be.n() != B.hid) {
        PyErr_SetString(PyExc_ValueError, "expand weight shape");
        return -1;
      }
      pack_pw(we.f(), B.hid, B.cin, hid_p, cin_p, vw, B.we);
      pack_bias(be.f(), B.hid, hid_p, B.be);
    }
    if (B.kind == KIND_STEM) {
      if (!wsv.get(PyTuple_GET_ITEM(ws, 2), false, "weights") ||
          !bsv.get(PyTuple_GET_ITEM(ws, 3), false, "weights"))
        return -1;
      if (wsv.n() != (Py_ssize_t)B.hid * 27 || bsv.n() != B.hid) {
        PyErr_SetString(PyExc_ValueError, "stem weight shape");
        return -1;
      }
      pack_pw(wsv.f(), B.hid, 27, hid_p, 27, vw, B.ws);  // [hid][3*3*3]: a 1x1 over patches
      pack_bias(bsv.f(), B.hid, hid_p, B.bs);
    }
    if (!wd.get(PyTuple_GET_ITEM(ws, 4), false, "weights") ||
        !bd.get(PyTuple_GET_ITEM(ws, 5), false, "weights") ||
        !wp.get(PyTuple_GET_ITEM(ws, 6), false, "weights") ||
        !bp.get(PyTuple_GET_ITEM(ws, 7), false, "weights"))
      return -1;
    if (wd.n() != (Py_ssize_t)B.hid * 9 || bd.n() != B.hid ||
        wp.n() != (Py_ssize_t)B.cout * B.hid || bp.n() != B.cout) {
      PyErr_SetString(PyExc_ValueError, "depthwise/project weight shape");
      return -1;
    }
    pack_taps(wd.f(), B.hid, 9, hid_p, B.wd);
    pack_bias(bd.f(), B.hid, hid_p, B.bd);
    pack_pw(wp.f(), B.cout, B.hid, cout_p, hid_p, vw, B.wp);
    pack_bias(bp.f(), B.cout, cout_p, B.bp);
  }
  // head and classifier
  PyObject *whv, *bhv, *wfv, *bfv;
  if (!PyArg_ParseTuple(head, "iiOO", &e->head_cin, &e->head_cout, &whv, &bhv) ||
      !PyArg_ParseTuple(fc, "iOO", &e->classes, &wfv, &bfv))
    return -1;
  View vh, vbh, vf, vbf;
  if (!vh.get(whv, false, "weights") || !vbh.get(bhv, false, "weights") ||
      !vf.get(wfv, false, "weights") || !vbf.get(bfv, false, "weights"))
    return -1;
  if (vh.n() != (Py_ssize_t)e->head_cin * e->head_cout || vbh.n() != e->head_cout ||
      vf.n() != (Py_ssize_t)e->classes * e->head_cout || vbf.n() != e->classes) {
    PyErr_SetString(PyExc_ValueError, "head/classifier weight shape");
    return -1;
  }
  const int hcin_p = pad_to(e->head_cin, vw), hcout_p = pad_to(e->head_cout, vw);
  pack_pw(vh.f(), e->head_cout, e->head_cin, hcout_p, hcin_p, vw, *e->wh);
  pack_bias(vbh.f(), e->head_cout, hcout_p, *e->bh);
  pack_fc(vf.f(), e->classes, e->head_cout, pad_to(e->classes, vw), hcout_p, vw, *e->wf);
  pack_bias(vbf.f(), e->classes, pad_to(e->classes, vw), *e->bf);
  if (e->blocks->empty() || (*e->blocks)[0].kind != KIND_STEM ||
      (*e->blocks).back().cout != e->head_cin) {
    PyErr_SetString(PyExc_ValueError, "the network must start with the stem-fused block 0");
    return -1;
  }
  std::vector<Buf*> all = {e->wh, e->bh, e->wf, e->bf};
  for (BlockWeights& B : *e->blocks)
    for (Buf* b : {&B.we, &B.be, &B.ws, &B.bs, &B.wd, &B.bd, &B.wp, &B.bp}) all.push_back(b);
  e->warena->adopt(all);
  return 0;
}

// run(x [N][3][H][W] float32, out [N][classes] float32, profile=0, handicap_us=0): with
// `profile` 1 (batch 1), the seconds from the start to the end of each block and of head +
// classifier; with 2, per thread a flat list of [work seconds, barrier wait seconds,
// row-slices computed] per layer (bench/native_trace.py), the last thread handicapped by
// `handicap_us` per layer (run_image).
PyObject* engine_run(Engine* e, PyObject* args) {
  PyObject *xo, *oo;
  int profile = 0, handicap_us = 0;
  if (!PyArg_ParseTuple(args, "OO|ii", &xo, &oo, &profile, &handicap_us)) return nullptr;
  View x, o;
  if (!x.get(xo, false, "the input") || !o.get(oo, true, "the output")) return nullptr;
  if (x.b.ndim != 4 || x.b.shape[1] != 3)
    return fail("the input must be an (N, 3, H, W) batch");
  const int N = (int)x.b.shape[0], H = (int)x.b.shape[2], W = (int)x.b.shape[3];
  if (N < 1 || H < 1 || W < 1) return fail("the input is empty");
  if (o.n() != (Py_ssize_t)N * e->classes) return fail("the output must be (N, classes)");
  bool expected = false;
  if (!e->busy->compare_exchange_strong(expected, true))
    return fail("this NativeEngine is running in another thread: use one engine per thread");
  bool oom = false;
  if (profile && N != 1) {
    e->busy->store(false);
    return fail("profile runs batch 1");
  }
  std::vector<double> times(e->blocks->size() + 1, 0.0);
  double* tp = profile ? times.data() : nullptr;
  const size_t tstride = TRACE_FIELDS * times.size();
  if (profile != 2) handicap_us = 0;
  std::vector<double> trace(profile == 2 ? tstride * e->threads : 0, 0.0);
  Py_BEGIN_ALLOW_THREADS;
  if (e->pool && e->pool->fork_gen != g_fork_generation.load()) e->pool = nullptr;  // forked
  if (!e->pool) e->pool = new Pool(e->threads);
  plan_shape(e, H, W);
  reset_shares(e, 0);  // the first split image's first layer (run_image readies the rest)
  const int T = e->threads;
  const int solo_imgs = T > 1 ? N / T * T : N;  // one image per thread
  const int lanes = T > 1 && N >= T ? T : 1;
  for (int l = 0; l < lanes && !oom; ++l)
    oom = !(*e->lanes_a)[l].reserve(e->act_a) || !(*e->lanes_b)[l].reserve(e->act_b);
  for (int t = 0; t < T && !oom; ++t)
    oom = !(*e->scratch)[t].reserve(e->scratch_floats);
  if (!oom) {
    const float* img = x.f();
    float* logits = static_cast<float*>(o.b.buf);
    const long img_floats = 3L * H * W;
    std::atomic<int> next_image{0};
    e->pool->run([&](int tid) {
      if (T > 1 && N >= T) {
        // Each thread takes the next image when it finishes one (not every T-th image): on a
        // shared machine one thread may get less of its core, and a fixed split would leave
        // the other waiting for it at the end of the batch.
        for (int i; (i = next_image.fetch_add(1, std::memory_order_relaxed)) < solo_imgs;)
          run_image(e, img + i * img_floats, logits + (long)i * e->classes, tid, true, tid,
                    false);
        e->pool->barrier();
      } else if (T == 1) {
        for (int i = 0; i < N; ++i)
          run_image(e, img + i * img_floats, logits + (long)i * e->classes, 0, true, 0, false,
                    tp, trace.empty() ? nullptr : trace.data());
        return;
      }
      for (int i = (N >= T ? solo_imgs : 0); i < N; ++i)
        run_image(e, img + i * img_floats, logits + (long)i * e->classes, tid, false, 0,
                  i + 1 < N, tid == 0 ? tp : nullptr,
                  trace.empty() ? nullptr : trace.data() + tid * tstride, handicap_us);
    });
  }
  Py_END_ALLOW_THREADS;
  e->busy->store(false);
  if (oom) return PyErr_NoMemory();
  if (!profile) Py_RETURN_NONE;
  if (profile == 2) {  // per thread: [work, wait, row-slices] per layer, flat
    PyObject* out = PyList_New(e->threads);
    for (int t = 0; t < e->threads; ++t) {
      PyObject* row = PyList_New((Py_ssize_t)tstride);
      for (size_t j = 0; j < tstride; ++j)
        PyList_SET_ITEM(row, (Py_ssize_t)j, PyFloat_FromDouble(trace[t * tstride + j]));
      PyList_SET_ITEM(out, t, row);
    }
    return out;
  }
  PyObject* out = PyList_New((Py_ssize_t)times.size());
  for (size_t i = 0; i < times.size(); ++i)
    PyList_SET_ITEM(out, (Py_ssize_t)i, PyFloat_FromDouble(times[i]));
  return out;
}

// The engine's working memory now allocated: activations (ping-pong bottleneck buffers per
// lane) and per-thread scratch (expansion ring, depthwise row, head rows, partial logits).
// Weights are not counted (as in memory.py's schedules).
PyObject* engine_memory(Engine* e, PyObject*) {
  size_t total = 0;
  for (auto* v : {e->lanes_a, e->lanes_b, e->scratch})
    for (const Buf& b : *v) total += b.bytes();
  return PyLong_FromSize_t(total);
}

PyObject* engine_isa(Engine* e, PyObject*) { return PyUnicode_FromString(e->k->name); }

PyMethodDef engine_methods[] = {
    {"run", (PyCFunction)engine_run, METH_VARARGS, "run(x, out): logits of x into out"},
    {"memory_bytes", (PyCFunction)engine_memory, METH_NOARGS, "working memory allocated"},
    {"isa", (PyCFunction)engine_isa, METH_NOARGS, "the ISA the kernels run"},
    {nullptr, nullptr, 0, nullptr}};

PyTypeObject EngineType = {PyVarObject_HEAD_INIT(nullptr, 0)};

PyObject* cpu_isas(PyObject*, PyObject*) {
  PyObject* out = PyList_New(0);
  for (const Kernels& k : KERNELS) {
    if (!isa_supported(k.name)) continue;
    PyObject* s = PyUnicode_FromString(k.name);
    PyList_Append(out, s);
    Py_DECREF(s);
  }
  return out;
}

// The int8 engine: its own Python type, sharing the pool and helpers above.
#include "_int8.inc"

PyMethodDef module_methods[] = {
    {"cpu_isas", cpu_isas, METH_NOARGS, "ISAs this CPU runs, widest first"},
    {"int8_isas", int8_isas, METH_NOARGS, "int8 ISAs this CPU runs, widest first"},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_engine",
                          "mobilenetv2's native fused inverted-residual engine (fp32)", -1,
                          module_methods};

}  // namespace

PyMODINIT_FUNC PyInit__engine(void) {
  EngineType.tp_name = "mobilenetv2.runtime.native._engine.Engine";
  EngineType.tp_basicsize = sizeof(Engine);
  EngineType.tp_flags = Py_TPFLAGS_DEFAULT;
  EngineType.tp_new = PyType_GenericNew;
  EngineType.tp_init = (initproc)engine_init;
  EngineType.tp_dealloc = (destructor)engine_dealloc;
  EngineType.tp_methods = engine_methods;
  if (PyType_Ready(&EngineType) < 0) return nullptr;
  static bool atfork = false;
  if (!atfork) {
    pthread_atfork(nullptr, nullptr, on_fork_child);
    atfork = true;
  }
  PyObject* m = PyModule_Create(&module_def);
  if (!m) return nullptr;
  Py_INCREF(&EngineType);
  if (PyModule_AddObject(m, "Engine", reinterpret_cast<PyObject*>(&EngineType)) < 0) {
    Py_DECREF(&EngineType);
    Py_DECREF(m);
    return nullptr;
  }
  if (int8_register(m) < 0) {
    Py_DECREF(m);
    return nullptr;
  }
  return m;
}
