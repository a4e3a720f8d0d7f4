// Throughput of tessera::kernels::sgemm on the shapes of the diffusion networks, in GFLOP/s
// (2*m*n*k per product, best of several runs), next to the FMA peak measured on this machine
// with the same number of threads.
//   build/gemm_bench [--threads N] [--seconds S] [--peak] [--cpu-time] [M N K [TA TB]]...
// TA/TB are N or T (op(A) = A or A^T). Without shapes it runs the standard list. Prints one
// line per shape: "gemm M N K TA TB GFLOPS"; bench/gemm_vs_numpy.py parses it.
// --cpu-time divides by the CPU time the process got instead of the wall time: on a machine
// shared with other work this shows what the kernel does while it runs (use it with
// --threads 1: idle workers spinning between tasks count as CPU time too).
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <random>
#include <string>
#include <vector>

#include "core/thread_pool.h"
#include "kernels/cpu/gemm.h"

namespace {

struct Shape {
  int64_t m, n, k;
  bool ta, tb;
};

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

bool g_cpu_time = false;  // time by the process's CPU time divided by the threads (see usage)

double process_cpu_seconds() {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

// Independent FMA chains on every thread of the pool: the most this machine does per second.
// Best of many short windows, so that a time slice lost to another process does not count.
double fma_peak_gflops() {
  constexpr int64_t kIters = 1'000'000;
  const size_t threads = tessera::ThreadPool::global().size();
  std::vector<double> rates(threads);
  tessera::parallel_for(threads, 1, [&](size_t t0, size_t t1) {
    for (size_t t = t0; t < t1; ++t) {
      __m256 acc[12];
      for (int i = 0; i < 12; ++i) acc[i] = _mm256_set1_ps(static_cast<float>(i));
      const __m256 x = _mm256_set1_ps(0.999999f), y = _mm256_set1_ps(1e-7f);
      double best = 1e30;
      for (int window = 0; window < 100; ++window) {
        const auto start = std::chrono::steady_clock::now();
        for (int64_t it = 0; it < kIters; ++it)
          for (int i = 0; i < 12; ++i) acc[i] = _mm256_fmadd_ps(acc[i], x, y);
        best = std::min(best, seconds_since(start));
      }
      float sink = 0;
      for (int i = 0; i < 12; ++i) sink += _mm256_cvtss_f32(acc[i]);
      rates[t] = (sink == 12345.0f ? 1.0 : 0.0) + kIters * 12.0 * 16.0 / best / 1e9;
    }
  });
  double total = 0;
  for (double r : rates) total += r;
  return total;
}

double run_shape(const Shape& s, double budget_s) {
  std::mt19937 rng(42);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> a(static_cast<size_t>(s.m * s.k)), b(static_cast<size_t>(s.k * s.n)),
      c(static_cast<size_t>(s.m * s.n));
  for (float& v : a) v = dist(rng);
  for (float& v : b) v = dist(rng);
  const int64_t lda = s.ta ? s.m : s.k, ldb = s.tb ? s.k : s.n;
  auto once = [&] {
    tessera::kernels::sgemm(s.ta, s.tb, s.m, s.n, s.k, 1.0f, a.data(), lda, b.data(), ldb, 0.0f, c.data(), s.n);
  };
  once();  // warm-up: page faults, packing buffers, pool threads
  double best = 1e30, total = 0;
  int runs = 0;
  const double threads = static_cast<double>(tessera::ThreadPool::global().size());
  while (runs < 3 || (total < budget_s && runs < 1000)) {
    const auto t0 = std::chrono::steady_clock::now();
    const double cpu0 = process_cpu_seconds();
    once();
    const double wall = seconds_since(t0);
    const double t = g_cpu_time ? (process_cpu_seconds() - cpu0) / threads : wall;
    best = std::min(best, t);
    total += wall;
    ++runs;
  }
  return 2.0 * static_cast<double>(s.m) * static_cast<double>(s.n) * static_cast<double>(s.k) / best / 1e9;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<Shape> shapes;
  double budget = 1.0;
  bool peak = false;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--threads" && i + 1 < argc) {
      tessera::ThreadPool::set_global_threads(std::strtoul(argv[++i], nullptr, 10));
    } else if (arg == "--seconds" && i + 1 < argc) {
      budget = std::strtod(argv[++i], nullptr);
    } else if (arg == "--cpu-time") {
      g_cpu_time = true;
    } else if (arg == "--peak") {
      peak = true;
    } else if (i + 2 < argc) {
      const int first = i;
      Shape s{std::strtoll(argv[i], nullptr, 10), std::strtoll(argv[i + 1], nullptr, 10),
              std::strtoll(argv[i + 2], nullptr, 10), false, false};
      i += 2;
      if (i + 2 < argc && (argv[i + 1][0] == 'N' || argv[i + 1][0] == 'T')) {
        s.ta = argv[i + 1][0] == 'T';
        s.tb = argv[i + 2][0] == 'T';
        i += 2;
      }
      if (s.m <= 0 || s.n <= 0 || s.k <= 0) {
        std::fprintf(stderr, "gemm_bench: bad shape %s %s %s\n", argv[first], argv[first + 1], argv[first + 2]);
        return 2;
      }
      shapes.push_back(s);
    } else {
      std::fprintf(stderr,
                   "usage: gemm_bench [--threads N] [--seconds S] [--peak] [--cpu-time] [M N K [TA TB]]...\n");
      return 2;
    }
  }
  if (shapes.empty()) {
    shapes = {{4096, 320, 2880, false, false},  {1024, 1280, 11520, false, false}, {4096, 4096, 40, false, true},
              {4096, 40, 4096, false, false},   {77, 768, 768, false, true},       {4096, 1280, 320, false, true},
              {2048, 2048, 2048, false, false}, {8, 3072, 768, false, true}};
    peak = true;
  }
  const size_t threads = tessera::ThreadPool::global().size();
  double peak_gflops = 0;
  if (peak) {
    peak_gflops = fma_peak_gflops();
    std::printf("peak %.1f GFLOP/s from FMA chains on %zu threads (%.2f GHz at 32 flops per cycle per core)\n",
                peak_gflops, threads, peak_gflops / 32.0 / static_cast<double>(threads));
  }
  for (const Shape& s : shapes) {
    const double g = run_shape(s, budget);
    std::printf("gemm %lld %lld %lld %c %c %.2f", static_cast<long long>(s.m), static_cast<long long>(s.n),
                static_cast<long long>(s.k), s.ta ? 'T' : 'N', s.tb ? 'T' : 'N', g);
    if (peak_gflops > 0) std::printf("  (%.0f%% of peak)", 100.0 * g / peak_gflops);
    std::printf("\n");
    std::fflush(stdout);
  }
  return 0;
}
