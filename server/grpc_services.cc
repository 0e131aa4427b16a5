#include "server/grpc_services.h"

#include <chrono>

namespace eora::server {
namespace {

absl::Time DeadlineOf(const grpc::ServerContext* ctx) {
  const auto d = ctx->deadline();
  if (d == std::chrono::system_clock::time_point::max()) return absl::InfiniteFuture();
  return absl::FromChrono(d);
}

GenerateParams FromProto(const eora::v1::GenerateRequest& r) {
  GenerateParams p;
  p.adapter_id = r.adapter_id();
  p.prompt = r.prompt();
  p.prompt_ids.assign(r.prompt_token_ids().begin(), r.prompt_token_ids().end());
  p.skip_bos = r.skip_bos();
  p.max_new_tokens = r.max_new_tokens();
  p.temperature = r.temperature();
  p.top_k = r.top_k();
  p.top_p = r.top_p();
  p.seed = r.seed();
  p.stop.assign(r.stop().begin(), r.stop().end());
  p.stop_token_ids.assign(r.stop_token_ids().begin(), r.stop_token_ids().end());
  p.ignore_eos = r.ignore_eos();
  p.rank = r.rank();
  if (r.has_slo()) {
    p.slo_ttft_ms = r.slo().ttft_ms();
    p.slo_tpot_ms = r.slo().tpot_ms();
    p.slo_max_perplexity = r.slo().max_perplexity();
  }
  p.priority = r.priority();
  return p;
}

void FinalToProto(const GenerateUpdate& u, eora::v1::GenerateResponse* out) {
  out->set_finish_reason(u.finish_reason);
  out->set_prompt_tokens(u.prompt_tokens);
  out->set_generated_tokens(u.generated_tokens);
  out->set_rank_used(u.rank_used);
  out->set_adapter_id(u.adapter_id);
  out->set_adapter_version(u.adapter_version);
  auto* t = out->mutable_timings();
  t->set_queue_ms(std::max(0.0, u.timings.queue_ms));
  t->set_ttft_ms(std::max(0.0, u.timings.ttft_ms));
  t->set_tpot_ms(std::max(0.0, u.timings.tpot_ms));
  t->set_e2e_ms(std::max(0.0, u.timings.e2e_ms));
}

eora::v1::AdapterState StateToProto(AdapterState s) {
  switch (s) {
    case AdapterState::kOnDisk: return eora::v1::ADAPTER_STATE_ON_DISK;
    case AdapterState::kLoading: return eora::v1::ADAPTER_STATE_LOADING;
    case AdapterState::kReady: return eora::v1::ADAPTER_STATE_READY;
    case AdapterState::kUnloading: return eora::v1::ADAPTER_STATE_UNLOADING;
    case AdapterState::kFailed: return eora::v1::ADAPTER_STATE_FAILED;
  }
  return eora::v1::ADAPTER_STATE_UNSPECIFIED;
}

eora::v1::Tier TierToProto(Tier t) {
  switch (t) {
    case Tier::kDevice: return eora::v1::TIER_DEVICE;
    case Tier::kHost: return eora::v1::TIER_HOST;
    case Tier::kDisk: return eora::v1::TIER_DISK;
  }
  return eora::v1::TIER_UNSPECIFIED;
}

void InfoToProto(const AdapterInfo& i, eora::v1::AdapterInfo* out) {
  out->set_adapter_id(i.id);
  out->set_state(StateToProto(i.state));
  out->set_tier(TierToProto(i.tier));
  out->set_version(i.version);
  out->set_stored_rank(i.stored_rank);
  if (i.has_metadata) {
    for (const auto& q : i.metadata.profile) {
      out->add_profiled_ranks(q.rank);
      auto* rq = out->add_quality_profile();
      rq->set_rank(q.rank);
      rq->set_nll(q.nll);
      rq->set_perplexity(q.ppl);
    }
    out->set_method(i.metadata.method);
    out->set_base_model(i.metadata.base_model);
    out->set_factor_bits(i.metadata.factor_bits);
  }
  out->set_bytes(i.bytes);
  out->set_active_sequences(i.active_sequences);
  out->set_path(i.path);
  out->set_last_error(i.last_error);
}

}  // namespace

// ---- InferenceService ------------------------------------------------------------

grpc::Status InferenceServiceImpl::Done(const char* method, grpc::Status s) {
  if (metrics_) metrics_->RecordRpc(method, GrpcCodeName(s.error_code()));
  return s;
}

grpc::Status InferenceServiceImpl::Generate(grpc::ServerContext* ctx,
                                            const eora::v1::GenerateRequest* req,
                                            eora::v1::GenerateResponse* resp) {
  GenerateParams params = FromProto(*req);
  params.notify_every = 0;  // one response: wake the handler only when finished
  auto state = core_->StartGenerate(params, DeadlineOf(ctx));
  if (!state.ok()) return Done("Generate", ToGrpcStatus(state.status()));
  GenerateUpdate u;
  for (;;) {
    if ((*state)->Poll(absl::Milliseconds(50), &u)) {
      resp->mutable_text()->append(u.text);
      for (int t : u.tokens) resp->add_token_ids(static_cast<uint32_t>(t));
      if (u.finished) break;
    }
    if (ctx->IsCancelled()) (*state)->Cancel();
  }
  if (!u.status.ok()) {
    resp->Clear();
    return Done("Generate", ToGrpcStatus(u.status));
  }
  FinalToProto(u, resp);
  return Done("Generate", grpc::Status::OK);
}

grpc::Status InferenceServiceImpl::GenerateStream(
    grpc::ServerContext* ctx, const eora::v1::GenerateRequest* req,
    grpc::ServerWriter<eora::v1::GenerateResponse>* writer) {
  GenerateParams params = FromProto(*req);
  params.notify_every = core_->stream_interval();
  auto state = core_->StartGenerate(params, DeadlineOf(ctx));
  if (!state.ok()) return Done("GenerateStream", ToGrpcStatus(state.status()));
  GenerateUpdate u;
  bool write_failed = false;
  for (;;) {
    if ((*state)->Poll(absl::Milliseconds(50), &u)) {
      if (u.finished && !u.status.ok()) break;
      eora::v1::GenerateResponse msg;
      msg.set_text(u.text);
      for (int t : u.tokens) msg.add_token_ids(static_cast<uint32_t>(t));
      if (u.finished) FinalToProto(u, &msg);
      if (!write_failed && (!u.text.empty() || !u.tokens.empty() || u.finished))
        write_failed = !writer->Write(msg);
      if (write_failed) (*state)->Cancel();
      if (u.finished) break;
    }
    if (ctx->IsCancelled()) (*state)->Cancel();
  }
  if (!u.status.ok()) return Done("GenerateStream", ToGrpcStatus(u.status));
  if (write_failed) return Done("GenerateStream", grpc::Status(grpc::CANCELLED, "client went away"));
  return Done("GenerateStream", grpc::Status::OK);
}

grpc::Status InferenceServiceImpl::Tokenize(grpc::ServerContext*,
                                            const eora::v1::TokenizeRequest* req,
                                            eora::v1::TokenizeResponse* resp) {
  std::vector<int> ids;
  std::vector<std::string> pieces;
  absl::Status s = core_->Tokenize(req->text(), req->skip_bos(), &ids, &pieces);
  if (!s.ok()) return Done("Tokenize", ToGrpcStatus(s));
  for (int id : ids) resp->add_token_ids(static_cast<uint32_t>(id));
  for (auto& p : pieces) resp->add_pieces(SanitizeUtf8(p));
  return Done("Tokenize", grpc::Status::OK);
}

grpc::Status InferenceServiceImpl::ModelInfo(grpc::ServerContext*,
                                             const eora::v1::ModelInfoRequest*,
                                             eora::v1::ModelInfoResponse* resp) {
  const ModelSummary s = core_->Summary();
  resp->set_model_path(s.model_path);
  resp->set_architecture(s.architecture);
  resp->set_vocab_size(s.vocab_size);
  resp->set_context_length(s.context_length);
  resp->set_hidden_size(s.hidden_size);
  resp->set_num_layers(s.num_layers);
  resp->set_num_heads(s.num_heads);
  resp->set_num_kv_heads(s.num_kv_heads);
  resp->set_architecture_fingerprint(s.fingerprint);
  resp->set_compressed_path(s.compressed_path);
  resp->set_max_running(s.max_running);
  resp->set_max_queue(s.max_queue);
  resp->set_default_max_new_tokens(s.default_max_new_tokens);
  resp->set_bos_id(s.bos_id < 0 ? 0 : s.bos_id);
  resp->set_eos_id(s.eos_id < 0 ? 0 : s.eos_id);
  return Done("ModelInfo", grpc::Status::OK);
}

// ---- AdapterService --------------------------------------------------------------

grpc::Status AdapterServiceImpl::Done(const char* method, grpc::Status s) {
  if (metrics_) metrics_->RecordRpc(method, GrpcCodeName(s.error_code()));
  return s;
}

grpc::Status AdapterServiceImpl::LoadAdapter(grpc::ServerContext* ctx,
                                             const eora::v1::LoadAdapterRequest* req,
                                             eora::v1::LoadAdapterResponse* resp) {
  std::optional<std::string> path;
  if (!req->path().empty()) path = req->path();
  auto r = registry_->Load(req->adapter_id(), path, req->replace(), DeadlineOf(ctx));
  if (!r.ok()) return Done("LoadAdapter", ToGrpcStatus(r.status()));
  InfoToProto(r->first, resp->mutable_adapter());
  resp->set_load_ms(r->second);
  return Done("LoadAdapter", grpc::Status::OK);
}

grpc::Status AdapterServiceImpl::UnloadAdapter(grpc::ServerContext* ctx,
                                               const eora::v1::UnloadAdapterRequest* req,
                                               eora::v1::UnloadAdapterResponse* resp) {
  auto r = registry_->Unload(req->adapter_id(), DeadlineOf(ctx));
  if (!r.ok()) return Done("UnloadAdapter", ToGrpcStatus(r.status()));
  resp->set_waited_ms(*r);
  return Done("UnloadAdapter", grpc::Status::OK);
}

grpc::Status AdapterServiceImpl::ListAdapters(grpc::ServerContext*,
                                              const eora::v1::ListAdaptersRequest* req,
                                              eora::v1::ListAdaptersResponse* resp) {
  for (const auto& info : registry_->List(req->include_store()))
    InfoToProto(info, resp->add_adapters());
  return Done("ListAdapters", grpc::Status::OK);
}

grpc::Status AdapterServiceImpl::GetAdapter(grpc::ServerContext*,
                                            const eora::v1::GetAdapterRequest* req,
                                            eora::v1::AdapterInfo* resp) {
  auto r = registry_->Get(req->adapter_id());
  if (!r.ok()) return Done("GetAdapter", ToGrpcStatus(r.status()));
  InfoToProto(*r, resp);
  return Done("GetAdapter", grpc::Status::OK);
}

}  // namespace eora::server
