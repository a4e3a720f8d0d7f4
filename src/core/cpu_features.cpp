#include "core/cpu_features.h"

#include <cpuid.h>

namespace tessera {

namespace {
CpuFeatures detect() {
  CpuFeatures f;
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return f;
  f.fma = ecx & (1u << 12);
  f.f16c = ecx & (1u << 29);
  const bool osxsave = ecx & (1u << 27);
  unsigned long long xcr0 = 0;
  if (osxsave) {
    unsigned lo, hi;
    __asm__("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    xcr0 = (static_cast<unsigned long long>(hi) << 32) | lo;
  }
  const bool ymm_ok = (xcr0 & 0x6) == 0x6;
  const bool zmm_ok = (xcr0 & 0xe6) == 0xe6;
  if (__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) {
    f.avx2 = ymm_ok && (ebx & (1u << 5));
    f.avx512f = zmm_ok && (ebx & (1u << 16));
    f.avx512bw = zmm_ok && (ebx & (1u << 30));
    f.avx512vl = zmm_ok && (ebx & (1u << 31));
    f.avx512vnni = zmm_ok && (ecx & (1u << 11));
  }
  if (__get_cpuid_count(7, 1, &eax, &ebx, &ecx, &edx)) {
    f.avx_vnni = ymm_ok && (eax & (1u << 4));
    f.avx512bf16 = zmm_ok && (eax & (1u << 5));
  }
  f.fma = f.fma && ymm_ok;
  return f;
}
}  // namespace

std::string CpuFeatures::describe() const {
  std::string out;
  auto add = [&](bool on, const char* name) {
    if (!on) return;
    if (!out.empty()) out += ' ';
    out += name;
  };
  add(avx2, "avx2");
  add(fma, "fma");
  add(f16c, "f16c");
  add(avx512f, "avx512f");
  add(avx512bw, "avx512bw");
  add(avx512vl, "avx512vl");
  add(avx512vnni, "avx512vnni");
  add(avx512bf16, "avx512bf16");
  add(avx_vnni, "avxvnni");
  return out;
}

const CpuFeatures& cpu_features() {
  static const CpuFeatures features = detect();
  return features;
}

}  // namespace tessera
