// The thread pool shared by the native inference engine (_engine.cpp) and the fused training
// BatchNorm (model/_bnact.cpp): one copy, included by both extensions. Each extension is its
// own shared object, so each has its own pool and fork generation (anonymous namespace).
#pragma once

#include <pthread.h>
#include <sched.h>
#include <time.h>
#if defined(__linux__)
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include <atomic>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace {

// ------------------------------------------------------------------ the thread pool
// The caller's thread is worker 0; threads - 1 std::threads wait for a job. Between layers
// the workers meet at a spinning barrier (a condition variable's wake-up costs tens of
// microseconds, a whole layer at batch 1 a few hundred). After a fork the child has none
// of the parent's threads: the pool notices (fork generation) and starts fresh ones,
// abandoning the old pool's memory rather than touching its possibly locked mutexes.
std::atomic<unsigned> g_fork_generation{0};
void on_fork_child() { g_fork_generation.fetch_add(1); }

double now_s() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

struct Pool {
  int threads;
  unsigned fork_gen;
  std::vector<std::thread> workers;
  std::mutex mu;
  std::condition_variable cv;
  std::atomic<unsigned> job_gen{0};
  std::atomic<int> done{0};
  std::atomic<bool> stop{false};
  std::function<void(int)> job;
  int spin = 20000;  // pause iterations a worker spins for the next job before sleeping
  // barrier
  std::atomic<int> arrived{0};
  std::atomic<unsigned> phase{0};
  std::atomic<int> sleepers{0};

  explicit Pool(int n) : threads(n), fork_gen(g_fork_generation.load()) {
    for (int t = 1; t < n; ++t) workers.emplace_back([this, t] { loop(t); });
  }
  ~Pool() {
    {
      std::lock_guard<std::mutex> lock(mu);
      stop.store(true);
    }
    cv.notify_all();
    for (auto& w : workers) w.join();
  }
  void loop(int tid) {
    unsigned seen = 0;
    for (;;) {
      // spin briefly for the next job (back-to-back forwards), then sleep
      for (int i = 0; i < spin && job_gen.load(std::memory_order_acquire) == seen &&
                      !stop.load(std::memory_order_relaxed);
           ++i)
        cpu_relax();
      if (job_gen.load(std::memory_order_acquire) == seen) {
        std::unique_lock<std::mutex> lock(mu);
        cv.wait(lock, [&] { return stop.load() || job_gen.load() != seen; });
      }
      if (stop.load()) return;
      seen = job_gen.load(std::memory_order_acquire);
      job(tid);
      done.fetch_add(1, std::memory_order_acq_rel);
    }
  }
  void run(const std::function<void(int)>& fn) {
    if (threads == 1) {
      fn(0);
      return;
    }
    {
      std::lock_guard<std::mutex> lock(mu);
      job = fn;
      done.store(0);
      job_gen.fetch_add(1, std::memory_order_acq_rel);
    }
    cv.notify_all();
    fn(0);
    int spins = 0;
    while (done.load(std::memory_order_acquire) != threads - 1) {
      if (++spins < 20000) cpu_relax();
      else sched_yield();
    }
  }
  // Spin for a short while (the usual wait: the threads' shares of a layer differ by
  // microseconds), then sleep on a futex. On a shared machine the thread that is late is
  // often waiting for a core another process holds: a sleeping waiter frees its core, and
  // the kernel moves the late thread onto it, where a spinning (or yielding) one kept it.
  void barrier() {
    if (threads == 1) return;
    const unsigned ph = phase.load(std::memory_order_acquire);
    if (arrived.fetch_add(1, std::memory_order_acq_rel) == threads - 1) {
      arrived.store(0, std::memory_order_relaxed);
      phase.fetch_add(1);  // seq_cst, as the sleepers count below: no wake-up is lost
#if defined(__linux__)
      if (sleepers.load() > 0)
        syscall(SYS_futex, reinterpret_cast<unsigned*>(&phase), FUTEX_WAKE_PRIVATE, INT32_MAX,
                nullptr, nullptr, 0);
#endif
      return;
    }
    const double t0 = now_s();
    int spins = 0;
    while (phase.load(std::memory_order_acquire) == ph) {
      cpu_relax();
      if (++spins % 256 || now_s() - t0 < 50e-6) continue;
#if defined(__linux__)
      sleepers.fetch_add(1);
      while (phase.load() == ph)
        syscall(SYS_futex, reinterpret_cast<unsigned*>(&phase), FUTEX_WAIT_PRIVATE, ph,
                nullptr, nullptr, 0);
      sleepers.fetch_sub(1);
#else
      sched_yield();
#endif
    }
  }
};

}  // namespace
