#include "server/request.h"

#include <chrono>

namespace eora::server {

bool RequestState::Poll(absl::Duration timeout, GenerateUpdate* out) {
  std::unique_lock<std::mutex> lock(mu_);
  if (!ready_ && !(finished_ && !delivered_final_))
    cv_.wait_for(lock, absl::ToChronoNanoseconds(timeout),
                 [&] { return ready_ || (finished_ && !delivered_final_); });
  if (!has_new_ && !(finished_ && !delivered_final_)) return false;
  *out = std::move(pending_);
  pending_ = GenerateUpdate{};
  has_new_ = false;
  ready_ = false;
  if (finished_) delivered_final_ = true;
  return true;
}

bool RequestState::Push(const std::vector<int>& tokens, const std::string& text) {
  bool wake = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    pending_.tokens.insert(pending_.tokens.end(), tokens.begin(), tokens.end());
    pending_.text += text;
    has_new_ = true;
    if (notify_every_ > 0 && !ready_ &&
        (!woke_first_ || static_cast<int>(pending_.tokens.size()) >= notify_every_)) {
      ready_ = true;
      woke_first_ = true;
      wake = true;
    }
  }
  if (wake) cv_.notify_all();
  return wake;
}

void RequestState::Finish(GenerateUpdate final_update) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    final_update.text = pending_.text + final_update.text;
    std::vector<int> toks = std::move(pending_.tokens);
    toks.insert(toks.end(), final_update.tokens.begin(), final_update.tokens.end());
    final_update.tokens = std::move(toks);
    final_update.finished = true;
    pending_ = std::move(final_update);
    has_new_ = true;
    ready_ = true;
    finished_ = true;
  }
  cv_.notify_all();
}

bool RequestState::finished() const {
  std::lock_guard<std::mutex> lock(mu_);
  return finished_;
}

}  // namespace eora::server
