#include "server/scheduling_policy.h"

namespace eora::server {

void FcfsPriorityPolicy::Push(const QueuedRequest& r) {
  order_.emplace(-r.priority, r.seq);
  by_seq_.emplace(r.seq, r.priority);
}

std::optional<uint64_t> FcfsPriorityPolicy::Next() const {
  if (order_.empty()) return std::nullopt;
  return std::get<1>(*order_.begin());
}

void FcfsPriorityPolicy::Remove(uint64_t seq) {
  auto it = by_seq_.lower_bound({seq, INT32_MIN});
  if (it == by_seq_.end() || std::get<0>(*it) != seq) return;
  order_.erase({-std::get<1>(*it), seq});
  by_seq_.erase(it);
}

std::unique_ptr<SchedulingPolicy> MakeSchedulingPolicy(const std::string& name) {
  if (name == "fcfs" || name.empty()) return std::make_unique<FcfsPriorityPolicy>();
  return nullptr;
}

}  // namespace eora::server
