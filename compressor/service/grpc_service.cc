#include "compressor/service/grpc_service.h"

#include "absl/strings/str_cat.h"
#include "daemon/daemon.h"

namespace eora::compress::service {

using daemon::GrpcCodeName;
using daemon::ToGrpcStatus;

namespace {

eora::v1::JobState StateToProto(JobState s) {
  switch (s) {
    case JobState::kQueued:
      return eora::v1::JOB_STATE_QUEUED;
    case JobState::kRunning:
      return eora::v1::JOB_STATE_RUNNING;
    case JobState::kSucceeded:
      return eora::v1::JOB_STATE_SUCCEEDED;
    case JobState::kFailed:
      return eora::v1::JOB_STATE_FAILED;
    case JobState::kCancelled:
      return eora::v1::JOB_STATE_CANCELLED;
  }
  return eora::v1::JOB_STATE_UNSPECIFIED;
}

void SpecToProto(const JobSpec& s, eora::v1::CreateAdapterJobRequest* r) {
  r->set_base_model(s.base_model);
  if (!s.compress_method.empty()) {
    r->mutable_compression()->set_method(s.compress_method);
    r->mutable_compression()->set_bits(static_cast<uint32_t>(s.bits));
    r->mutable_compression()->set_group_size(static_cast<uint32_t>(s.group_size));
  } else {
    r->set_compressed_base_path(s.compressed_base_path);
  }
  r->set_compensation_method(s.compensation_method);
  r->set_max_rank(static_cast<uint32_t>(s.max_rank));
  r->set_adapter_bits(static_cast<uint32_t>(s.adapter_bits));
  for (const auto& id : s.calibration_set_ids) r->add_calibration_set_ids(id);
  r->set_seq_len(static_cast<uint32_t>(s.seq_len));
  r->set_num_seqs(static_cast<uint32_t>(s.num_seqs));
  r->set_heldout_seqs(static_cast<uint32_t>(s.heldout_seqs));
  r->set_target_adapter_id(s.target_adapter_id);
  r->set_publish(s.publish);
  r->set_replace(s.replace);
}

void CalibrationToProto(const CalibrationSetRecord& r, int active, bool dedup,
                        eora::v1::CalibrationSetInfo* out) {
  out->set_id(r.id);
  out->set_name(r.name);
  out->set_kind(r.kind == CalibrationKind::kTokenIds ? eora::v1::CALIBRATION_KIND_TOKEN_IDS
                                                     : eora::v1::CALIBRATION_KIND_TEXT);
  out->set_content_hash(r.content_hash);
  out->set_bytes(r.bytes);
  out->set_token_count(r.token_count);
  out->set_tokenizer_model(r.tokenizer_model);
  out->set_created_at(r.created_at);
  out->set_deduplicated(dedup);
  out->set_active_jobs(static_cast<uint32_t>(active));
}

// Out-of-range protobuf integers must not wrap into valid ones.
int Clamp(uint32_t v) { return v > 1u << 30 ? 1 << 30 : static_cast<int>(v); }

}  // namespace

void JobToProto(const JobRecord& r, eora::v1::Job* out) {
  out->set_id(r.id);
  out->set_state(StateToProto(r.state));
  SpecToProto(r.spec, out->mutable_request());
  auto* p = out->mutable_progress();
  p->set_stage(r.progress.stage);
  p->set_layer(static_cast<uint32_t>(r.progress.layer));
  p->set_num_layers(static_cast<uint32_t>(r.progress.num_layers));
  p->set_elapsed_s(r.progress.elapsed_s);
  p->set_eta_s(r.progress.eta_s);
  out->set_error(r.error);
  for (const auto& w : r.warnings) out->add_warnings(w);
  out->set_created_at(r.created_at);
  out->set_started_at(r.started_at);
  out->set_finished_at(r.finished_at);
  out->set_adapter_path(r.adapter_path);
  out->set_compressed_base_path(r.compressed_base_path);
  for (const RankQuality& q : r.profile) {
    auto* pq = out->add_quality_profile();
    pq->set_rank(static_cast<uint32_t>(q.rank));
    pq->set_nll(q.nll);
    pq->set_perplexity(q.ppl);
  }
  out->set_heldout_nll_compressed(r.heldout_nll_compressed);
  out->set_heldout_nll_fp(r.heldout_nll_fp);
  for (const auto& t : r.published_to) out->add_published_to(t);
  out->set_calibration_hash(r.calibration_hash);
}

JobSpec SpecFromProto(const eora::v1::CreateAdapterJobRequest& r) {
  JobSpec s;
  s.base_model = r.base_model();
  if (r.has_compression()) {
    s.compress_method = r.compression().method();
    s.bits = Clamp(r.compression().bits());
    s.group_size = Clamp(r.compression().group_size());
    // An empty method with a compression message is still "a spec" for validation.
    if (s.compress_method.empty()) s.compress_method = "(empty)";
  }
  s.compressed_base_path = r.compressed_base_path();
  s.compensation_method = r.compensation_method();
  s.max_rank = Clamp(r.max_rank());
  s.adapter_bits = Clamp(r.adapter_bits());
  s.calibration_set_ids.assign(r.calibration_set_ids().begin(), r.calibration_set_ids().end());
  s.seq_len = Clamp(r.seq_len());
  s.num_seqs = Clamp(r.num_seqs());
  s.heldout_seqs = r.has_heldout_seqs() ? Clamp(r.heldout_seqs()) : 16;
  s.target_adapter_id = r.target_adapter_id();
  s.publish = r.publish();
  s.replace = r.replace();
  return s;
}

grpc::Status CompressionServiceImpl::Done(const char* method, const grpc::Status& s) {
  if (metrics_) metrics_->RecordRpc(method, GrpcCodeName(s.error_code()));
  return s;
}

grpc::Status CompressionServiceImpl::UploadCalibrationSet(
    grpc::ServerContext*, grpc::ServerReader<eora::v1::UploadCalibrationChunk>* reader,
    eora::v1::CalibrationSetInfo* resp) {
  const char* kMethod = "UploadCalibrationSet";
  eora::v1::UploadCalibrationChunk chunk;
  std::string name, tokenizer_model, content;
  int kind = 0;  // 0 unknown, else CalibrationKind
  bool doc_open = false;
  const uint64_t limit = core_->max_upload_bytes();
  while (reader->Read(&chunk)) {
    if (name.empty()) name = chunk.name();
    if (tokenizer_model.empty()) tokenizer_model = chunk.tokenizer_model();
    int k = 0;
    if (chunk.data_case() == eora::v1::UploadCalibrationChunk::kText)
      k = static_cast<int>(CalibrationKind::kText);
    if (chunk.data_case() == eora::v1::UploadCalibrationChunk::kTokenIds)
      k = static_cast<int>(CalibrationKind::kTokenIds);
    if (k == 0) continue;
    if (kind != 0 && k != kind)
      return Done(kMethod, grpc::Status(grpc::INVALID_ARGUMENT,
                                        "data: an upload carries text or token ids, not both"));
    kind = k;
    if (k == static_cast<int>(CalibrationKind::kText)) {
      content += chunk.text();
    } else {
      for (uint32_t id : chunk.token_ids().ids()) {
        if (doc_open) content += ' ';
        content += std::to_string(id);
        doc_open = true;
        if (content.size() > limit) break;
      }
      if (chunk.token_ids().document_end() && doc_open) {
        content += '\n';
        doc_open = false;
      }
    }
    if (content.size() > limit)
      return Done(kMethod,
                  grpc::Status(grpc::RESOURCE_EXHAUSTED,
                               absl::StrCat("the upload is larger than the limit of ", limit,
                                            " bytes (--max-upload-mb); nothing was stored")));
  }
  if (doc_open) content += '\n';
  if (kind == 0)
    return Done(kMethod,
                grpc::Status(grpc::INVALID_ARGUMENT, "data: the upload has no text or token ids"));
  auto r =
      core_->UploadCalibration(name, static_cast<CalibrationKind>(kind), content, tokenizer_model);
  if (!r.ok()) return Done(kMethod, ToGrpcStatus(r.status()));
  CalibrationToProto(r->record, r->active_jobs, r->deduplicated, resp);
  return Done(kMethod, grpc::Status::OK);
}

grpc::Status CompressionServiceImpl::ListCalibrationSets(
    grpc::ServerContext*, const eora::v1::ListCalibrationSetsRequest*,
    eora::v1::ListCalibrationSetsResponse* resp) {
  auto sets = core_->ListCalibrationSets();
  if (!sets.ok()) return Done("ListCalibrationSets", ToGrpcStatus(sets.status()));
  for (const auto& [rec, active] : *sets) CalibrationToProto(rec, active, false, resp->add_sets());
  return Done("ListCalibrationSets", grpc::Status::OK);
}

grpc::Status CompressionServiceImpl::DeleteCalibrationSet(
    grpc::ServerContext*, const eora::v1::DeleteCalibrationSetRequest* req,
    eora::v1::DeleteCalibrationSetResponse* resp) {
  auto freed = core_->DeleteCalibrationSet(req->id());
  if (!freed.ok()) return Done("DeleteCalibrationSet", ToGrpcStatus(freed.status()));
  resp->set_bytes_freed(*freed);
  return Done("DeleteCalibrationSet", grpc::Status::OK);
}

grpc::Status CompressionServiceImpl::CreateAdapterJob(grpc::ServerContext*,
                                                      const eora::v1::CreateAdapterJobRequest* req,
                                                      eora::v1::Job* resp) {
  auto job = core_->CreateJob(SpecFromProto(*req));
  if (!job.ok()) return Done("CreateAdapterJob", ToGrpcStatus(job.status()));
  JobToProto(*job, resp);
  return Done("CreateAdapterJob", grpc::Status::OK);
}

grpc::Status CompressionServiceImpl::GetJob(grpc::ServerContext*,
                                            const eora::v1::GetJobRequest* req,
                                            eora::v1::Job* resp) {
  auto job = core_->GetJob(req->id());
  if (!job.ok()) return Done("GetJob", ToGrpcStatus(job.status()));
  JobToProto(*job, resp);
  return Done("GetJob", grpc::Status::OK);
}

grpc::Status CompressionServiceImpl::ListJobs(grpc::ServerContext*,
                                              const eora::v1::ListJobsRequest* req,
                                              eora::v1::ListJobsResponse* resp) {
  std::vector<JobState> states;
  for (int s : req->states()) {
    if (s < static_cast<int>(JobState::kQueued) || s > static_cast<int>(JobState::kCancelled))
      return Done("ListJobs",
                  grpc::Status(grpc::INVALID_ARGUMENT, absl::StrCat("states: unknown state ", s)));
    states.push_back(static_cast<JobState>(s));
  }
  auto jobs = core_->ListJobs(states, Clamp(req->limit()));
  if (!jobs.ok()) return Done("ListJobs", ToGrpcStatus(jobs.status()));
  for (const JobRecord& j : *jobs) JobToProto(j, resp->add_jobs());
  return Done("ListJobs", grpc::Status::OK);
}

grpc::Status CompressionServiceImpl::CancelJob(grpc::ServerContext*,
                                               const eora::v1::CancelJobRequest* req,
                                               eora::v1::Job* resp) {
  auto job = core_->CancelJob(req->id());
  if (!job.ok()) return Done("CancelJob", ToGrpcStatus(job.status()));
  JobToProto(*job, resp);
  return Done("CancelJob", grpc::Status::OK);
}

grpc::Status CompressionServiceImpl::WatchJob(grpc::ServerContext* ctx,
                                              const eora::v1::WatchJobRequest* req,
                                              grpc::ServerWriter<eora::v1::Job>* writer) {
  auto job = core_->GetJob(req->id());
  if (!job.ok()) return Done("WatchJob", ToGrpcStatus(job.status()));
  uint64_t seen = 0;
  std::string last;
  for (;;) {
    eora::v1::Job msg;
    JobToProto(*job, &msg);
    std::string bytes = msg.SerializeAsString();
    if (bytes != last) {
      if (!writer->Write(msg))
        return Done("WatchJob", grpc::Status(grpc::CANCELLED, "client went away"));
      last = std::move(bytes);
    }
    if (IsTerminal(job->state)) return Done("WatchJob", grpc::Status::OK);
    if (ctx->IsCancelled())
      return Done("WatchJob", grpc::Status(grpc::CANCELLED, "cancelled by the client"));
    job = core_->WaitForJob(req->id(), &seen, absl::Milliseconds(500));
    if (!job.ok()) return Done("WatchJob", ToGrpcStatus(job.status()));
  }
}

}  // namespace eora::compress::service
