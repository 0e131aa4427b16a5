// Runtime selection of the CPU kernel table.
#include "engine/backend/cpu/kernels.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

namespace eora::cpu {
namespace {

struct Tables {
  KernelTable generic;
  KernelTable avx2;
  KernelTable avx512;
  bool has_avx2 = false;
  bool has_avx512 = false;
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
  // The AVX-512 table needs VNNI (vpdpbusd) and VBMI (byte permutes and
  // multishifts): Ice Lake, Sapphire Rapids and later, AMD Zen 4 and later. Older
  // AVX-512 CPUs (Skylake-X, Cascade Lake) run the AVX2 table.
  return CpuHasAvx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
         __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vbmi");
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
    return t;
  }();
  return *tables;
}

const KernelTable* ChooseDefault() {
  const Tables& t = AllTables();
  const KernelTable* best = t.has_avx512 ? &t.avx512 : t.has_avx2 ? &t.avx2 : &t.generic;
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
    buf[slot].reset(new float[cap[slot]]);
  }
  return buf[slot].get();
}

}  // namespace eora::cpu
