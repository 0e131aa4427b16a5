// Allocation of weight buffers on transparent huge pages.
//
// Decoding streams every weight once per token. With 4 KiB pages that is a TLB
// miss per 64 cache lines, and the hardware prefetchers stop at every page
// edge: on the reference VM a 2-thread read runs at ~31 GB/s on 4 KiB pages and
// ~38 GB/s on 2 MiB pages (`eora-membw`).
//
//   - Buffers of at least 2 MiB get their own mapping at a 2 MiB boundary.
//   - Buffers of 64 KiB up to 2 MiB (most per-layer matrices of small models)
//     are placed one after another, 4 KiB-aligned, in shared 32 MiB slabs, so
//     neighbouring matrices share huge pages. Freeing one returns its pages to
//     the kernel at once (MADV_DONTNEED); a slab is unmapped when its last
//     buffer goes. Dead space costs address space, not memory.
//   - Smaller buffers use operator new.
// Every mapping is marked MADV_HUGEPAGE before it is touched, so this works with
// THP in "madvise" mode; where THP is off, madvise fails and 4 KiB pages remain.
// EORA_HUGE_PAGES=off in the environment skips the madvise (same placement,
// 4 KiB pages), for A/B measurements.
#pragma once

#include <cstddef>
#include <cstdint>
#include <new>
#include <vector>

namespace eora {

inline constexpr size_t kHugePageBytes = size_t{2} << 20;
inline constexpr size_t kSlabMinBytes = size_t{64} << 10;

// For bytes >= kSlabMinBytes; nullptr when the kernel refuses the mapping.
void* AllocateHugePageBacked(size_t bytes);
void FreeHugePageBacked(void* p, size_t bytes);

template <class T>
struct HugePageAllocator {
  using value_type = T;
  HugePageAllocator() = default;
  template <class U>
  HugePageAllocator(const HugePageAllocator<U>&) {}  // NOLINT(google-explicit-constructor)

  T* allocate(size_t n) {
    const size_t bytes = n * sizeof(T);
    if (bytes >= kSlabMinBytes) {
      if (void* p = AllocateHugePageBacked(bytes)) return static_cast<T*>(p);
      throw std::bad_alloc();
    }
    return static_cast<T*>(::operator new(bytes, std::align_val_t{64}));
  }
  void deallocate(T* p, size_t n) {
    const size_t bytes = n * sizeof(T);
    if (bytes >= kSlabMinBytes) {
      FreeHugePageBacked(p, bytes);
    } else {
      ::operator delete(p, std::align_val_t{64});
    }
  }
  template <class U>
  bool operator==(const HugePageAllocator<U>&) const { return true; }
};

// Weight storage: a vector whose large instances sit on huge pages.
template <class T>
using WeightVector = std::vector<T, HugePageAllocator<T>>;

// Bytes of address space currently mapped in slabs (for tests and diagnostics).
size_t HugePageSlabBytesMapped();

// False when EORA_HUGE_PAGES=off (or 0) was set at startup.
bool HugePagesEnabled();

}  // namespace eora
