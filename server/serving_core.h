// ServingCore: everything the inference API does, without sockets or protobuf.
//
// It validates a request (errors name the field), tokenizes the prompt, pins
// the adapter through the registry (loading it if needed, off the serving loop),
// picks the rank, and hands the request to the Scheduler. The gRPC services in
// grpc_services.h only convert between protobuf and these types.
//
// Threading contract: all methods are thread-safe.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "engine/model.h"
#include "engine/tokenizer.h"
#include "server/adapter_registry.h"
#include "server/request.h"
#include "server/scheduler.h"

namespace eora::server {

struct ServingCoreOptions {
  // max_new_tokens when a request leaves it 0. Default 128.
  int default_max_new_tokens = 128;
  // Upper bound of max_new_tokens. Default 4096 (the context also bounds it).
  int max_new_tokens_limit = 4096;
  std::string model_path;       // for ModelInfo
  std::string compressed_path;  // for ModelInfo
  // GenerateStream sends one message per this many tokens (the first token at
  // once, the rest of the output with the final message), like vLLM's
  // --stream-interval. Default 1: every token.
  int stream_interval = 1;
};

struct ModelSummary {
  std::string model_path, compressed_path, architecture, fingerprint;
  int vocab_size = 0, context_length = 0, hidden_size = 0, num_layers = 0, num_heads = 0,
      num_kv_heads = 0, bos_id = -1, eos_id = -1;
  int max_running = 0, max_queue = 0, default_max_new_tokens = 0;
};

class ServingCore {
 public:
  // None owned; all must outlive the core.
  ServingCore(const Model* model, const Tokenizer* tokenizer, AdapterRegistry* registry,
              Scheduler* scheduler, ServingCoreOptions options);

  // Validates and queues a generation. Errors: INVALID_ARGUMENT (field named),
  // NOT_FOUND / FAILED_PRECONDITION (adapter), RESOURCE_EXHAUSTED (queue full),
  // UNAVAILABLE (shutting down, or the adapter is still loading at `deadline`).
  absl::StatusOr<std::shared_ptr<RequestState>> StartGenerate(const GenerateParams& params,
                                                              absl::Time deadline);
  // Tokens and pieces of `text` (FAILED_PRECONDITION without a tokenizer).
  absl::Status Tokenize(const std::string& text, bool skip_bos, std::vector<int>* ids,
                        std::vector<std::string>* pieces) const;
  ModelSummary Summary() const;
  int stream_interval() const { return options_.stream_interval; }

  AdapterRegistry* registry() { return registry_; }
  Scheduler* scheduler() { return scheduler_; }

 private:
  absl::Status Validate(const GenerateParams& p) const;

  const Model* model_;
  const Tokenizer* tokenizer_;
  AdapterRegistry* registry_;
  Scheduler* scheduler_;
  const ServingCoreOptions options_;
};

}  // namespace eora::server
