#include "engine/huge_pages.h"

#include <sys/mman.h>

#include <cstdlib>
#include <cstring>
#include <mutex>

#include "absl/container/flat_hash_map.h"

namespace eora {
namespace {

constexpr size_t kPage = 4096;
constexpr size_t kSlabBytes = size_t{32} << 20;

// EORA_HUGE_PAGES=off keeps 4 KiB pages (for A/B measurements).
bool HugePagesWanted() {
  static const bool wanted = [] {
    const char* v = std::getenv("EORA_HUGE_PAGES");
    return v == nullptr || (std::strcmp(v, "off") != 0 && std::strcmp(v, "0") != 0);
  }();
  return wanted;
}

size_t RoundUp(size_t v, size_t to) { return (v + to - 1) / to * to; }

// Maps `bytes` at an `align`-aligned address (align a power of two >= 4 KiB),
// marked for huge pages. Returns nullptr on failure.
void* MapAligned(size_t bytes, size_t align) {
  const size_t used = RoundUp(bytes, kPage);
  const size_t span = used + align;
  void* raw = ::mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) return nullptr;
  const uintptr_t base = reinterpret_cast<uintptr_t>(raw);
  const uintptr_t aligned = (base + align - 1) & ~(uintptr_t{align} - 1);
  if (aligned > base) ::munmap(raw, aligned - base);
  const size_t tail = base + span - (aligned + used);
  if (tail > 0) ::munmap(reinterpret_cast<void*>(aligned + used), tail);
  void* p = reinterpret_cast<void*>(aligned);
#ifdef MADV_HUGEPAGE
  if (HugePagesWanted()) ::madvise(p, used, MADV_HUGEPAGE);  // advisory: failure leaves 4 KiB pages
#endif
  return p;
}

// Slabs are kSlabBytes-aligned, so a buffer finds its slab by masking.
class SlabHeap {
 public:
  void* Allocate(size_t bytes) {
    const size_t used = RoundUp(bytes, kPage);
    std::lock_guard<std::mutex> lock(mu_);
    if (current_ == 0 || bump_ + used > kSlabBytes) {
      void* s = MapAligned(kSlabBytes, kSlabBytes);
      if (s == nullptr) return nullptr;
      if (current_ != 0 && live_[current_] == 0) Unmap(current_);
      current_ = reinterpret_cast<uintptr_t>(s);
      live_[current_] = 0;
      bump_ = 0;
    }
    void* p = reinterpret_cast<void*>(current_ + bump_);
    bump_ += used;
    ++live_[current_];
    return p;
  }

  void Free(void* p, size_t bytes) {
    const size_t used = RoundUp(bytes, kPage);
    const uintptr_t slab = reinterpret_cast<uintptr_t>(p) & ~(uintptr_t{kSlabBytes} - 1);
    std::lock_guard<std::mutex> lock(mu_);
    const size_t left = --live_[slab];
    if (left == 0 && slab != current_) {
      Unmap(slab);
      return;
    }
    if (left == 0) {
      bump_ = 0;  // the current slab is empty: start it over
    }
    ::madvise(p, used, MADV_DONTNEED);  // give the memory back now
  }

  size_t MappedBytes() {
    std::lock_guard<std::mutex> lock(mu_);
    return live_.size() * kSlabBytes;
  }

 private:
  void Unmap(uintptr_t slab) {
    ::munmap(reinterpret_cast<void*>(slab), kSlabBytes);
    live_.erase(slab);
  }

  std::mutex mu_;
  absl::flat_hash_map<uintptr_t, size_t> live_;  // slab base -> live buffers
  uintptr_t current_ = 0;
  size_t bump_ = 0;
};

SlabHeap& Slabs() {
  static SlabHeap* heap = new SlabHeap();  // never destroyed: buffers may outlive statics
  return *heap;
}

}  // namespace

void* AllocateHugePageBacked(size_t bytes) {
  if (bytes >= kHugePageBytes) return MapAligned(bytes, kHugePageBytes);
  return Slabs().Allocate(bytes);
}

void FreeHugePageBacked(void* p, size_t bytes) {
  if (bytes >= kHugePageBytes) {
    ::munmap(p, RoundUp(bytes, kPage));
    return;
  }
  Slabs().Free(p, bytes);
}

size_t HugePageSlabBytesMapped() { return Slabs().MappedBytes(); }

bool HugePagesEnabled() { return HugePagesWanted(); }

}  // namespace eora
