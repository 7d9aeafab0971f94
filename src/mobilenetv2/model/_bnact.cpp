// Fused training BatchNorm (+ ReLU6) for channels_last fp32 tensors (issue 14), and the
// depthwise 3x3 convolution of the same training step (kernels in _dwconv.inc).
//
// Why: in a MobileNetV2 training step on a 2-core CPU, BatchNorm forward/backward and the
// ReLU6 backward are separate memory-bound passes over tensors up to 154 MB (profile in
// docs/BENCHMARKS.md). Fused, a layer costs: forward = one read of x for the batch statistics
// + one read/write for y; backward = one read of x and dy for the two per-channel sums + one
// read of x, dy and write of dx. The ReLU6 mask is recomputed in the backward from x with the
// same inline code as the forward (z = fma(x, a, b)), so it is bit-identical to the forward's.
//
// Layout: x is (M, C) row-major, M = N*H*W (channels_last / NHWC). Plain CPython C API; the
// tensors arrive as data pointers (torch's data_ptr()) with their sizes, so the build needs
// no torch headers (setup.py). The GIL is released while the kernels run.
//
// Statistics: per thread, shifted sums (x - x[0, c]) accumulated in float over blocks of
// BLOCK rows, then added into double partials; the shift keeps E[x^2] - E[x]^2 from
// cancelling when |mean| >> std, the blocks bound the float error to BLOCK terms.

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <dlfcn.h>
#include <link.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <string.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#define BNACT_X86 1
#endif

#include "../runtime/native/_pool.h"  // the thread pool (shared with the native engine)

namespace {

constexpr long BLOCK = 32;  // rows summed in float before they join the double partials

int g_spin = 2000;  // pause iterations a pool worker spins before sleeping (set_spin)

Pool* g_pool = nullptr;
std::mutex g_pool_mu;  // one fused call at a time (the GIL is released while it runs)

// torch's own OpenMP team. Why: after each of its parallel ops, torch's OpenMP workers spin
// for a while; a thread of our own pool then shares a core with a spinning worker (2 cores:
// measured 15% slower per step than handing the work to the spinning workers themselves).
// The libgomp (or libiomp5, which exports the same GOMP_ entry points) that torch loaded is
// found among the loaded objects and its GOMP_parallel runs our job on torch's team.
using GompParallel = void (*)(void (*)(void*), void*, unsigned, unsigned);
using OmpInt = int (*)();
GompParallel g_gomp_parallel = nullptr;
OmpInt g_omp_thread_num = nullptr, g_omp_num_threads = nullptr;
bool g_use_omp = true;  // set_pool("own") turns it off (A/B)

int find_omp(struct dl_phdr_info* info, size_t, void* out) {
  const char* name = info->dlpi_name;
  if (name && (strstr(name, "libgomp") || strstr(name, "libiomp"))) {
    *static_cast<const char**>(out) = name;
    return 1;
  }
  return 0;
}

void load_omp() {
  const char* name = nullptr;
  dl_iterate_phdr(find_omp, &name);
  if (!name) return;
  void* h = dlopen(name, RTLD_NOW | RTLD_NOLOAD);  // only one already loaded (torch's)
  if (!h) return;
  g_gomp_parallel = reinterpret_cast<GompParallel>(dlsym(h, "GOMP_parallel"));
  g_omp_thread_num = reinterpret_cast<OmpInt>(dlsym(h, "omp_get_thread_num"));
  g_omp_num_threads = reinterpret_cast<OmpInt>(dlsym(h, "omp_get_num_threads"));
  if (!g_omp_thread_num || !g_omp_num_threads) g_gomp_parallel = nullptr;
}

struct OmpJob {
  const std::function<void(int)>* fn;
  int threads;
};

void omp_trampoline(void* p) {
  // the team may be smaller than asked: each member takes every nt-th share
  const OmpJob* job = static_cast<const OmpJob*>(p);
  const int tid = g_omp_thread_num(), nt = std::max(1, g_omp_num_threads());
  for (int t = tid; t < job->threads; t += nt) (*job->fn)(t);
}

void parallel(int threads, const std::function<void(int)>& fn) {
  if (threads <= 1) {
    fn(0);
    return;
  }
  if (g_use_omp && g_gomp_parallel) {
    OmpJob job{&fn, threads};
    g_gomp_parallel(omp_trampoline, &job, (unsigned)threads, 0);
    return;
  }
  if (!g_pool || g_pool->threads != threads ||
      g_pool->fork_gen != g_fork_generation.load()) {
    if (g_pool && g_pool->fork_gen == g_fork_generation.load()) delete g_pool;
    g_pool = new Pool(threads);  // a forked child's old pool is abandoned (_pool.h)
  }
  g_pool->spin = g_spin;
  g_pool->run(fn);
}

// The rows are cut into chunks of about CHUNK floats that the threads take in turn (an atomic
// counter): on a shared machine a thread that waits for its core holds back only the chunk it
// is in, not a fixed half of the tensor. The chunks depend on the shape alone and their sums
// are added in chunk order, so results do not depend on the thread count or timing.
constexpr long CHUNK = 1L << 18;

long chunks(long M, long C) { return std::max(1L, std::min(256L, M * C / CHUNK)); }

// fn(chunk, r0, r1): chunk `chunk` of `n` over the rows [r0, r1) of M
void for_chunks(int threads, long M, long n, const std::function<void(long, long, long)>& fn) {
  const long per = (M + n - 1) / n;
  std::atomic<long> next{0};
  parallel(threads, [&](int) {
    for (long i; (i = next.fetch_add(1, std::memory_order_relaxed)) < n;) {
      const long r0 = std::min(M, per * i);
      fn(i, r0, std::min(M, r0 + per));
    }
  });
}

// Entry j of the chunks' double partials ([chunk][stride]), added in chunk order.
double sum_chunks(const std::vector<double>& part, long nch, long stride, long j) {
  double s = 0;
  for (long t = 0; t < nch; ++t) s += part[(size_t)t * stride + j];
  return s;
}

// The per-channel sums of the chunks' double partials ([chunk][2][C]), added in chunk order.
void sum_partials(const std::vector<double>& part, long nch, long C, long c, double* s1,
                  double* s2) {
  *s1 = sum_chunks(part, nch, 2 * C, c);
  *s2 = sum_chunks(part, nch, 2 * C, C + c);
}

// ------------------------------------------------------------------ depthwise 3x3 geometry
// x (N, H, W, C) -> y (N, OH, OW, C), stride s, zero padding p on every side, dilation d.
struct DwShape {
  long N, H, W, C, OH, OW, s, p, d;
};

// The taps of output pixel (oh, ow) that fall inside x: offsets (floats) from the image's
// first pixel and tap indices kh * 3 + kw, in (kh, kw) order. Returns their count.
inline int dw_out_taps(const DwShape& g, long oh, long ow, long* off, int* tap) {
  int k = 0;
  for (int kh = 0; kh < 3; ++kh) {
    const long ih = oh * g.s - g.p + kh * g.d;
    if (ih < 0 || ih >= g.H) continue;
    for (int kw = 0; kw < 3; ++kw) {
      const long iw = ow * g.s - g.p + kw * g.d;
      if (iw < 0 || iw >= g.W) continue;
      off[k] = (ih * g.W + iw) * g.C;
      tap[k++] = kh * 3 + kw;
    }
  }
  return k;
}

// The output pixels whose tap reads input pixel (ih, iw): offsets from dy's image and taps.
inline int dw_in_taps(const DwShape& g, long ih, long iw, long* off, int* tap) {
  int k = 0;
  for (int kh = 0; kh < 3; ++kh) {
    const long th = ih + g.p - kh * g.d;
    if (th < 0 || th % g.s) continue;
    const long oh = th / g.s;
    if (oh >= g.OH) continue;
    for (int kw = 0; kw < 3; ++kw) {
      const long tw = iw + g.p - kw * g.d;
      if (tw < 0 || tw % g.s) continue;
      const long ow = tw / g.s;
      if (ow >= g.OW) continue;
      off[k] = (oh * g.OW + ow) * g.C;
      tap[k++] = kh * 3 + kw;
    }
  }
  return k;
}

// ------------------------------------------------------------------ kernels
// Each kernel exists as AVX2+FMA and as portable scalar code; `g_k` (the table after them)
// picks at run time.
// The ReLU6 mask comes from z = fmaf(x, a, b) in both the forward and the backward of the
// same ISA path (the scalar tails of the AVX2 path use fmaf too), so they agree bit for bit.

// stats: rows [r0, r1) of x (M, C); adds sum(x - shift) and sum((x - shift)^2) per channel
// into d1, d2 (double). f1, f2: float scratch of C (+ padding) entries.
void stats_scalar(const float* x, long r0, long r1, long C, const float* shift, float* f1,
                  float* f2, double* d1, double* d2) {
  for (long b = r0; b < r1; b += BLOCK) {
    const long e = std::min(r1, b + BLOCK);
    for (long c = 0; c < C; ++c) f1[c] = f2[c] = 0.f;
    for (long r = b; r < e; ++r) {
      const float* row = x + r * C;
      for (long c = 0; c < C; ++c) {
        const float v = row[c] - shift[c];
        f1[c] += v;
        f2[c] += v * v;
      }
    }
    for (long c = 0; c < C; ++c) d1[c] += f1[c], d2[c] += f2[c];
  }
}

// out: rows [r0, r1) of y = clamp(fma(x, a, b), 0, 6) (no clamp when `clamp` is false)
void norm_scalar(const float* x, float* y, long r0, long r1, long C, const float* a,
                 const float* b, bool clamp) {
  for (long r = r0; r < r1; ++r) {
    const float* xr = x + r * C;
    float* yr = y + r * C;
    for (long c = 0; c < C; ++c) {
      float z = fmaf(xr[c], a[c], b[c]);
      if (clamp) z = std::min(std::max(z, 0.f), 6.f);
      yr[c] = z;
    }
  }
}

// backward sums: d1 += sum(dz), d2 += sum(dz * (x - mean)), dz = dy where 0 < z < 6
void bsum_scalar(const float* x, const float* dy, long r0, long r1, long C, const float* a,
                 const float* b, const float* mean, bool clamp, float* f1, float* f2,
                 double* d1, double* d2) {
  for (long bl = r0; bl < r1; bl += BLOCK) {
    const long e = std::min(r1, bl + BLOCK);
    for (long c = 0; c < C; ++c) f1[c] = f2[c] = 0.f;
    for (long r = bl; r < e; ++r) {
      const float* xr = x + r * C;
      const float* gr = dy + r * C;
      for (long c = 0; c < C; ++c) {
        float g = gr[c];
        if (clamp) {
          const float z = fmaf(xr[c], a[c], b[c]);
          if (!(z > 0.f && z < 6.f)) g = 0.f;
        }
        f1[c] += g;
        f2[c] += g * (xr[c] - mean[c]);
      }
    }
    for (long c = 0; c < C; ++c) d1[c] += f1[c], d2[c] += f2[c];
  }
}

// dx = k * dz + p * (x - mean) + q
void bdx_scalar(const float* x, const float* dy, float* dx, long r0, long r1, long C,
                const float* a, const float* b, const float* mean, const float* k,
                const float* p, const float* q, bool clamp) {
  for (long r = r0; r < r1; ++r) {
    const float* xr = x + r * C;
    const float* gr = dy + r * C;
    float* o = dx + r * C;
    for (long c = 0; c < C; ++c) {
      float g = gr[c];
      if (clamp) {
        const float z = fmaf(xr[c], a[c], b[c]);
        if (!(z > 0.f && z < 6.f)) g = 0.f;
      }
      o[c] = fmaf(xr[c] - mean[c], p[c], fmaf(g, k[c], q[c]));
    }
  }
}

// the depthwise kernels: the same source at 8 lanes (AVX2+FMA) and 4 (the baseline)
#if defined(BNACT_X86)
namespace dw_avx2 {
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define VW 8
#include "_dwconv.inc"
#undef VW
#pragma GCC pop_options
}  // namespace dw_avx2
#endif
namespace dw_generic {
#define VW 4
#include "_dwconv.inc"
#undef VW
}  // namespace dw_generic

#if defined(BNACT_X86)
#define AVX2 __attribute__((target("avx2,fma")))

AVX2 void stats_avx2(const float* x, long r0, long r1, long C, const float* shift, float* f1,
                     float* f2, double* d1, double* d2) {
  const long C8 = C / 8 * 8;
  for (long b = r0; b < r1; b += BLOCK) {
    const long e = std::min(r1, b + BLOCK);
    for (long c = 0; c < C; ++c) f1[c] = f2[c] = 0.f;
    for (long r = b; r < e; ++r) {
      const float* row = x + r * C;
      long c = 0;
      for (; c < C8; c += 8) {
        const __m256 v = _mm256_sub_ps(_mm256_loadu_ps(row + c), _mm256_loadu_ps(shift + c));
        _mm256_storeu_ps(f1 + c, _mm256_add_ps(_mm256_loadu_ps(f1 + c), v));
        _mm256_storeu_ps(f2 + c, _mm256_fmadd_ps(v, v, _mm256_loadu_ps(f2 + c)));
      }
      for (; c < C; ++c) {
        const float v = row[c] - shift[c];
        f1[c] += v;
        f2[c] = fmaf(v, v, f2[c]);
      }
    }
    for (long c = 0; c < C; ++c) d1[c] += f1[c], d2[c] += f2[c];
  }
}

AVX2 void norm_avx2(const float* x, float* y, long r0, long r1, long C, const float* a,
                    const float* b, bool clamp) {
  const long C8 = C / 8 * 8;
  const __m256 lo = _mm256_setzero_ps(), hi = _mm256_set1_ps(6.f);
  for (long r = r0; r < r1; ++r) {
    const float* xr = x + r * C;
    float* yr = y + r * C;
    long c = 0;
    if (clamp) {
      for (; c < C8; c += 8) {
        __m256 z = _mm256_fmadd_ps(_mm256_loadu_ps(xr + c), _mm256_loadu_ps(a + c),
                                   _mm256_loadu_ps(b + c));
        _mm256_storeu_ps(yr + c, _mm256_min_ps(_mm256_max_ps(z, lo), hi));
      }
    } else {
      for (; c < C8; c += 8)
        _mm256_storeu_ps(yr + c, _mm256_fmadd_ps(_mm256_loadu_ps(xr + c),
                                                 _mm256_loadu_ps(a + c),
                                                 _mm256_loadu_ps(b + c)));
    }
    for (; c < C; ++c) {
      float z = fmaf(xr[c], a[c], b[c]);
      if (clamp) z = std::min(std::max(z, 0.f), 6.f);
      yr[c] = z;
    }
  }
}

// the ReLU6 pass mask: all ones where 0 < z < 6 (ordered compares: NaN gives 0)
AVX2 inline __m256 pass_mask(__m256 z) {
  return _mm256_and_ps(_mm256_cmp_ps(z, _mm256_setzero_ps(), _CMP_GT_OQ),
                       _mm256_cmp_ps(z, _mm256_set1_ps(6.f), _CMP_LT_OQ));
}

AVX2 void bsum_avx2(const float* x, const float* dy, long r0, long r1, long C, const float* a,
                    const float* b, const float* mean, bool clamp, float* f1, float* f2,
                    double* d1, double* d2) {
  const long C8 = C / 8 * 8;
  for (long bl = r0; bl < r1; bl += BLOCK) {
    const long e = std::min(r1, bl + BLOCK);
    for (long c = 0; c < C; ++c) f1[c] = f2[c] = 0.f;
    for (long r = bl; r < e; ++r) {
      const float* xr = x + r * C;
      const float* gr = dy + r * C;
      long c = 0;
      for (; c < C8; c += 8) {
        const __m256 xv = _mm256_loadu_ps(xr + c);
        __m256 g = _mm256_loadu_ps(gr + c);
        if (clamp)
          g = _mm256_and_ps(g, pass_mask(_mm256_fmadd_ps(xv, _mm256_loadu_ps(a + c),
                                                         _mm256_loadu_ps(b + c))));
        _mm256_storeu_ps(f1 + c, _mm256_add_ps(_mm256_loadu_ps(f1 + c), g));
        _mm256_storeu_ps(f2 + c, _mm256_fmadd_ps(g, _mm256_sub_ps(xv, _mm256_loadu_ps(mean + c)),
                                                 _mm256_loadu_ps(f2 + c)));
      }
      for (; c < C; ++c) {
        float g = gr[c];
        if (clamp) {
          const float z = fmaf(xr[c], a[c], b[c]);
          if (!(z > 0.f && z < 6.f)) g = 0.f;
        }
        f1[c] += g;
        f2[c] = fmaf(g, xr[c] - mean[c], f2[c]);
      }
    }
    for (long c = 0; c < C; ++c) d1[c] += f1[c], d2[c] += f2[c];
  }
}

AVX2 void bdx_avx2(const float* x, const float* dy, float* dx, long r0, long r1, long C,
                   const float* a, const float* b, const float* mean, const float* k,
                   const float* p, const float* q, bool clamp) {
  const long C8 = C / 8 * 8;
  for (long r = r0; r < r1; ++r) {
    const float* xr = x + r * C;
    const float* gr = dy + r * C;
    float* o = dx + r * C;
    long c = 0;
    for (; c < C8; c += 8) {
      const __m256 xv = _mm256_loadu_ps(xr + c);
      __m256 g = _mm256_loadu_ps(gr + c);
      if (clamp)
        g = _mm256_and_ps(g, pass_mask(_mm256_fmadd_ps(xv, _mm256_loadu_ps(a + c),
                                                       _mm256_loadu_ps(b + c))));
      const __m256 t = _mm256_fmadd_ps(g, _mm256_loadu_ps(k + c), _mm256_loadu_ps(q + c));
      _mm256_storeu_ps(o + c, _mm256_fmadd_ps(_mm256_sub_ps(xv, _mm256_loadu_ps(mean + c)),
                                              _mm256_loadu_ps(p + c), t));
    }
    for (; c < C; ++c) {
      float g = gr[c];
      if (clamp) {
        const float z = fmaf(xr[c], a[c], b[c]);
        if (!(z > 0.f && z < 6.f)) g = 0.f;
      }
      o[c] = fmaf(xr[c] - mean[c], p[c], fmaf(g, k[c], q[c]));
    }
  }
}
#endif

// The kernels of one ISA; g_k points at the one in use (set at import, set_isa in tests).
struct Kernels {
  const char* name;
  decltype(&stats_scalar) stats;
  decltype(&norm_scalar) norm;
  decltype(&bsum_scalar) bsum;
  decltype(&bdx_scalar) bdx;
  decltype(&dw_generic::dw_fwd) dw_fwd;
  decltype(&dw_generic::dw_bdx) dw_bdx;
  decltype(&dw_generic::dw_bdw) dw_bdw;
};
const Kernels k_scalar{"generic",          stats_scalar,       norm_scalar,
                       bsum_scalar,        bdx_scalar,         dw_generic::dw_fwd,
                       dw_generic::dw_bdx, dw_generic::dw_bdw};
#if defined(BNACT_X86)
const Kernels k_avx2{"avx2",          stats_avx2,       norm_avx2,       bsum_avx2, bdx_avx2,
                     dw_avx2::dw_fwd, dw_avx2::dw_bdx, dw_avx2::dw_bdw};
#endif
const Kernels* g_k = &k_scalar;

// z = x * a + b: a = invstd * gamma, b = beta - mean * a (torch's CPU batch_norm computes
// its output in this alpha/beta form too). Forward and backward both call this.
void coefficients(long C, const float* gamma, const float* beta, const float* mean,
                  const float* invstd, float* a, float* b) {
  for (long c = 0; c < C; ++c) {
    a[c] = invstd[c] * gamma[c];
    b[c] = (float)((double)beta[c] - (double)mean[c] * (double)a[c]);
  }
}

template <class T>
T* ptr(unsigned long long p) {
  return reinterpret_cast<T*>(static_cast<uintptr_t>(p));
}

// forward(x, y, M, C, gamma, beta, running_mean, running_var, save_mean, save_invstd,
//         factor, eps, clamp, threads): y = [ReLU6](BN(x)) with batch statistics; the running
// statistics (when running_mean != 0) become (1 - factor) * old + factor * batch (variance
// unbiased: M / (M - 1)); save_mean / save_invstd receive what the backward needs.
PyObject* forward(PyObject*, PyObject* args) {
  unsigned long long px, py, pg, pb, prm, prv, psm, psi;
  long M, C;
  double factor, eps;
  int clamp, threads;
  if (!PyArg_ParseTuple(args, "KKllKKKKKKddpi", &px, &py, &M, &C, &pg, &pb, &prm, &prv, &psm,
                        &psi, &factor, &eps, &clamp, &threads))
    return nullptr;
  if (M < 1 || C < 1 || threads < 1) {
    PyErr_SetString(PyExc_ValueError, "bad sizes");
    return nullptr;
  }
  const float* x = ptr<const float>(px);
  float* y = ptr<float>(py);
  const float *gamma = ptr<const float>(pg), *beta = ptr<const float>(pb);
  float *rm = ptr<float>(prm), *rv = ptr<float>(prv);
  float *smean = ptr<float>(psm), *sinv = ptr<float>(psi);
  const long nch = chunks(M, C);
  threads = (int)std::max(1L, std::min<long>(threads, nch));
  Py_BEGIN_ALLOW_THREADS;
  {
    std::lock_guard<std::mutex> lock(g_pool_mu);
    const long Cp = (C + 7) / 8 * 8;
    std::vector<double> part((size_t)nch * 2 * C, 0.0);
    std::vector<float> shift(x, x + C);
    for_chunks(threads, M, nch, [&](long t, long r0, long r1) {
      std::vector<float> f(2 * Cp);
      double* d = part.data() + (size_t)t * 2 * C;
      g_k->stats(x, r0, r1, C, shift.data(), f.data(), f.data() + Cp, d, d + C);
    });
    std::vector<float> a(C), b(C);
    for (long c = 0; c < C; ++c) {
      double s1, s2;
      sum_partials(part, nch, C, c, &s1, &s2);
      const double m1 = s1 / M;
      const double var = std::max(0.0, s2 / M - m1 * m1);
      const double mean = shift[c] + m1;
      smean[c] = (float)mean;
      sinv[c] = (float)(1.0 / sqrt(var + eps));
      if (rm) {
        rm[c] = (float)((1.0 - factor) * rm[c] + factor * mean);
        const double unbiased = M > 1 ? var * M / (M - 1) : var;
        rv[c] = (float)((1.0 - factor) * rv[c] + factor * unbiased);
      }
    }
    coefficients(C, gamma, beta, smean, sinv, a.data(), b.data());
    for_chunks(threads, M, nch, [&](long, long r0, long r1) {
      g_k->norm(x, y, r0, r1, C, a.data(), b.data(), clamp);
    });
  }
  Py_END_ALLOW_THREADS;
  Py_RETURN_NONE;
}

// backward(x, dy, dx, M, C, gamma, beta, save_mean, save_invstd, dgamma, dbeta, clamp,
//          threads): dx (when dx != 0), dgamma, dbeta of the forward above.
PyObject* backward(PyObject*, PyObject* args) {
  unsigned long long px, pdy, pdx, pg, pb, psm, psi, pdg, pdb;
  long M, C;
  int clamp, threads;
  if (!PyArg_ParseTuple(args, "KKKllKKKKKKpi", &px, &pdy, &pdx, &M, &C, &pg, &pb, &psm, &psi,
                        &pdg, &pdb, &clamp, &threads))
    return nullptr;
  if (M < 1 || C < 1 || threads < 1) {
    PyErr_SetString(PyExc_ValueError, "bad sizes");
    return nullptr;
  }
  const float *x = ptr<const float>(px), *dy = ptr<const float>(pdy);
  float* dx = ptr<float>(pdx);
  const float *gamma = ptr<const float>(pg), *beta = ptr<const float>(pb);
  const float *mean = ptr<const float>(psm), *invstd = ptr<const float>(psi);
  float *dgamma = ptr<float>(pdg), *dbeta = ptr<float>(pdb);
  const long nch = chunks(M, C);
  threads = (int)std::max(1L, std::min<long>(threads, nch));
  Py_BEGIN_ALLOW_THREADS;
  {
    std::lock_guard<std::mutex> lock(g_pool_mu);
    const long Cp = (C + 7) / 8 * 8;
    std::vector<float> a(C), b(C);
    coefficients(C, gamma, beta, mean, invstd, a.data(), b.data());
    std::vector<double> part((size_t)nch * 2 * C, 0.0);
    for_chunks(threads, M, nch, [&](long t, long r0, long r1) {
      std::vector<float> f(2 * Cp);
      double* d = part.data() + (size_t)t * 2 * C;
      g_k->bsum(x, dy, r0, r1, C, a.data(), b.data(), mean, clamp, f.data(), f.data() + Cp, d,
                d + C);
    });
    // dx = gamma * invstd * (dz - mean(dz) - (x - mean) * invstd^2 * mean(dz * (x - mean)))
    std::vector<float> k(C), p(C), q(C);
    for (long c = 0; c < C; ++c) {
      double s1, s2;
      sum_partials(part, nch, C, c, &s1, &s2);
      const double is = invstd[c], kk = (double)gamma[c] * is;
      dbeta[c] = (float)s1;
      dgamma[c] = (float)(s2 * is);
      k[c] = (float)kk;
      p[c] = (float)(-kk * is * is * s2 / M);
      q[c] = (float)(-kk * s1 / M);
    }
    if (dx)
      for_chunks(threads, M, nch, [&](long, long r0, long r1) {
        g_k->bdx(x, dy, dx, r0, r1, C, a.data(), b.data(), mean, k.data(), p.data(), q.data(),
                 clamp);
      });
  }
  Py_END_ALLOW_THREADS;
  Py_RETURN_NONE;
}

// depthwise weight (C, 1, 3, 3) -> (9, C): the channel is the vector dimension
std::vector<float> dw_taps_first(const float* w, long C) {
  std::vector<float> w9((size_t)9 * C);
  for (long c = 0; c < C; ++c)
    for (int t = 0; t < 9; ++t) w9[(size_t)t * C + c] = w[c * 9 + t];
  return w9;
}

bool dw_shape(PyObject* args, const char* fmt, DwShape* g, unsigned long long* p, int* threads) {
  if (!PyArg_ParseTuple(args, fmt, &p[0], &p[1], &p[2], &p[3], &p[4], &g->N, &g->H, &g->W,
                        &g->C, &g->OH, &g->OW, &g->s, &g->p, &g->d, threads))
    return false;
  if (g->N < 1 || g->H < 1 || g->W < 1 || g->C < 1 || g->OH < 1 || g->OW < 1 || g->s < 1 ||
      g->p < 0 || g->d < 1 || *threads < 1 || (g->OH - 1) * g->s + 2 * g->d >= g->H + 2 * g->p ||
      (g->OW - 1) * g->s + 2 * g->d >= g->W + 2 * g->p) {
    PyErr_SetString(PyExc_ValueError, "bad depthwise sizes");
    return false;
  }
  return true;
}

// dw_forward(x, w, y, 0, 0, N, H, W, C, OH, OW, stride, pad, dilation, threads): y = the
// depthwise 3x3 convolution of x (N, H, W, C) with w (C, 1, 3, 3), no bias.
PyObject* dw_forward(PyObject*, PyObject* args) {
  DwShape g;
  unsigned long long p[5];
  int threads;
  if (!dw_shape(args, "KKKKKllllllllli", &g, p, &threads)) return nullptr;
  const float *x = ptr<const float>(p[0]), *w = ptr<const float>(p[1]);
  float* y = ptr<float>(p[2]);
  const long nch = chunks(g.N * g.OH, g.OW * g.C);
  threads = (int)std::max(1L, std::min<long>(threads, nch));
  Py_BEGIN_ALLOW_THREADS;
  {
    std::lock_guard<std::mutex> lock(g_pool_mu);
    const std::vector<float> w9 = dw_taps_first(w, g.C);
    for_chunks(threads, g.N * g.OH, nch,
               [&](long, long r0, long r1) { g_k->dw_fwd(x, w9.data(), y, g, r0, r1); });
  }
  Py_END_ALLOW_THREADS;
  Py_RETURN_NONE;
}

// dw_backward(x, w, dy, dx, dw, N, H, W, C, OH, OW, stride, pad, dilation, threads): dx
// (when dx != 0) and dw (when dw != 0) of dw_forward, in one pass over the rows of x: a chunk
// of input rows writes their dx and sums the weight gradient of the output rows whose first
// tap row (oh * stride) it holds (the last input row of an image takes any that remain).
PyObject* dw_backward(PyObject*, PyObject* args) {
  DwShape g;
  unsigned long long p[5];
  int threads;
  if (!dw_shape(args, "KKKKKllllllllli", &g, p, &threads)) return nullptr;
  const float *x = ptr<const float>(p[0]), *w = ptr<const float>(p[1]);
  const float* dy = ptr<const float>(p[2]);
  float *dx = ptr<float>(p[3]), *dw = ptr<float>(p[4]);
  const long C = g.C, nch = chunks(g.N * g.H, g.W * C);
  threads = (int)std::max(1L, std::min<long>(threads, nch));
  Py_BEGIN_ALLOW_THREADS;
  {
    std::lock_guard<std::mutex> lock(g_pool_mu);
    const std::vector<float> w9 = dw_taps_first(w, C);
    std::vector<double> part(dw ? (size_t)nch * 9 * C : 0, 0.0);
    for_chunks(threads, g.N * g.H, nch, [&](long t, long r0, long r1) {
      std::vector<float> acc(dw ? (size_t)9 * C : 0);
      double* d = dw ? part.data() + (size_t)t * 9 * C : nullptr;
      for (long r = r0; r < r1; ++r) {
        const long n = r / g.H, ih = r % g.H;
        if (dx) g_k->dw_bdx(dy, w9.data(), dx, g, n, ih);
        if (!dw) continue;
        const long lo = std::min(g.OH, (ih + g.s - 1) / g.s);
        const long hi = ih == g.H - 1 ? g.OH : std::min(g.OH, (ih + g.s) / g.s);
        for (long oh = lo; oh < hi; ++oh) {
          std::fill(acc.begin(), acc.end(), 0.f);
          g_k->dw_bdw(x, dy, g, n, oh, acc.data());
          for (long j = 0; j < 9 * C; ++j) d[j] += acc[j];
        }
      }
    });
    if (dw)
      for (long c = 0; c < C; ++c)
        for (int t = 0; t < 9; ++t) dw[c * 9 + t] = (float)sum_chunks(part, nch, 9 * C, t * C + c);
  }
  Py_END_ALLOW_THREADS;
  Py_RETURN_NONE;
}

PyObject* isa(PyObject*, PyObject*) { return PyUnicode_FromString(g_k->name); }

// set_isa("generic" | "avx2"): for tests of the scalar path; returns the previous one
PyObject* set_isa(PyObject*, PyObject* args) {
  const char* name;
  if (!PyArg_ParseTuple(args, "s", &name)) return nullptr;
  const char* prev = g_k->name;
  if (!strcmp(name, "generic")) {
    g_k = &k_scalar;
  } else if (!strcmp(name, "avx2")) {
#if defined(BNACT_X86)
    __builtin_cpu_init();
    if (!(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))) {
      PyErr_SetString(PyExc_ValueError, "this CPU has no AVX2+FMA");
      return nullptr;
    }
    g_k = &k_avx2;
#else
    PyErr_SetString(PyExc_ValueError, "not an x86 build");
    return nullptr;
#endif
  } else {
    PyErr_SetString(PyExc_ValueError, "isa: generic or avx2");
    return nullptr;
  }
  return PyUnicode_FromString(prev);
}

// set_pool("omp" | "own"): torch's OpenMP team (the default where found) or our own threads;
// returns the one in use before
PyObject* set_pool(PyObject*, PyObject* args) {
  const char* name;
  if (!PyArg_ParseTuple(args, "s", &name)) return nullptr;
  PyObject* prev = PyUnicode_FromString(g_use_omp && g_gomp_parallel ? "omp" : "own");
  if (!strcmp(name, "omp")) {
    if (!g_gomp_parallel) {
      Py_DECREF(prev);
      PyErr_SetString(PyExc_ValueError, "no OpenMP runtime loaded");
      return nullptr;
    }
    g_use_omp = true;
  } else if (!strcmp(name, "own")) {
    g_use_omp = false;
  } else {
    Py_DECREF(prev);
    PyErr_SetString(PyExc_ValueError, "pool: omp or own");
    return nullptr;
  }
  return prev;
}

PyObject* pool(PyObject*, PyObject*) {
  return PyUnicode_FromString(g_use_omp && g_gomp_parallel ? "omp" : "own");
}

PyObject* set_spin(PyObject*, PyObject* args) {
  int n;
  if (!PyArg_ParseTuple(args, "i", &n)) return nullptr;
  g_spin = std::max(0, n);
  Py_RETURN_NONE;
}

PyMethodDef methods[] = {
    {"forward", forward, METH_VARARGS, "fused training BatchNorm [+ ReLU6] forward"},
    {"backward", backward, METH_VARARGS, "its backward"},
    {"dw_forward", dw_forward, METH_VARARGS, "depthwise 3x3 convolution forward"},
    {"dw_backward", dw_backward, METH_VARARGS, "its backward (input and weight gradients)"},
    {"isa", isa, METH_NOARGS, "the kernels' ISA in use"},
    {"set_isa", set_isa, METH_VARARGS, "force an ISA (tests)"},
    {"set_pool", set_pool, METH_VARARGS, "torch's OpenMP team or own threads"},
    {"pool", pool, METH_NOARGS, "the thread pool in use"},
    {"set_spin", set_spin, METH_VARARGS, "pool workers' spin count before sleeping"},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_bnact",
                          "fused training BatchNorm + ReLU6 (channels_last fp32)", -1, methods};

}  // namespace

PyMODINIT_FUNC PyInit__bnact(void) {
#if defined(BNACT_X86)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) g_k = &k_avx2;
#endif
  load_omp();  // torch is imported before this module (mobilenetv2.model.bnact)
  static bool atfork = false;
  if (!atfork) {
    pthread_atfork(nullptr, nullptr, on_fork_child);
    atfork = true;
  }
  return PyModule_Create(&module_def);
}
