// Runtime selection of the CPU kernel table.
#include "engine/backend/cpu/kernels.h"

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#if (defined(__x86_64__) || defined(__i386__)) && defined(__linux__)
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace eora::cpu {
namespace {

struct Tables {
  KernelTable generic;
  KernelTable avx2;
  KernelTable avx512;
  KernelTable amx;
  bool has_avx2 = false;
  bool has_avx512 = false;
  bool has_amx = false;
};

bool CpuHasAvx2() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
         __builtin_cpu_supports("f16c");
#else
  return false;
#endif
}

bool CpuHasAvx512() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  // The AVX-512 table needs VNNI (vpdpbusd), VBMI (byte permutes) and GFNI (the
  // affine byte transform that unpacks 2-bit planes): Ice Lake, Sapphire Rapids
  // and later, AMD Zen 4 and later. Older AVX-512 CPUs (Skylake-X, Cascade Lake)
  // run the AVX2 table.
  return CpuHasAvx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
         __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vbmi") &&
         __builtin_cpu_supports("gfni");
#else
  return false;
#endif
}

// AMX int8 tiles (Sapphire Rapids and later): the CPU has them (CPUID leaf 7 EDX
// bits 24 and 25), the OS saves their state (XCR0 bits 17 and 18), and Linux
// grants this process the tile data state (arch_prctl ARCH_REQ_XCOMP_PERM, kernel
// 5.16+); without that grant the first tile instruction would raise SIGILL.
bool CpuHasAmx() {
#if (defined(__x86_64__) || defined(__i386__)) && defined(__linux__)
  if (!CpuHasAvx512()) return false;
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (__get_cpuid_max(0, nullptr) < 7) return false;
  __cpuid(1, a, b, c, d);
  if (((c >> 27) & 1u) == 0) return false;  // OSXSAVE: xgetbv is usable
  __cpuid_count(7, 0, a, b, c, d);
  if (((d >> 24) & 1u) == 0 || ((d >> 25) & 1u) == 0) return false;  // AMX-TILE, AMX-INT8
  unsigned xcr0_lo = 0, xcr0_hi = 0;
  __asm__ volatile("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
  if (((xcr0_lo >> 17) & 3u) != 3u) return false;  // XTILECFG and XTILEDATA enabled
  constexpr long kArchReqXcompPerm = 0x1023;
  constexpr long kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
#else
  return false;
#endif
}

const Tables& AllTables() {
  static const Tables* tables = [] {
    auto* t = new Tables;
    FillGenericKernels(&t->generic);
    t->generic.name = "generic";
    t->has_avx2 = CpuHasAvx2();
    t->has_avx512 = CpuHasAvx512();
    t->avx2 = t->generic;
    FillAvx2Kernels(&t->avx2);
    t->avx2.name = "avx2";
    t->avx512 = t->avx2;
    FillAvx512Kernels(&t->avx512);
    t->avx512.name = "avx512";
    t->has_amx = CpuHasAmx();
    t->amx = t->avx512;
    FillAmxKernels(&t->amx);
    t->amx.name = "amx";
    return t;
  }();
  return *tables;
}

const KernelTable* ChooseDefault() {
  const Tables& t = AllTables();
  const KernelTable* best = t.has_amx      ? &t.amx
                            : t.has_avx512 ? &t.avx512
                            : t.has_avx2   ? &t.avx2
                                           : &t.generic;
  if (const char* env = std::getenv("EORA_ISA"); env != nullptr && *env != '\0') {
    const KernelTable* forced = KernelsFor(env);
    // Only a lower (or equal) ISA can be forced; anything else keeps the best.
    if (forced != nullptr) best = forced;
  }
  return best;
}

std::atomic<const KernelTable*>& Active() {
  static std::atomic<const KernelTable*> active{ChooseDefault()};
  return active;
}

}  // namespace

const KernelTable& Kernels() { return *Active().load(std::memory_order_relaxed); }

const char* ActiveIsaName() { return Kernels().name; }

const KernelTable* KernelsFor(std::string_view isa) {
  const Tables& t = AllTables();
  if (isa == "generic") return &t.generic;
  if (isa == "avx2") return t.has_avx2 ? &t.avx2 : nullptr;
  if (isa == "avx512") return t.has_avx512 ? &t.avx512 : nullptr;
  if (isa == "amx") return t.has_amx ? &t.amx : nullptr;
  return nullptr;
}

bool SetActiveIsa(std::string_view isa) {
  const KernelTable* k = KernelsFor(isa);
  if (k == nullptr) return false;
  Active().store(k, std::memory_order_relaxed);
  return true;
}

float* ScratchFloats(size_t n, int slot) {
  thread_local std::unique_ptr<float[]> buf[4];
  thread_local size_t cap[4] = {0, 0, 0, 0};
  slot &= 3;
  if (n > cap[slot]) {
    cap[slot] = n + 64;
    buf[slot].reset(new float[cap[slot] + 16]);  // 16 floats of room to align
  }
  const uintptr_t p = reinterpret_cast<uintptr_t>(buf[slot].get());
  return reinterpret_cast<float*>((p + 63) & ~uintptr_t{63});
}

}  // namespace eora::cpu
