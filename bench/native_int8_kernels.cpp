// The native int8 engine's kernels alone (AVX2: VPMADDUBSW + VPMADDWD), on cache-resident
// data, single-threaded: how close each gets to this core's measured int8 peak (issue 13's
// per-kernel view, as bench/native_kernels.cpp is for fp32). Shapes of width 1.0, 224x224.
//
//   g++ -std=c++17 -O3 -Wno-psabi bench/native_int8_kernels.cpp -o /tmp/nk8 && /tmp/nk8
//
// The peak is measured: 12 independent VPMADDUBSW -> VPMADDWD -> VPADDD chains (32 MACs per
// chain step, the 1x1 kernel's inner step). Each figure is the best of 30 timed repetitions;
// compare figures within one run (the clock moves between runs on a shared machine).
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <algorithm>

#include "../src/mobilenetv2/runtime/native/_plans_int8.h"
#include "_harness.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace i8_avx2 {
#define I8_DOT 0
#include "../src/mobilenetv2/runtime/native/_kernels_int8.inc"
#undef I8_DOT
}  // namespace i8_avx2
#pragma GCC pop_options
template <class T>
T* filled(long n, int mod) {
  T* p = (T*)aligned_alloc(64, ((n * sizeof(T) + 63) / 64) * 64 + 64);
  for (long i = 0; i < n; i++) p[i] = (T)(i % mod);
  return p;
}
__attribute__((target("avx2"))) static double peak() {
  __m256i a[12];
  for (int i = 0; i < 12; i++) a[i] = _mm256_set1_epi32(i);
  __m256i x = _mm256_set1_epi8(3), w = _mm256_set1_epi8(2), one = _mm256_set1_epi16(1);
  long n = 5000000;
  double t = now();
  for (long k = 0; k < n; k++) {
#pragma GCC unroll 12
    for (int i = 0; i < 12; i++)
      a[i] = _mm256_add_epi32(a[i], _mm256_madd_epi16(_mm256_maddubs_epi16(x, w), one));
    __asm__ volatile("" : "+x"(x));  // keeps the products in the loop (else hoisted)
  }
  double dt = now() - t;
  volatile int sink = 0;  // the accumulators are results: the loop cannot be dropped
  for (int i = 0; i < 12; i++) sink = sink + _mm256_extract_epi32(a[i], 0);
  return n * 12.0 * 32 / dt;
}
int main() {
  const double pk = peak();
  printf(
      "int8 AVX2 (maddubs+madd+add), 1 thread: measured peak %.1f GMAC/s\n\n| kernel | shape | "
      "GMAC/s | of peak |\n|---|---|---:|---:|\n",
      pk / 1e9);
  Requant rq{245.f, 10};
  auto row = [&](const char* kernel, const char* shape, double macs, double sec) {
    printf("| %s | %s | %.1f | %.0f%% |\n", kernel, shape, macs / sec / 1e9, 100 * macs / sec / pk);
  };
  struct Pw {
    const char* what;
    int m, k, n;
  };
  Pw pws[] = {{"expand 112 px (block 1)", 112, 16, 96},
              {"project 56 px 96->24", 56, 96, 32},
              {"expand 56 px (block 2)", 56, 32, 144},
              {"project 56 px 144->24", 56, 144, 32},
              {"expand 28 px (blocks 4-5)", 28, 32, 192},
              {"project 28 px 192->32", 28, 192, 32},
              {"expand 196 px 14x14 (blocks 7-9)", 196, 64, 384},
              {"project 196 px 384->64", 196, 384, 64},
              {"expand 49 px 7x7 (blocks 14-15)", 49, 160, 960},
              {"project 49 px 960->160", 49, 960, 160},
              {"head 49 px 320->1280", 49, 320, 1280}};
  for (auto& s : pws) {
    uint8_t* A = filled<uint8_t>((long)s.m * s.k, 200);
    int8_t* B = filled<int8_t>((long)s.k * s.n, 60);
    uint8_t* C = filled<uint8_t>((long)s.m * s.n, 3);
    int32_t* bias = filled<int32_t>(s.n, 11);
    float* mult = (float*)aligned_alloc(64, s.n * 4 + 64);
    for (int i = 0; i < s.n; i++) mult[i] = 1e-4f;
    double macs = (double)s.m * s.k * s.n;
    double sec = best_of([&] { i8_avx2::qgemm(A, s.k, s.m, s.k, B, s.n, C, s.n, bias, mult, rq); },
                         (long)(2e6 / macs) + 1);
    char shape[64];
    snprintf(shape, 64, "M %d, K %d, N %d", s.m, s.k, s.n);
    row(s.what, shape, macs, sec);
  }
  struct Dw {
    const char* what;
    int win, stride, cs;
  };
  Dw dws[] = {{"depthwise 112 px s1 (block 0)", 112, 1, 32},
              {"depthwise 112->56 s2 (block 1)", 112, 2, 96},
              {"depthwise 56 px s1 (block 2)", 56, 1, 144},
              {"depthwise 28 px s1 (blocks 4-5)", 28, 1, 192},
              {"depthwise 14 px s1 (blocks 7-12)", 14, 1, 384},
              {"depthwise 7 px s1 (blocks 14-16)", 7, 1, 960}};
  for (auto& s : dws) {
    int wout = (s.win - 1) / s.stride + 1;
    uint8_t* in = filled<uint8_t>(3L * s.win * s.cs, 200);
    int16_t* w = filled<int16_t>(10L * s.cs, 60);
    int32_t* bias = filled<int32_t>(s.cs, 11);
    float* mult = (float*)aligned_alloc(64, s.cs * 4 + 64);
    for (int i = 0; i < s.cs; i++) mult[i] = 1e-4f;
    uint8_t* out = filled<uint8_t>((long)wout * s.cs, 2);
    uint8_t* z = filled<uint8_t>(s.cs, 1);
    DwPlan p{3, s.win, 1, wout, s.cs, s.stride, 1, 1, 1, w, bias, mult, rq};
    const uint8_t* rows[3] = {in, in + (long)s.win * s.cs, in + 2L * s.win * s.cs};
    double macs = 9.0 * wout * s.cs;
    double sec = best_of([&] { i8_avx2::dw_row(p, rows, out, z); }, (long)(2e6 / macs) + 1);
    char shape[64];
    snprintf(shape, 64, "%d channels", s.cs);
    row(s.what, shape, macs, sec);
  }
  {
    uint8_t* img = filled<uint8_t>(3L * 224 * 224, 200);
    int8_t* w = filled<int8_t>(28L * 32, 60);
    int32_t* bias = filled<int32_t>(32, 11);
    float* mult = (float*)aligned_alloc(64, 32 * 4 + 64);
    for (int i = 0; i < 32; i++) mult[i] = 1e-4f;
    uint8_t* out = filled<uint8_t>(112L * 32, 2);
    uint8_t* col = filled<uint8_t>(112L * 28, 1);
    StemPlan p{224, 224, 112, 112, 32, 2, 1, 1, 1, 10, w, bias, mult, rq};
    int y = 0;
    double macs = 27.0 * 112 * 32;
    double sec =
        best_of([&] { i8_avx2::stem_row(p, img, (y = (y + 1) % 110) + 1, out, col); }, 2000);
    row("stem 3x3 s2, one 112-px row", "3 -> 32", macs, sec);
  }
}
