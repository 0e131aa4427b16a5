#include "server/adapter_registry.h"

#include <algorithm>
#include <chrono>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "server/metrics.h"

namespace eora::server {
namespace fs = std::filesystem;

const char* AdapterStateName(AdapterState s) {
  switch (s) {
    case AdapterState::kOnDisk: return "on_disk";
    case AdapterState::kLoading: return "loading";
    case AdapterState::kReady: return "ready";
    case AdapterState::kUnloading: return "unloading";
    case AdapterState::kFailed: return "failed";
  }
  return "?";
}

const char* TierName(Tier t) {
  switch (t) {
    case Tier::kDevice: return "device";
    case Tier::kHost: return "host";
    case Tier::kDisk: return "disk";
  }
  return "?";
}

AdapterLoader MakeDirectoryLoader(const ModelConfig& config) {
  return [config](const std::string& dir, const std::string& id) -> absl::StatusOr<LoadedAdapter> {
    LoadedAdapter out;
    auto a = LoadAdapterDir(dir, config, id, &out.metadata);
    if (!a.ok()) return a.status();
    out.adapter = std::move(*a);
    return out;
  };
}

// ---- AdapterHandle -------------------------------------------------------------

AdapterHandle& AdapterHandle::operator=(AdapterHandle&& o) noexcept {
  if (this != &o) {
    Reset();
    registry_ = o.registry_;
    version_ = std::move(o.version_);
    o.registry_ = nullptr;
  }
  return *this;
}

void AdapterHandle::Reset() {
  if (version_ && registry_) registry_->Unpin(version_.get());
  version_.reset();
  registry_ = nullptr;
}

// ---- AdapterRegistry -----------------------------------------------------------

AdapterRegistry::AdapterRegistry(AdapterRegistryOptions options, AdapterLoader loader,
                                 ServerMetrics* metrics)
    : options_(std::move(options)), loader_(std::move(loader)), metrics_(metrics) {
  for (int i = 0; i < std::max(1, options_.loader_threads); ++i)
    loaders_.emplace_back([this] { LoaderLoop(); });
  std::lock_guard<std::mutex> lock(mu_);
  UpdateGaugesLocked();
}

AdapterRegistry::~AdapterRegistry() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  for (auto& t : loaders_) t.join();
}

absl::Status AdapterRegistry::ValidateId(const std::string& id, const char* field) const {
  return ValidateAdapterId(id, field, options_.max_id_length);
}

std::string AdapterRegistry::StorePath(const std::string& id) const {
  if (options_.store_dir.empty()) return "";
  return (fs::path(options_.store_dir) / id).string();
}

bool AdapterRegistry::InStore(const std::string& id) const {
  if (options_.store_dir.empty() || !ValidateId(id).ok()) return false;
  std::error_code ec;
  return fs::is_directory(StorePath(id), ec);
}

void AdapterRegistry::LoaderLoop() {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    cv_.wait(lock, [&] { return stop_ || !jobs_.empty(); });
    if (stop_) {
      // Fail what is still queued so that no waiter hangs.
      for (auto& j : jobs_) {
        j.pending->done = true;
        j.pending->status = absl::UnavailableError("adapter registry is shutting down");
      }
      jobs_.clear();
      cv_.notify_all();
      return;
    }
    Job job = std::move(jobs_.front());
    jobs_.pop_front();
    lock.unlock();
    RunJob(job);
    lock.lock();
  }
}

void AdapterRegistry::RunJob(const Job& job) {
  const auto t0 = std::chrono::steady_clock::now();
  absl::StatusOr<LoadedAdapter> loaded = loader_(job.dir, job.id);
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (metrics_) metrics_->AdapterLoad(loaded.ok(), secs);

  std::unique_lock<std::mutex> lock(mu_);
  auto it = entries_.find(job.id);
  absl::Status st = loaded.status();
  if (st.ok() && !loaded->adapter) st = absl::InternalError("loader returned no adapter");
  Entry* e = it == entries_.end() ? nullptr : &it->second;
  if (st.ok() && e == nullptr) st = absl::AbortedError("adapter was removed while loading");
  if (st.ok()) {
    const size_t bytes = loaded->adapter->resident_bytes();
    if (bytes > options_.device_budget_bytes) {
      st = absl::ResourceExhaustedError(absl::StrCat(
          "adapter '", job.id, "' needs ", bytes, " bytes, more than the device tier budget of ",
          options_.device_budget_bytes, " bytes"));
    } else {
      // The old version (if any) leaves DEVICE/HOST accounting first, so that a
      // replace needs room only for the difference when nobody uses the old one.
      DetachLocked(e);
      // Waiters give up after load_wait; give up on room a little earlier so
      // that they see why (RESOURCE_EXHAUSTED) rather than a timeout.
      st = MakeDeviceRoomLocked(lock, bytes, e, job.queued + options_.load_wait * 0.8);
      // The entry may have changed while waiting for room.
      it = entries_.find(job.id);
      e = it == entries_.end() ? nullptr : &it->second;
      if (st.ok() && e == nullptr) st = absl::AbortedError("adapter was removed while loading");
      if (st.ok()) {
        DetachLocked(e);  // a concurrent load may have published meanwhile
        auto v = std::make_shared<AdapterVersion>();
        v->id = job.id;
        v->version = next_version_++;
        v->adapter = std::move(loaded->adapter);
        v->metadata = std::move(loaded->metadata);
        v->path = job.dir;
        v->bytes = bytes;
        e->current = std::move(v);
        e->tier = Tier::kDevice;
        e->last_use = ++tick_;
        tier_bytes_[0] += bytes;
        EnforceHostBudgetLocked();
      }
    }
  }
  if (e != nullptr) {
    e->last_error = st;
    if (e->pending == job.pending) e->pending.reset();
  }
  job.pending->status = st;
  job.pending->load_ms = secs * 1e3;
  job.pending->done = true;
  UpdateGaugesLocked();
  lock.unlock();
  cv_.notify_all();
}

void AdapterRegistry::Unpin(AdapterVersion* v) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    --v->pins;
    if (v->pins == 0 && v->retired) {
      tier_bytes_[0] -= v->bytes;
      retired_.erase(std::remove_if(retired_.begin(), retired_.end(),
                                    [&](const auto& p) { return p.get() == v; }),
                     retired_.end());
      UpdateGaugesLocked();
    }
  }
  cv_.notify_all();
}

std::shared_ptr<AdapterRegistry::PendingLoad> AdapterRegistry::StartLoadLocked(
    Entry* e, const std::string& dir) {
  if (e->pending) return e->pending;
  e->pending = std::make_shared<PendingLoad>();
  jobs_.push_back(Job{e->id, dir, e->pending, absl::Now()});
  cv_.notify_all();
  return e->pending;
}

bool AdapterRegistry::WaitLoadLocked(std::unique_lock<std::mutex>& lock,
                                     const std::shared_ptr<PendingLoad>& p, absl::Time deadline) {
  const absl::Time until = std::min(deadline, absl::Now() + options_.load_wait);
  while (!p->done) {
    const absl::Time now = absl::Now();
    if (now >= until) return false;
    cv_.wait_for(lock, absl::ToChronoNanoseconds(std::min(until - now, absl::Milliseconds(100))));
  }
  return true;
}

absl::Status AdapterRegistry::MakeDeviceRoomLocked(std::unique_lock<std::mutex>& lock,
                                                   size_t bytes, const Entry* keep,
                                                   absl::Time deadline) {
  for (;;) {
    if (EvictDeviceLocked(bytes, keep)) {
      EnforceHostBudgetLocked();
      return absl::OkStatus();
    }
    if (absl::Now() >= deadline)
      return absl::ResourceExhaustedError(absl::StrCat(
          "adapter device tier full: ", tier_bytes_[0], " of ", options_.device_budget_bytes,
          " bytes are pinned by running sequences"));
    cv_.wait_for(lock, absl::ToChronoNanoseconds(
                           std::min(deadline - absl::Now(), absl::Milliseconds(50))));
  }
}

bool AdapterRegistry::EvictDeviceLocked(size_t bytes, const Entry* keep) {
  {
    while (tier_bytes_[0] + bytes > options_.device_budget_bytes) {
      Entry* victim = nullptr;
      for (auto& [id, e] : entries_) {
        if (&e == keep || !e.current || e.tier != Tier::kDevice || e.current->pins > 0) continue;
        if (victim == nullptr || e.last_use < victim->last_use) victim = &e;
      }
      if (victim == nullptr) break;
      tier_bytes_[0] -= victim->current->bytes;
      tier_bytes_[1] += victim->current->bytes;
      victim->tier = Tier::kHost;
      if (metrics_) metrics_->AdapterEviction("device");
    }
  }
  return tier_bytes_[0] + bytes <= options_.device_budget_bytes;
}

void AdapterRegistry::EnforceHostBudgetLocked() {
  while (tier_bytes_[1] > options_.host_budget_bytes) {
    Entry* victim = nullptr;
    for (auto& [id, e] : entries_) {
      if (!e.current || e.tier != Tier::kHost) continue;
      if (victim == nullptr || e.last_use < victim->last_use) victim = &e;
    }
    if (victim == nullptr) break;
    DetachLocked(victim);
    if (metrics_) metrics_->AdapterEviction("host");
  }
}

void AdapterRegistry::DetachLocked(Entry* e) {
  if (!e->current) return;
  auto v = std::move(e->current);
  e->current.reset();
  tier_bytes_[static_cast<int>(e->tier)] -= v->bytes;
  v->retired = true;
  if (v->pins > 0) {
    // Still used: stays charged to DEVICE until its last pin is released.
    tier_bytes_[0] += v->bytes;
    retired_.push_back(std::move(v));
  }
  e->tier = Tier::kDisk;
}

absl::StatusOr<AdapterHandle> AdapterRegistry::Acquire(const std::string& id, absl::Time deadline) {
  if (absl::Status s = ValidateId(id); !s.ok()) return s;
  std::unique_lock<std::mutex> lock(mu_);
  bool counted_miss = false;
  for (int attempt = 0;; ++attempt) {
    auto it = entries_.find(id);
    Entry* e = it == entries_.end() ? nullptr : &it->second;
    if (e != nullptr && e->current) {
      if (e->tier == Tier::kHost) {
        // Promote HOST -> DEVICE. On the CPU backend both tiers are RAM, so the
        // promotion moves the charge without waiting: if everything else in
        // DEVICE is pinned the tier is over budget until those pins drop.
        if (metrics_ && !counted_miss) {
          metrics_->AdapterMiss("device");
          metrics_->AdapterHit("host");
        }
        tier_bytes_[1] -= e->current->bytes;
        tier_bytes_[0] += e->current->bytes;
        e->tier = Tier::kDevice;
        EvictDeviceLocked(0, e);
        EnforceHostBudgetLocked();
      } else if (metrics_ && !counted_miss) {
        metrics_->AdapterHit("device");
      }
      e->last_use = ++tick_;
      ++e->current->pins;
      UpdateGaugesLocked();
      return AdapterHandle(this, e->current);
    }
    std::shared_ptr<PendingLoad> p;
    if (e != nullptr && e->pending) {
      p = e->pending;
    } else {
      std::string dir = e != nullptr && !e->explicit_path.empty() ? e->explicit_path : "";
      if (dir.empty()) {
        if (!InStore(id))
          return absl::NotFoundError(absl::StrCat(
              "adapter_id: '", id, "' is not loaded and not in the adapter store"));
        dir = StorePath(id);
      }
      if (e == nullptr) {
        e = &entries_[id];
        e->id = id;
      }
      p = StartLoadLocked(e, dir);
    }
    if (metrics_ && !counted_miss) {  // a miss in both memory tiers: read from disk
      metrics_->AdapterMiss("device");
      metrics_->AdapterMiss("host");
    }
    counted_miss = true;
    UpdateGaugesLocked();
    if (!WaitLoadLocked(lock, p, deadline))
      return absl::UnavailableError(
          absl::StrCat("adapter '", id, "' is still loading; gave up waiting"));
    if (!p->status.ok()) return p->status;
    if (attempt > 8)
      return absl::UnavailableError(absl::StrCat("adapter '", id, "' keeps being evicted"));
  }
}

absl::StatusOr<std::pair<AdapterInfo, double>> AdapterRegistry::Load(
    const std::string& id, std::optional<std::string> path, bool replace, absl::Time deadline) {
  if (absl::Status s = ValidateId(id); !s.ok()) return s;
  if (path && !path->empty()) {
    if (!options_.allow_paths)
      return absl::PermissionDeniedError("path: loading adapters from paths is disabled");
    std::error_code ec;
    if (!fs::is_directory(*path, ec))
      return absl::NotFoundError(absl::StrCat("path: '", *path, "' is not a directory"));
  } else {
    path.reset();
  }
  std::unique_lock<std::mutex> lock(mu_);
  auto it = entries_.find(id);
  Entry* e = it == entries_.end() ? nullptr : &it->second;
  if (e != nullptr && e->current && !replace && !path) {
    e->last_use = ++tick_;
    return std::make_pair(InfoLocked(*e), 0.0);
  }
  // Wait for a load in progress first (it may be the version we want).
  if (e != nullptr && e->pending) {
    auto p = e->pending;
    if (!WaitLoadLocked(lock, p, deadline))
      return absl::DeadlineExceededError(absl::StrCat("adapter '", id, "' is still loading"));
    it = entries_.find(id);
    e = it == entries_.end() ? nullptr : &it->second;
    if (!path && !replace && e != nullptr && e->current)
      return std::make_pair(InfoLocked(*e), p->load_ms);
  }
  std::string dir;
  if (path) {
    dir = *path;
  } else if (e != nullptr && !e->explicit_path.empty()) {
    dir = e->explicit_path;
  } else {
    if (!InStore(id))
      return absl::NotFoundError(
          absl::StrCat("adapter_id: '", id, "' is not in the adapter store"));
    dir = StorePath(id);
  }
  if (e == nullptr) {
    e = &entries_[id];
    e->id = id;
  }
  if (path) e->explicit_path = *path;
  auto p = StartLoadLocked(e, dir);
  UpdateGaugesLocked();
  if (!WaitLoadLocked(lock, p, deadline))
    return absl::DeadlineExceededError(absl::StrCat("adapter '", id, "' is still loading"));
  if (!p->status.ok()) return p->status;
  it = entries_.find(id);
  if (it == entries_.end()) return absl::AbortedError("adapter was unloaded while loading");
  return std::make_pair(InfoLocked(it->second), p->load_ms);
}

absl::StatusOr<double> AdapterRegistry::Unload(const std::string& id, absl::Time deadline) {
  if (absl::Status s = ValidateId(id); !s.ok()) return s;
  const auto t0 = std::chrono::steady_clock::now();
  std::unique_lock<std::mutex> lock(mu_);
  auto it = entries_.find(id);
  if (it == entries_.end()) {
    if (InStore(id)) return 0.0;  // nothing resident
    return absl::NotFoundError(absl::StrCat("adapter_id: '", id, "' is not loaded"));
  }
  if (it->second.pending) {
    auto p = it->second.pending;
    if (!WaitLoadLocked(lock, p, deadline))
      return absl::DeadlineExceededError(absl::StrCat("adapter '", id, "' is still loading"));
    it = entries_.find(id);
    if (it == entries_.end()) return 0.0;
  }
  DetachLocked(&it->second);
  if (!it->second.explicit_path.empty() || !InStore(id)) entries_.erase(it);
  UpdateGaugesLocked();
  // Wait for the users of every detached (retired) version of this id.
  auto in_use = [&] {
    for (const auto& v : retired_)
      if (v->id == id && v->pins > 0) return true;
    return false;
  };
  while (in_use()) {
    if (absl::Now() >= deadline)
      return absl::DeadlineExceededError(absl::StrCat(
          "adapter '", id, "' is still used by running sequences; it is unloaded when they end"));
    cv_.wait_for(lock, std::chrono::milliseconds(20));
  }
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

AdapterInfo AdapterRegistry::InfoLocked(const Entry& e) const {
  AdapterInfo info;
  info.id = e.id;
  info.last_error = e.last_error.ok() ? "" : e.last_error.ToString();
  if (e.current) {
    info.state = AdapterState::kReady;
    info.tier = e.tier;
    info.version = e.current->version;
    info.stored_rank = e.current->adapter->max_rank();
    info.metadata = e.current->metadata;
    info.has_metadata = true;
    info.bytes = e.current->bytes;
    info.active_sequences = e.current->pins;
    info.path = e.current->path;
    return info;
  }
  info.path = e.explicit_path.empty() ? StorePath(e.id) : e.explicit_path;
  info.tier = Tier::kDisk;
  if (e.pending) {
    info.state = AdapterState::kLoading;
  } else {
    bool draining = false;
    for (const auto& v : retired_) draining |= v->id == e.id;
    info.state = draining ? AdapterState::kUnloading
                          : (!e.last_error.ok() ? AdapterState::kFailed : AdapterState::kOnDisk);
  }
  return info;
}

AdapterInfo AdapterRegistry::StoreOnlyInfo(const std::string& id) const {
  AdapterInfo info;
  info.id = id;
  info.state = AdapterState::kOnDisk;
  info.tier = Tier::kDisk;
  info.path = StorePath(id);
  auto meta = ReadAdapterMetadata(info.path);
  if (meta.ok()) {
    info.metadata = *meta;
    info.has_metadata = true;
    info.stored_rank = meta->rank;
  } else {
    info.last_error = meta.status().ToString();
  }
  return info;
}

absl::StatusOr<AdapterInfo> AdapterRegistry::Get(const std::string& id) const {
  if (absl::Status s = ValidateId(id); !s.ok()) return s;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = entries_.find(id);
    if (it != entries_.end()) {
      AdapterInfo info = InfoLocked(it->second);
      if (!info.has_metadata && InStore(id)) {
        AdapterInfo disk = StoreOnlyInfo(id);
        info.metadata = disk.metadata;
        info.has_metadata = disk.has_metadata;
        info.stored_rank = disk.stored_rank;
      }
      return info;
    }
  }
  if (InStore(id)) return StoreOnlyInfo(id);
  return absl::NotFoundError(
      absl::StrCat("adapter_id: '", id, "' is not loaded and not in the adapter store"));
}

std::vector<AdapterInfo> AdapterRegistry::List(bool include_store) const {
  std::vector<AdapterInfo> out;
  std::set<std::string> seen;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& [id, e] : entries_) {
      out.push_back(InfoLocked(e));
      seen.insert(id);
    }
  }
  if (include_store && !options_.store_dir.empty()) {
    std::error_code ec;
    std::vector<std::string> ids;
    for (fs::directory_iterator d(options_.store_dir, ec), end; !ec && d != end; d.increment(ec)) {
      const std::string name = d->path().filename().string();
      if (seen.count(name) || !ValidateId(name).ok() || name[0] == '.') continue;
      std::error_code ec2;
      if (d->is_directory(ec2)) ids.push_back(name);
    }
    std::sort(ids.begin(), ids.end());
    for (const auto& id : ids) out.push_back(StoreOnlyInfo(id));
  }
  return out;
}

RegistryStats AdapterRegistry::Stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  RegistryStats s;
  for (int t = 0; t < kNumTiers; ++t) s.bytes[t] = tier_bytes_[t];
  for (const auto& [id, e] : entries_)
    if (e.current) {
      ++s.resident[static_cast<int>(e.tier)];
      s.pinned_versions += e.current->pins > 0;
    }
  s.pinned_versions += static_cast<int>(retired_.size());
  return s;
}

void AdapterRegistry::UpdateGaugesLocked() {
  if (!metrics_) return;
  int n[2] = {0, 0};
  for (const auto& [id, e] : entries_)
    if (e.current && e.tier != Tier::kDisk) ++n[static_cast<int>(e.tier)];
  metrics_->SetAdapterTier("device", static_cast<double>(tier_bytes_[0]), n[0]);
  metrics_->SetAdapterTier("host", static_cast<double>(tier_bytes_[1]), n[1]);
}

}  // namespace eora::server
