// The run-time plans the kernels (_kernels.inc) read: shared by _engine.cpp and the kernel
// harness bench/native_kernels.cpp, so both compile the kernels against one definition.
#pragma once

namespace {

constexpr int KIND_STEM = 0, KIND_EXPAND = 1, KIND_DIRECT = 2;

inline int pad_to(int n, int m) { return (n + m - 1) / m * m; }

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

}  // namespace
