// STREAM-like triad a[i] = b[i] + s * c[i] over arrays much larger than the caches, with one
// thread per core; prints the best bandwidth of several runs in GB/s (3 arrays of traffic, the
// write counted once, as STREAM does).
//   g++ -O3 -march=native -fopenmp bench/stream_triad.cpp -o build/stream_triad && build/stream_triad
#include <omp.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

int main(int argc, char** argv) {
  const size_t n = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : (size_t{1} << 26);  // 64M doubles = 512 MB
  std::vector<double> a(n), b(n), c(n);
#pragma omp parallel for
  for (size_t i = 0; i < n; ++i) {
    a[i] = 0;
    b[i] = 1;
    c[i] = 2;
  }
  double best = 0;
  for (int r = 0; r < 10; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel for
    for (size_t i = 0; i < n; ++i) a[i] = b[i] + 3.0 * c[i];
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::max(best, 3.0 * n * sizeof(double) / s / 1e9);
  }
  std::printf("triad: %.1f GB/s with %d threads (best of 10, %.0f MB per array)\n", best, omp_get_max_threads(),
              n * sizeof(double) / 1e6);
  return a[n / 2] == 7.0 ? 0 : 1;
}
