// Timing helpers shared by the kernel harnesses (bench/native_kernels.cpp, fp32;
// bench/native_int8_kernels.cpp, int8).
#pragma once

#include <time.h>

#include <algorithm>

static double now() {
  timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + 1e-9 * t.tv_nsec;
}

// Best seconds per call of f over 30 repetitions of `reps` calls: outside load on a shared
// machine mostly drops out of the minimum.
template <class F>
static double best_of(F f, long reps) {
  double best = 1e30;
  for (int t = 0; t < 30; ++t) {
    const double t0 = now();
    for (long r = 0; r < reps; ++r) f();
    best = std::min(best, (now() - t0) / reps);
  }
  return best;
}
