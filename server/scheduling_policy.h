// The order in which admitted requests join the running batch.
//
// The scheduler keeps the requests; a policy only orders their sequence numbers.
// FcfsPriorityPolicy is the default; an SLO-aware policy (rank choice, latency
// targets) plugs in behind the same interface.
//
// Threading contract: called only with the scheduler's lock held; not thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <tuple>

#include "absl/time/time.h"

namespace eora::server {

// What a policy may look at.
struct QueuedRequest {
  uint64_t seq = 0;  // arrival order, unique
  int priority = 0;  // higher first
  absl::Time arrival;
  absl::Time deadline = absl::InfiniteFuture();
  int prompt_tokens = 0;
  int max_new_tokens = 0;
  std::string adapter_id;
  double slo_ttft_ms = 0, slo_tpot_ms = 0;
};

class SchedulingPolicy {
 public:
  virtual ~SchedulingPolicy() = default;
  virtual const char* name() const = 0;
  virtual void Push(const QueuedRequest& r) = 0;
  // The request that should join the batch next (nullopt when empty).
  virtual std::optional<uint64_t> Next() const = 0;
  virtual void Remove(uint64_t seq) = 0;
  virtual size_t size() const = 0;
};

// Highest priority first; first come, first served within a priority.
class FcfsPriorityPolicy : public SchedulingPolicy {
 public:
  const char* name() const override { return "fcfs"; }
  void Push(const QueuedRequest& r) override;
  std::optional<uint64_t> Next() const override;
  void Remove(uint64_t seq) override;
  size_t size() const override { return order_.size(); }

 private:
  std::set<std::tuple<int, uint64_t>> order_;  // (-priority, seq)
  std::set<std::tuple<uint64_t, int>> by_seq_;  // (seq, priority) for Remove
};

std::unique_ptr<SchedulingPolicy> MakeSchedulingPolicy(const std::string& name);  // "fcfs"

}  // namespace eora::server
