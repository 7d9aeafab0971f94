// The native engine's kernels alone, on cache-resident data: how close each gets to this
// core's measured FMA peak (issue 13: the per-kernel view under bench/native_blocks.py's
// per-block one). Single-threaded, AVX2 + FMA build of _kernels.inc, the shapes the engine
// runs at width 1.0, 224x224 (its channel-slice widths included).
//
//   g++ -std=c++17 -O3 -ffp-contract=fast -Wno-psabi bench/native_kernels.cpp -o /tmp/nk
//   /tmp/nk
//
// The peak is measured, not looked up: 12 independent FMA chains on registers (the clock the
// core really runs at, turbo included). Each figure is the best of 30 timed repetitions, so
// outside load mostly drops out; compare figures within one run.
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <algorithm>

#include "../src/mobilenetv2/runtime/native/_plans.h"
#include "_harness.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace isa_avx2 {
#define VW 8
#include "../src/mobilenetv2/runtime/native/_kernels.inc"
#undef VW

// FLOP/s of 12 independent FMA chains (2 FLOPs x 8 lanes each)
static double fma_peak() {
  __m256 a[12];
  for (int i = 0; i < 12; ++i) a[i] = _mm256_set1_ps(1e-3f * i);
  const __m256 m = _mm256_set1_ps(0.9999f), c = _mm256_set1_ps(1e-4f);
  const long n = 20000000;
  timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (long k = 0; k < n; ++k)
#pragma GCC unroll 12
    for (int i = 0; i < 12; ++i) a[i] = _mm256_fmadd_ps(a[i], m, c);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  float keep = 0;
  for (int i = 0; i < 12; ++i) keep += a[i][0];
  if (keep == 12345.f) puts("");  // keeps the chains alive
  return n * 12.0 * 16 / ((t1.tv_sec - t0.tv_sec) + 1e-9 * (t1.tv_nsec - t0.tv_nsec));
}
}  // namespace isa_avx2
#pragma GCC pop_options

static float* filled(long n, int mod) {
  float* p = static_cast<float*>(aligned_alloc(64, ((n * 4 + 63) / 64) * 64));
  for (long i = 0; i < n; ++i) p[i] = 1e-3f * (i % mod);
  return p;
}

// The head (1x1 320 -> 1280 + ReLU6 on the 7x7 map, pooled) and the 1280 x 1000 classifier,
// as run_head runs them for a whole image on one thread, and their two parts alone: whether
// the classifier's 5 MB stream hides under the head's FMAs, with the weights in L3 (the
// previous call's) or in DRAM (48 MB read in between, as a forward's ~16 MB of weights and
// activations do on a VM whose L3 share holds 14-19 MB). Medians of 40 calls, each timed
// alone: the eviction between calls rules out best-of-many repetitions.
static void head_and_classifier() {
  HeadPlan p{};
  p.cin_p = 320, p.cout = p.cout_p = 1280, p.classes = p.classes_p = 1000, p.h = p.w = 7;
  p.wh = filled(320L * 1280, 7), p.bh = filled(1280, 3), p.wf = filled(1280L * 1000, 5);
  p.bf = filled(1000, 3);
  float* in = filled(49L * 320, 11);
  float* tmp = filled(HEAD_ROWS_VECTORS * 8, 1);
  float* part = filled(1000, 1);
  float* mean = filled(1280, 13);
  const long big = 48L << 20;
  char* evict = static_cast<char*>(malloc(big));
  memset(evict, 1, big);
  auto median_ms = [&](bool cold, auto f) {
    double t[40];
    for (double& x : t) {
      if (cold)
        for (long i = 0; i < big; i += 64) evict[i] += 1;
      const double t0 = now();
      f();
      x = now() - t0;
    }
    std::sort(t, t + 40);
    return 1e3 * t[20];
  };
  auto whole = [&] { isa_avx2::run_head(p, in, 0, 1280, tmp, part, p.bf, -1); };
  auto conv = [&] {  // the head's 1x1 convolutions alone, 16 channels at a time as run_head
    for (int c = 0; c < 1280; c += 16)
      isa_avx2::gemm(in, 320, 49, 320, p.wh + c * 320L, 320L * 8, 16, tmp, 16, p.bh + c, true);
  };
  auto fc = [&] {  // the classifier alone, with run_head's prefetch of the next columns
    for (int c = 0; c < 1280; c += 16)
      isa_avx2::fc_chunk(p, mean + c, c, 16, part, c + 16, c + 16 < 1280 ? 16 : 0);
  };
  puts("\nhead + classifier of one image, 1 thread (ms, median of 40):\n");
  puts("| weights in | head conv alone | classifier alone | both (run_head) | both - sum |");
  puts("|---|---:|---:|---:|---:|");
  for (bool cold : {false, true}) {
    const double a = median_ms(cold, conv), b = median_ms(cold, fc), w = median_ms(cold, whole);
    printf("| %s | %.3f | %.3f | %.3f | %+.3f |\n", cold ? "DRAM" : "L3 (last call's)", a, b, w,
           w - a - b);
  }
  free(evict), free(in), free(tmp), free(part), free(mean);
}

int main() {
  __builtin_cpu_init();
  if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) {
    puts("this CPU has no AVX2 + FMA: the harness runs the AVX2 kernels only");
    return 0;
  }
  const double peak = isa_avx2::fma_peak();
  printf("AVX2 + FMA, 1 thread; measured FMA peak %.1f GFLOP/s\n\n", peak / 1e9);
  puts("| kernel | shape | GFLOP/s | of peak |");
  puts("|---|---|---:|---:|");
  auto row = [&](const char* kernel, const char* shape, double flops, double sec) {
    printf("| %s | %s | %.1f | %.0f%% |\n", kernel, shape, flops / sec / 1e9,
           100.0 * flops / sec / peak);
  };
  // 1x1 convolutions: (pixels, K, N) of the engine's expansion (a row of input pixels into one
  // channel slice, + ReLU6) and projection (a row of depthwise outputs, one slice, accumulated)
  struct Pw { const char* what; int m, k, n; bool expand; };
  const Pw pws[] = {
      {"expand 112 px, slice 16 (block 1)", 112, 16, 16, true},
      {"project 56 px, slice 16 -> 24 (block 1)", 56, 16, 24, false},
      {"expand 56 px, slice 48 (block 2)", 56, 24, 48, true},
      {"project 56 px, slice 48 -> 24 (block 2)", 56, 48, 24, false},
      {"expand 28 px, slice 96 (blocks 4-5)", 28, 32, 96, true},
      {"project 28 px, slice 96 -> 32 (blocks 4-5)", 28, 96, 32, false},
      {"expand 14 px, slice 192 (blocks 11-12)", 14, 96, 192, true},
      {"project 14 px, slice 192 -> 96 (blocks 11-12)", 14, 192, 96, false},
      {"expand 49 px, slice 96 (blocks 14-15, map mode)", 49, 160, 96, true},
      {"project 49 px, slice 96 -> 160 (blocks 14-15)", 49, 96, 160, false},
      {"head 49 px, 320 -> 16 channels", 49, 320, 16, true},
  };
  for (const Pw& s : pws) {
    float* A = filled((long)s.m * s.k, 7);
    float* B = filled((long)s.k * s.n, 5);
    float* C = filled((long)s.m * s.n, 3);
    float* bias = filled(s.n, 11);
    const double flops = 2.0 * s.m * s.k * s.n;
    const double sec = best_of([&] {
      isa_avx2::gemm(A, s.k, s.m, s.k, B, (long)s.k * 8, s.n, C, s.n,
                     s.expand ? bias : nullptr, s.expand);
    }, (long)(2e7 / flops) + 1);
    char shape[64];
    snprintf(shape, sizeof shape, "M %d, K %d, N %d", s.m, s.k, s.n);
    row(s.what, shape, flops, sec);
    free(A), free(B), free(C), free(bias);
  }
  // depthwise 3x3 + ReLU6, one output row of one channel slice (symmetric padding)
  struct Dw { const char* what; int win, stride, cs; };
  const Dw dws[] = {
      {"depthwise 112 px, stride 1 (block 0)", 112, 1, 32},
      {"depthwise 112 -> 56 px, stride 2 (block 1)", 112, 2, 16},
      {"depthwise 56 px, stride 1 (block 2)", 56, 1, 48},
      {"depthwise 28 px, stride 1 (blocks 4-5)", 28, 1, 96},
      {"depthwise 14 px, stride 1 (blocks 7-12)", 14, 1, 192},
      {"depthwise 7 px, stride 1 (blocks 14-16)", 7, 1, 96},
  };
  for (const Dw& s : dws) {
    const int wout = (s.win - 1) / s.stride + 1;
    float* in = filled(3L * s.win * s.cs, 13);
    float* w = filled(9L * s.cs, 7);
    float* bias = filled(s.cs, 3);
    float* out = filled((long)wout * s.cs, 2);
    const float* rows[3] = {in, in + (long)s.win * s.cs, in + 2L * s.win * s.cs};
    const double flops = 2.0 * 9 * wout * s.cs;
    const double sec = best_of([&] {
      isa_avx2::dw_row(rows, s.cs, s.win, wout, s.stride, 1, 1, w, s.cs, bias, s.cs, out);
    }, (long)(5e6 / flops) + 1);
    char shape[64];
    snprintf(shape, sizeof shape, "%d channels", s.cs);
    row(s.what, shape, flops, sec);
    free(in), free(w), free(bias), free(out);
  }
  // the stem: one 112-pixel output row, 32 channels, from a 224x224 NCHW image
  {
    float* img = filled(3L * 224 * 224, 17);
    float* w = filled(27L * 32, 7);
    float* bias = filled(32, 3);
    float* out = filled(112L * 32, 2);
    int y = 0;
    const double flops = 2.0 * 27 * 112 * 32;
    const double sec = best_of([&] {
      isa_avx2::stem_row(img, 224, 224, (y = (y + 2) % 220) - 1, 2, 1, 1, 112, w, bias, 32, out);
    }, 2000);
    row("stem 3x3 stride 2, one 112-pixel row", "3 -> 32 channels", flops, sec);
    free(img), free(w), free(bias), free(out);
  }
  head_and_classifier();
  return 0;
}
