// The adapter registry: which EoRA adapters are in memory, where, and who uses them.
//
// Adapters come from the adapter store (a directory with one PEFT adapter
// directory per id: <store>/<id>/) or from an explicit path given to Load. In
// memory they sit in two tiers, each charged in bytes against its budget:
//
//   DEVICE  the engine computes from it (RAM for the CPU backend)
//   HOST    evicted from DEVICE but kept in memory; promoted back on use (on the
//           CPU backend promotion is only accounting: the factors already live in RAM)
//   DISK    not in memory; the next use reads and validates the directory again
//
// Eviction is LRU per tier (DEVICE -> HOST -> DISK). A request pins the adapter
// version it runs on (an AdapterHandle) and a pinned version is never evicted.
//
// Versions: every (re)load of an id publishes a new immutable AdapterVersion.
// Replace is atomic: new Acquires get the new version while running sequences
// keep theirs until they finish (a replaced or unloaded version stays charged to
// DEVICE until its last pin is released).
//
// Loading runs on the registry's own loader thread(s), never on the caller's
// serving loop; a caller that needs a loading adapter waits for it (bounded by
// options.load_wait and its deadline).
//
// Ids are plain names ([A-Za-z0-9._-]{1,max_id_length}, not "." or ".."), so no
// id can name a path outside the store.
//
// Threading contract: all public methods are thread-safe. AdapterHandles may be
// released from any thread; the registry must outlive every handle.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "engine/adapter_io.h"
#include "engine/lowrank.h"
#include "engine/model_config.h"

namespace eora::server {

class ServerMetrics;

// Lifecycle of an adapter id (mirrors eora.v1.AdapterState).
enum class AdapterState {
  kOnDisk,     // in the store only; the first request loads it
  kLoading,    // being read and validated on the loader thread; requests wait
  kReady,      // resident in DEVICE or HOST; servable
  kUnloading,  // unload requested; running sequences still use the version
  kFailed,     // the last load failed (last_error); the next request retries
};
const char* AdapterStateName(AdapterState s);

enum class Tier { kDevice = 0, kHost = 1, kDisk = 2 };
inline constexpr int kNumTiers = 3;
const char* TierName(Tier t);  // "device", "host", "disk"

// What a loader returns: the validated adapter and its metadata.
struct LoadedAdapter {
  std::shared_ptr<const LowRankAdapter> adapter;
  AdapterMetadata metadata;
};
// Reads and validates the adapter directory `dir` for id `id`. Must be
// thread-safe. Errors: NOT_FOUND (no directory), FAILED_PRECONDITION (made for
// another base model), INVALID_ARGUMENT / DATA_LOSS (malformed files).
using AdapterLoader =
    std::function<absl::StatusOr<LoadedAdapter>(const std::string& dir, const std::string& id)>;
// The production loader: engine LoadAdapterDir validated against `config`.
AdapterLoader MakeDirectoryLoader(const ModelConfig& config);

struct AdapterRegistryOptions {
  // The adapter store; "" = none (only Load with a path works).
  std::string store_dir;
  // Byte budgets of the in-memory tiers. Default 256 MiB / 1 GiB.
  size_t device_budget_bytes = size_t{256} << 20;
  size_t host_budget_bytes = size_t{1} << 30;
  // How long Acquire waits for an adapter that is loading (or for room in a
  // full DEVICE tier) before failing with UNAVAILABLE. Default 30 s.
  absl::Duration load_wait = absl::Seconds(30);
  // Whether Load may take an explicit directory path. Default true.
  bool allow_paths = true;
  // Longest accepted adapter id. Default 128.
  size_t max_id_length = 128;
  // Loader threads. Default 1.
  int loader_threads = 1;
};

// One immutable loaded version of an adapter id.
struct AdapterVersion {
  std::string id;
  uint64_t version = 0;
  std::shared_ptr<const LowRankAdapter> adapter;
  AdapterMetadata metadata;
  std::string path;
  size_t bytes = 0;
  // Registry-internal (guarded by the registry's mutex).
  int pins = 0;
  bool retired = false;  // no longer the id's current version
};

class AdapterRegistry;

// A pin on one adapter version: while it lives the version stays resident.
// Movable, not copyable; releasing (destruction or Reset) unpins.
class AdapterHandle {
 public:
  AdapterHandle() = default;
  AdapterHandle(AdapterHandle&& o) noexcept { *this = std::move(o); }
  AdapterHandle& operator=(AdapterHandle&& o) noexcept;
  AdapterHandle(const AdapterHandle&) = delete;
  AdapterHandle& operator=(const AdapterHandle&) = delete;
  ~AdapterHandle() { Reset(); }

  void Reset();
  explicit operator bool() const { return version_ != nullptr; }
  const std::shared_ptr<const LowRankAdapter>& adapter() const { return version_->adapter; }
  const AdapterMetadata& metadata() const { return version_->metadata; }
  const std::string& id() const { return version_->id; }
  uint64_t version() const { return version_->version; }

 private:
  friend class AdapterRegistry;
  AdapterHandle(AdapterRegistry* r, std::shared_ptr<AdapterVersion> v)
      : registry_(r), version_(std::move(v)) {}
  AdapterRegistry* registry_ = nullptr;
  std::shared_ptr<AdapterVersion> version_;
};

// A snapshot of one id for listings (mirrors eora.v1.AdapterInfo).
struct AdapterInfo {
  std::string id;
  AdapterState state = AdapterState::kOnDisk;
  Tier tier = Tier::kDisk;
  uint64_t version = 0;
  int stored_rank = 0;
  AdapterMetadata metadata;
  bool has_metadata = false;
  size_t bytes = 0;
  int active_sequences = 0;
  std::string path;
  std::string last_error;
};

struct RegistryStats {
  size_t bytes[kNumTiers] = {0, 0, 0};    // disk: bytes of known on-disk versions (0)
  int resident[kNumTiers] = {0, 0, 0};    // ids per tier
  int pinned_versions = 0;
};

class AdapterRegistry {
 public:
  // `metrics` may be null; not owned, must outlive the registry.
  AdapterRegistry(AdapterRegistryOptions options, AdapterLoader loader,
                  ServerMetrics* metrics = nullptr);
  ~AdapterRegistry();
  AdapterRegistry(const AdapterRegistry&) = delete;
  AdapterRegistry& operator=(const AdapterRegistry&) = delete;

  // INVALID_ARGUMENT naming `field` unless `id` is a plain adapter name.
  absl::Status ValidateId(const std::string& id, const char* field = "adapter_id") const;

  // Pins the current version of `id`, loading it first if needed (waiting for a
  // load in progress). Errors: INVALID_ARGUMENT (bad id), NOT_FOUND (neither
  // resident nor in the store), FAILED_PRECONDITION (another base model),
  // UNAVAILABLE (still loading after load_wait / past `deadline`),
  // RESOURCE_EXHAUSTED (DEVICE full of pinned adapters).
  absl::StatusOr<AdapterHandle> Acquire(const std::string& id,
                                        absl::Time deadline = absl::InfiniteFuture());

  // Loads `id` into DEVICE (from `path` if set, else the store). Resident and
  // !replace and no path: only refreshes LRU. Returns the id's info and the
  // milliseconds the load took (0 when nothing was loaded).
  absl::StatusOr<std::pair<AdapterInfo, double>> Load(const std::string& id,
                                                      std::optional<std::string> path,
                                                      bool replace,
                                                      absl::Time deadline = absl::InfiniteFuture());

  // Drops `id` from memory; waits until no sequence uses it (DEADLINE_EXCEEDED
  // past `deadline`; the unload still completes when the last user finishes).
  // NOT_FOUND if the id is neither resident nor in the store. Returns ms waited.
  absl::StatusOr<double> Unload(const std::string& id, absl::Time deadline = absl::InfiniteFuture());

  absl::StatusOr<AdapterInfo> Get(const std::string& id) const;
  // Known ids (resident, loading, failed), plus store-only ids if include_store.
  std::vector<AdapterInfo> List(bool include_store) const;
  RegistryStats Stats() const;

  // Whether `id` has a directory in the store.
  bool InStore(const std::string& id) const;
  std::string StorePath(const std::string& id) const;

 private:
  friend class AdapterHandle;
  struct PendingLoad {
    bool done = false;
    absl::Status status;
    double load_ms = 0;
  };
  struct Entry {
    std::string id;
    std::shared_ptr<AdapterVersion> current;  // null unless resident
    Tier tier = Tier::kDisk;
    uint64_t last_use = 0;
    std::string explicit_path;               // from Load(path); "" = store
    std::shared_ptr<PendingLoad> pending;    // a load in progress
    absl::Status last_error;
  };
  struct Job {
    std::string id, dir;
    std::shared_ptr<PendingLoad> pending;
    absl::Time queued;  // room in DEVICE is waited for until queued + 0.8 load_wait
  };

  void LoaderLoop();
  void RunJob(const Job& job);
  void Unpin(AdapterVersion* v);
  // Starts a load of `e` unless one is in progress; returns the pending load.
  std::shared_ptr<PendingLoad> StartLoadLocked(Entry* e, const std::string& dir)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Waits for `p` to finish; false on timeout.
  bool WaitLoadLocked(std::unique_lock<std::mutex>& lock, const std::shared_ptr<PendingLoad>& p,
                      absl::Time deadline);
  // Evicts unpinned LRU entries so that `bytes` more fit in DEVICE, waiting for
  // pins to drop until `deadline`. `keep` is never evicted.
  absl::Status MakeDeviceRoomLocked(std::unique_lock<std::mutex>& lock, size_t bytes,
                                    const Entry* keep, absl::Time deadline);
  // Evicts unpinned LRU DEVICE entries (except `keep`) to HOST until `bytes`
  // more fit; returns whether they fit.
  bool EvictDeviceLocked(size_t bytes, const Entry* keep) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void EnforceHostBudgetLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Moves the current version of `e` out (retired if pinned), leaving it on disk.
  void DetachLocked(Entry* e) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  AdapterInfo InfoLocked(const Entry& e) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  AdapterInfo StoreOnlyInfo(const std::string& id) const;
  void UpdateGaugesLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const AdapterRegistryOptions options_;
  const AdapterLoader loader_;
  ServerMetrics* const metrics_;

  mutable std::mutex mu_;
  std::condition_variable cv_;  // loads finished, pins released, jobs queued
  std::map<std::string, Entry> entries_ ABSL_GUARDED_BY(mu_);
  std::vector<std::shared_ptr<AdapterVersion>> retired_ ABSL_GUARDED_BY(mu_);  // pinned
  size_t tier_bytes_[kNumTiers] ABSL_GUARDED_BY(mu_) = {0, 0, 0};
  uint64_t tick_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t next_version_ ABSL_GUARDED_BY(mu_) = 1;
  std::deque<Job> jobs_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> loaders_;
};

}  // namespace eora::server
