#include "compressor/service/compressor_core.h"

#include <chrono>
#include <cmath>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "compressor/pipeline.h"
#include "compressor/service/files.h"
#include "engine/adapter_io.h"
#include "engine/compressed_model.h"
#include "engine/model_loader.h"
#include "engine/sha256.h"
#include "engine/thread_pool.h"

namespace eora::compress::service {
namespace fs = std::filesystem;

namespace {

double Now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

absl::Status Prefixed(const absl::Status& s, const std::string& prefix) {
  return absl::Status(s.code(), absl::StrCat(prefix, s.message()));
}

bool IsSparse(BaseMethod m) { return m == BaseMethod::kSparseGpt || m == BaseMethod::kWanda; }

const char* KindExtension(CalibrationKind k) {
  return k == CalibrationKind::kTokenIds ? ".tokens" : ".txt";
}

}  // namespace

absl::Status ValidateStoreName(const std::string& id, const char* field) {
  if (absl::Status s = ValidateAdapterId(id, field); !s.ok()) return s;
  // Dot names are the store's temporaries and the service's data directory.
  if (id[0] == '.')
    return absl::InvalidArgumentError(absl::StrCat(field, ": '", id, "' must not start with '.'"));
  return absl::OkStatus();
}

CompressorCore::CompressorCore(CoreOptions options, JobStore* store, PublishFn publish,
                               CompressorMetrics* metrics)
    : options_(std::move(options)),
      store_(store),
      publish_(std::move(publish)),
      metrics_(metrics) {}

CompressorCore::~CompressorCore() {
  if (started_ && !workers_.empty()) Drain(absl::ZeroDuration());
}

void CompressorCore::Log(const std::string& msg) const {
  if (options_.log) options_.log(msg);
}

std::string CompressorCore::CalibrationDir() const {
  return (fs::path(options_.data_dir) / "calibration").string();
}
std::string CompressorCore::CompressedDir() const {
  return (fs::path(options_.data_dir) / "compressed").string();
}

// ---- Startup and shutdown ----------------------------------------------------------

absl::Status CompressorCore::Start() {
  if (options_.models.empty()) return absl::InvalidArgumentError("no models configured");
  if (options_.workers < 1 || options_.max_queue < 0 || options_.threads_per_job < 1)
    return absl::InvalidArgumentError("workers and threads per job must be >= 1, max queue >= 0");
  std::error_code ec;
  for (const std::string& d : {options_.adapter_store, CalibrationDir(), CompressedDir()}) {
    fs::create_directories(d, ec);
    if (ec) return absl::UnavailableError(absl::StrCat(d, ": cannot create: ", ec.message()));
  }
  // Jobs that were running when the previous process died cannot be resumed in
  // the middle of a layer sweep: fail them, and remove what they left half-written.
  auto failed = store_->FailInterruptedJobs(
      "interrupted: eora-compressor stopped while the job was running (it is not resumed; "
      "create the job again)",
      Now());
  if (!failed.ok()) return failed.status();
  for (const JobRecord& r : *failed) {
    const int removed = RemoveStaleTemporaries(options_.adapter_store, r.spec.target_adapter_id);
    Log(absl::StrCat(
        r.id, " was running when the previous process stopped: marked failed",
        removed ? absl::StrCat(", removed ", removed, " partial adapter dir(s)") : ""));
  }
  RemoveStaleTemporaries(CalibrationDir(), "");
  RemoveStaleTemporaries(CompressedDir(), "");
  auto queued = store_->ListJobs({JobState::kQueued}, 0);
  if (!queued.ok()) return queued.status();
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = queued->rbegin(); it != queued->rend(); ++it) queue_.push_back(it->id);
  }
  if (!queued->empty()) Log(absl::StrCat("resuming ", queued->size(), " queued job(s)"));
  for (int i = 0; i < options_.workers; ++i) workers_.emplace_back([this] { WorkerLoop(); });
  started_ = true;
  RefreshGauges();
  return absl::OkStatus();
}

void CompressorCore::Drain(absl::Duration grace) {
  draining_ = true;
  {
    std::unique_lock<std::mutex> lock(mu_);
    work_cv_.notify_all();
    idle_cv_.wait_for(lock, absl::ToChronoNanoseconds(grace), [&] { return active_.empty(); });
    for (auto& [id, a] : active_) {
      a->shutdown = true;
      a->cancel = true;
    }
    stopping_ = true;
    work_cv_.notify_all();
  }
  for (std::thread& t : workers_)
    if (t.joinable()) t.join();
  workers_.clear();
}

// ---- Calibration sets --------------------------------------------------------------

absl::StatusOr<UploadResult> CompressorCore::UploadCalibration(const std::string& name,
                                                               CalibrationKind kind,
                                                               const std::string& content,
                                                               const std::string& tokenizer_model) {
  if (name.empty()) return absl::InvalidArgumentError("name: required");
  if (content.size() > options_.max_upload_bytes)
    return absl::ResourceExhaustedError(absl::StrCat("the upload is larger than the limit of ",
                                                     options_.max_upload_bytes,
                                                     " bytes (--max-upload-mb)"));
  if (content.empty()) return absl::InvalidArgumentError("the upload has no content");
  const std::string model_id =
      tokenizer_model.empty() ? options_.models.front().first : tokenizer_model;
  auto model = Model(model_id, "tokenizer_model");
  if (!model.ok()) return model.status();
  if (!(*model)->tokenizer)
    return absl::FailedPreconditionError(
        absl::StrCat("tokenizer_model: '", model_id, "' has no tokenizer"));
  auto tokens =
      CountCalibrationTokens(content, kind == CalibrationKind::kTokenIds, *(*model)->tokenizer);
  if (!tokens.ok()) return Prefixed(tokens.status(), "token_ids: ");
  if (*tokens == 0)
    return absl::InvalidArgumentError("the upload has no tokens (only separators or blanks)");

  Sha256 keyed;
  const char tag = static_cast<char>(kind);
  keyed.Update(&tag, 1);
  keyed.Update(content);
  CalibrationSetRecord rec;
  rec.id = "cs-" + keyed.HexFinal().substr(0, 32);
  rec.name = name;
  rec.kind = kind;
  rec.content_hash = "sha256:" + Sha256Hex(content);
  rec.bytes = content.size();
  rec.token_count = static_cast<uint64_t>(*tokens);
  rec.tokenizer_model = model_id;
  rec.file = rec.id + KindExtension(kind);
  rec.created_at = Now();

  UploadResult out;
  {
    std::lock_guard<std::mutex> lock(calib_mu_);
    auto existing = store_->GetCalibrationSet(rec.id);
    if (existing.ok()) {
      out.record = *existing;
      out.deduplicated = true;
    } else if (existing.status().code() != absl::StatusCode::kNotFound) {
      return existing.status();
    } else {
      const std::string path = (fs::path(CalibrationDir()) / rec.file).string();
      if (absl::Status s = WriteFileAtomic(path, content); !s.ok()) return s;
      auto inserted = store_->PutCalibrationSet(rec);
      if (!inserted.ok()) {
        std::error_code ec;
        fs::remove(path, ec);
        return inserted.status();
      }
      out.record = rec;
    }
  }
  auto active = store_->ActiveJobsUsing(out.record.id);
  out.active_jobs = active.ok() ? *active : 0;
  if (metrics_) metrics_->RecordUpload(out.deduplicated, content.size());
  Log(absl::StrCat("calibration set ", out.record.id, " '", out.record.name, "': ", content.size(),
                   " bytes, ", out.record.token_count, " tokens",
                   out.deduplicated ? " (already stored)" : ""));
  RefreshGauges();
  return out;
}

absl::StatusOr<std::vector<std::pair<CalibrationSetRecord, int>>>
CompressorCore::ListCalibrationSets() {
  auto sets = store_->ListCalibrationSets();
  if (!sets.ok()) return sets.status();
  std::vector<std::pair<CalibrationSetRecord, int>> out;
  for (CalibrationSetRecord& r : *sets) {
    auto n = store_->ActiveJobsUsing(r.id);
    if (!n.ok()) return n.status();
    out.emplace_back(std::move(r), *n);
  }
  return out;
}

absl::StatusOr<uint64_t> CompressorCore::DeleteCalibrationSet(const std::string& id) {
  if (id.empty()) return absl::InvalidArgumentError("id: required");
  std::lock_guard<std::mutex> lock(calib_mu_);
  auto rec = store_->DeleteCalibrationSet(id);
  if (!rec.ok()) return rec.status();
  std::error_code ec;
  fs::remove(fs::path(CalibrationDir()) / rec->file, ec);
  Log(absl::StrCat("deleted calibration set ", id));
  RefreshGauges();
  return rec->bytes;
}

absl::StatusOr<CalibrationSet> CompressorCore::BuildCalibration(const JobSpec& spec,
                                                                const ModelWeights& model) {
  std::string joined;
  CalibrationKind kind = CalibrationKind::kText;
  for (size_t i = 0; i < spec.calibration_set_ids.size(); ++i) {
    auto rec = store_->GetCalibrationSet(spec.calibration_set_ids[i]);
    if (!rec.ok()) return Prefixed(rec.status(), "calibration_set_ids: ");
    if (i > 0 && rec->kind != kind)
      return absl::InvalidArgumentError(
          "calibration_set_ids: the sets mix text and token ids; use sets of one kind");
    kind = rec->kind;
    auto content = ReadWholeFile((fs::path(CalibrationDir()) / rec->file).string());
    if (!content.ok()) return content.status();
    if (i > 0) joined += kind == CalibrationKind::kText ? "\n<|endoftext|>\n" : "\n";
    joined += *content;
  }
  if (!model.tokenizer)
    return absl::FailedPreconditionError(
        absl::StrCat("base_model: '", spec.base_model, "' has no tokenizer"));
  CalibrationOptions co;
  co.num_seqs = spec.num_seqs;
  co.seq_len = spec.seq_len;
  co.heldout_seqs = spec.heldout_seqs;
  auto set = kind == CalibrationKind::kTokenIds
                 ? CalibrationFromTokenIds(joined, model.tokenizer->bos_id(),
                                           model.tokenizer->vocab_size(), co)
                 : CalibrationFromText(joined, *model.tokenizer, co);
  if (!set.ok()) {
    // The request was checked; what is left is a set that is too small.
    return absl::FailedPreconditionError(absl::StrCat(
        "calibration_set_ids: too little data for num_seqs ", spec.num_seqs, " + heldout_seqs ",
        spec.heldout_seqs, " of seq_len ", spec.seq_len, ": ", set.status().message()));
  }
  set->source = absl::StrCat("calibration sets ", absl::StrJoin(spec.calibration_set_ids, ","));
  return set;
}

absl::StatusOr<std::shared_ptr<const ModelWeights>> CompressorCore::Model(const std::string& id,
                                                                          const char* field) {
  std::string path;
  std::vector<std::string> names;
  for (const auto& [name, p] : options_.models) {
    names.push_back(name);
    if (name == id) path = p;
  }
  if (path.empty())
    return absl::NotFoundError(
        absl::StrCat(field, ": '", id,
                     "' is not a configured model (--models: ", absl::StrJoin(names, ", "), ")"));
  std::lock_guard<std::mutex> lock(models_mu_);
  auto it = loaded_.find(id);
  if (it != loaded_.end()) return it->second;
  auto w = LoadModel(path);
  if (!w.ok()) return Prefixed(w.status(), absl::StrCat("model '", id, "' (", path, "): "));
  auto shared = std::make_shared<const ModelWeights>(std::move(*w));
  loaded_[id] = shared;
  return shared;
}

// ---- Jobs ----------------------------------------------------------------------------

absl::StatusOr<JobRecord> CompressorCore::CreateJob(JobSpec spec) {
  if (draining_) return absl::UnavailableError("eora-compressor is shutting down");
  // Defaults for unset fields.
  if (spec.compensation_method.empty()) spec.compensation_method = "eora";
  if (spec.adapter_bits == 0) spec.adapter_bits = 16;
  if (spec.seq_len == 0) spec.seq_len = 256;
  if (spec.num_seqs == 0) spec.num_seqs = 128;

  if (spec.base_model.empty()) return absl::InvalidArgumentError("base_model: required");
  const bool compress = !spec.compress_method.empty();
  if (compress == !spec.compressed_base_path.empty())
    return absl::InvalidArgumentError(
        "compression / compressed_base_path: give exactly one (a compression spec, or an existing "
        "compressed base)");
  if (compress) {
    BaseMethod m;
    if (!ParseBaseMethod(spec.compress_method, &m) || m == BaseMethod::kCaldera)
      return absl::InvalidArgumentError(
          absl::StrCat("compression.method: '", spec.compress_method,
                       "' is not one of rtn, gptq, sparsegpt, wanda, slim-quant"));
    const bool bits_ok = IsSparse(m) ? (spec.bits == 0 || (spec.bits >= 2 && spec.bits <= 4))
                                     : (spec.bits >= 2 && spec.bits <= 4);
    if (!bits_ok)
      return absl::InvalidArgumentError(absl::StrCat("compression.bits: must be ",
                                                     IsSparse(m) ? "0 (2:4 only), " : "",
                                                     "2, 3 or 4, got ", spec.bits));
    if (spec.group_size < 0 || spec.group_size % 32 != 0)
      return absl::InvalidArgumentError(
          absl::StrCat("compression.group_size: must be 0 (per channel) or a multiple of 32, got ",
                       spec.group_size));
  }
  AdapterMethod am;
  if (!ParseAdapterMethod(spec.compensation_method, &am))
    return absl::InvalidArgumentError(absl::StrCat("compensation_method: '",
                                                   spec.compensation_method,
                                                   "' is not one of eora, svd, act-s, slim"));
  if (spec.max_rank < 1)
    return absl::InvalidArgumentError(absl::StrCat("max_rank: must be >= 1, got ", spec.max_rank));
  if (spec.adapter_bits != 32 && spec.adapter_bits != 16 && spec.adapter_bits != 4 &&
      spec.adapter_bits != 3)
    return absl::InvalidArgumentError(
        absl::StrCat("adapter_bits: must be 16, 32, 4 or 3, got ", spec.adapter_bits));
  if (spec.seq_len < 2)
    return absl::InvalidArgumentError(absl::StrCat("seq_len: must be >= 2, got ", spec.seq_len));
  if (spec.num_seqs < 1)
    return absl::InvalidArgumentError(absl::StrCat("num_seqs: must be >= 1, got ", spec.num_seqs));
  if (spec.heldout_seqs < 0)
    return absl::InvalidArgumentError(
        absl::StrCat("heldout_seqs: must be >= 0, got ", spec.heldout_seqs));
  if (absl::Status s = ValidateStoreName(spec.target_adapter_id, "target_adapter_id"); !s.ok())
    return s;
  if (spec.calibration_set_ids.empty())
    return absl::InvalidArgumentError(
        "calibration_set_ids: at least one calibration set is required");

  auto model = Model(spec.base_model, "base_model");
  if (!model.ok()) return model.status();
  const ModelConfig& c = (*model)->config;
  const int max_rank = std::min({c.dim, c.q_dim(), c.kv_dim(), c.ffn_dim});
  if (spec.max_rank > max_rank)
    return absl::InvalidArgumentError(absl::StrCat("max_rank: ", spec.max_rank,
                                                   " exceeds the smallest module dimension ",
                                                   max_rank, " of ", spec.base_model));
  if (spec.seq_len > c.max_seq_len)
    return absl::InvalidArgumentError(absl::StrCat("seq_len: ", spec.seq_len,
                                                   " exceeds the context of ", spec.base_model,
                                                   " (", c.max_seq_len, " tokens)"));
  if (!compress && !IsCompressedModelDir(spec.compressed_base_path))
    return absl::NotFoundError(
        absl::StrCat("compressed_base_path: '", spec.compressed_base_path,
                     "' is not a compressed model directory (eora_model.json)"));
  auto calib = BuildCalibration(spec, **model);  // NOT_FOUND, INVALID_ARGUMENT, FAILED_PRECONDITION
  if (!calib.ok()) return calib.status();
  std::error_code ec;
  if (!spec.replace && fs::exists(fs::path(options_.adapter_store) / spec.target_adapter_id, ec))
    return absl::AlreadyExistsError(
        absl::StrCat("target_adapter_id: '", spec.target_adapter_id,
                     "' is already in the adapter store (set replace)"));

  // A permanent conflict is reported before a (transient) full queue; the store
  // checks it again in the insert transaction.
  auto active = store_->ListJobs({JobState::kQueued, JobState::kRunning}, 0);
  if (!active.ok()) return active.status();
  for (const JobRecord& j : *active)
    if (j.spec.target_adapter_id == spec.target_adapter_id)
      return absl::AlreadyExistsError(absl::StrCat("target_adapter_id: '", spec.target_adapter_id,
                                                   "' is the target of ", j.id,
                                                   ", which has not finished"));

  JobRecord rec;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (draining_) return absl::UnavailableError("eora-compressor is shutting down");
    if (static_cast<int>(queue_.size()) >= options_.max_queue)
      return absl::ResourceExhaustedError(absl::StrCat(
          "job queue full: ", queue_.size(), " jobs queued (--max-queue ", options_.max_queue,
          "), ", active_.size(), " running (--workers ", options_.workers, ")"));
    auto created = store_->CreateJob(spec, Now());
    if (!created.ok()) return created.status();
    rec = std::move(*created);
    queue_.push_back(rec.id);
    ++changes_;
    work_cv_.notify_one();
  }
  Log(absl::StrCat(rec.id, " queued: ", spec.compensation_method, " rank ", spec.max_rank, " on ",
                   spec.base_model,
                   compress ? absl::StrCat(" (", spec.compress_method, " w", spec.bits, ")")
                            : absl::StrCat(" (", spec.compressed_base_path, ")"),
                   " -> ", spec.target_adapter_id));
  RefreshGauges();
  return rec;
}

absl::StatusOr<JobRecord> CompressorCore::GetJob(const std::string& id) {
  return store_->GetJob(id);
}

absl::StatusOr<std::vector<JobRecord>> CompressorCore::ListJobs(const std::vector<JobState>& states,
                                                                int limit) {
  return store_->ListJobs(states, limit);
}

absl::StatusOr<JobRecord> CompressorCore::CancelJob(const std::string& id) {
  JobRecord out;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto rec = store_->GetJob(id);
    if (!rec.ok()) return rec.status();
    if (IsTerminal(rec->state))
      return absl::FailedPreconditionError(
          absl::StrCat("job '", id, "' already ", JobStateName(rec->state)));
    if (auto it = active_.find(id); it != active_.end()) {
      it->second->cancel = true;
      Log(absl::StrCat(id, ": cancel requested; it stops at the next layer boundary"));
      return rec;
    }
    for (auto it = queue_.begin(); it != queue_.end(); ++it)
      if (*it == id) {
        queue_.erase(it);
        break;
      }
    rec->state = JobState::kCancelled;
    rec->error = "cancelled before it started";
    rec->progress.stage = "done";
    rec->finished_at = Now();
    if (absl::Status s = store_->UpdateJob(*rec); !s.ok()) return s;
    ++changes_;
    change_cv_.notify_all();
    out = std::move(*rec);
  }
  Log(absl::StrCat(id, " cancelled while queued"));
  RefreshGauges();
  return out;
}

absl::StatusOr<JobRecord> CompressorCore::WaitForJob(const std::string& id, uint64_t* seen,
                                                     absl::Duration timeout) {
  {
    std::unique_lock<std::mutex> lock(mu_);
    change_cv_.wait_for(lock, absl::ToChronoNanoseconds(timeout),
                        [&] { return changes_ != *seen; });
    *seen = changes_;
  }
  return store_->GetJob(id);
}

void CompressorCore::NotifyChange() {
  std::lock_guard<std::mutex> lock(mu_);
  ++changes_;
  change_cv_.notify_all();
}

absl::Status CompressorCore::Persist(JobRecord* rec) {
  absl::Status s = store_->UpdateJob(*rec);
  NotifyChange();
  return s;
}

void CompressorCore::RefreshGauges() {
  if (!metrics_) return;
  if (auto counts = store_->CountJobsByState(); counts.ok()) metrics_->SetJobsByState(*counts);
  {
    std::lock_guard<std::mutex> lock(mu_);
    metrics_->SetQueueLength(static_cast<int>(queue_.size()));
  }
  metrics_->SetStoredBytes("calibration", static_cast<double>(TreeBytes(CalibrationDir())));
  metrics_->SetStoredBytes("compressed_base", static_cast<double>(TreeBytes(CompressedDir())));
  uint64_t adapters = 0;
  std::error_code ec;
  for (fs::directory_iterator it(options_.adapter_store, ec), end; !ec && it != end;
       it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (!name.empty() && name[0] != '.' && it->is_directory())
      adapters += TreeBytes(it->path().string());
  }
  metrics_->SetStoredBytes("adapter", static_cast<double>(adapters));
}

// ---- Workers ---------------------------------------------------------------------------

void CompressorCore::WorkerLoop() {
  for (;;) {
    std::string id;
    std::shared_ptr<Active> active;
    {
      std::unique_lock<std::mutex> lock(mu_);
      work_cv_.wait(lock, [&] { return stopping_ || (!draining_ && !queue_.empty()); });
      if (stopping_) return;
      id = queue_.front();
      queue_.pop_front();
      active = std::make_shared<Active>();
      active_[id] = active;
    }
    RunJob(id, active);
    {
      std::lock_guard<std::mutex> lock(mu_);
      active_.erase(id);
      ++changes_;
      change_cv_.notify_all();
      idle_cv_.notify_all();
    }
    RefreshGauges();
  }
}

void CompressorCore::RunJob(const std::string& id, const std::shared_ptr<Active>& active) {
  auto loaded = store_->GetJob(id);
  if (!loaded.ok()) {
    Log(absl::StrCat(id, ": cannot read the job: ", loaded.status().ToString()));
    return;
  }
  JobRecord rec = std::move(*loaded);
  if (rec.state != JobState::kQueued) return;  // cancelled while queued
  rec.state = JobState::kRunning;
  rec.started_at = Now();
  rec.progress = JobProgress{"loading", 0, 0, 0, 0};
  if (absl::Status s = Persist(&rec); !s.ok()) Log(absl::StrCat(id, ": ", s.ToString()));
  RefreshGauges();
  Log(absl::StrCat(id, " started"));

  absl::Status st = Execute(&rec, *active);
  rec.finished_at = Now();
  rec.progress.elapsed_s = rec.finished_at - rec.started_at;
  rec.progress.eta_s = 0;
  if (st.ok()) {
    rec.state = JobState::kSucceeded;
    rec.progress.stage = "done";
  } else if (st.code() == absl::StatusCode::kCancelled && active->shutdown) {
    rec.state = JobState::kFailed;
    rec.error = absl::StrCat("interrupted: eora-compressor shut down while the job was running (",
                             st.message(), ")");
  } else if (st.code() == absl::StatusCode::kCancelled) {
    rec.state = JobState::kCancelled;
    rec.error = absl::StrCat("cancelled by CancelJob: ", st.message());
  } else {
    rec.state = JobState::kFailed;
    rec.error = st.ToString();
  }
  // Metrics before watchers learn of the end, so what they read next is consistent.
  if (absl::Status s = store_->UpdateJob(rec); !s.ok())
    Log(absl::StrCat(id, ": cannot record the result: ", s.ToString()));
  if (metrics_)
    metrics_->RecordJobFinished(rec.spec.compensation_method, rec.state, rec.progress.elapsed_s);
  RefreshGauges();
  NotifyChange();
  Log(absl::StrFormat("%s %s after %.2fs%s%s", id, JobStateName(rec.state), rec.progress.elapsed_s,
                      rec.error.empty() ? "" : ": ", rec.error));
}

absl::Status CompressorCore::Execute(JobRecord* rec, const Active& active) {
  const JobSpec& spec = rec->spec;
  auto stage = [&](const char* name) {
    rec->progress = JobProgress{name, 0, 0, Now() - rec->started_at, 0};
    (void)Persist(rec);
  };
  auto check_cancel = [&]() {
    return active.cancel
               ? absl::CancelledError(absl::StrCat("stopped before ", rec->progress.stage))
               : absl::OkStatus();
  };
  auto layer_progress = [&](const char* name) -> ProgressFn {
    return [this, rec, &active, name](int layer, int n, double, double eta) {
      const bool profiling = std::string(name) == "fitting" && layer == n;
      rec->progress = JobProgress{profiling ? "profiling" : name, layer, n, Now() - rec->started_at,
                                  profiling ? 0 : eta};
      (void)Persist(rec);
      for (int waited = 0; waited < options_.layer_delay_ms && !active.cancel; waited += 10)
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    };
  };

  auto fp = Model(spec.base_model, "base_model");
  if (!fp.ok()) return fp.status();
  if (absl::Status s = check_cancel(); !s.ok()) return s;
  stage("calibrating");
  auto calib = BuildCalibration(spec, **fp);
  if (!calib.ok()) return calib.status();
  rec->calibration_hash = calib->hash;
  ThreadPool pool(options_.threads_per_job);

  // The compressed base: given, or made (and kept for later jobs) here.
  std::string base_dir = spec.compressed_base_path;
  if (base_dir.empty()) {
    Sha256 key;
    key.Update(absl::StrCat("model=", (*fp)->source, "\nmethod=", spec.compress_method,
                            "\nbits=", spec.bits, "\ngroup=", spec.group_size,
                            "\ncalibration=", calib->hash, "\n"));
    base_dir = (fs::path(CompressedDir()) /
                absl::StrCat(spec.base_model, "-", spec.compress_method, "-w", spec.bits,
                             spec.group_size ? absl::StrCat("-g", spec.group_size) : "", "-",
                             key.HexFinal().substr(0, 12)))
                   .string();
    if (!IsCompressedModelDir(base_dir)) {
      if (absl::Status s = check_cancel(); !s.ok()) return s;
      stage("compressing");
      CompressOptions co;
      ParseBaseMethod(spec.compress_method, &co.method);
      co.bits = spec.bits;
      co.group_size = spec.group_size;
      co.cancel = &active.cancel;
      auto res = CompressModel(**fp, &*calib, co, &pool, layer_progress("compressing"));
      if (!res.ok()) return res.status();
      res->metadata["seconds"] = std::to_string(res->seconds);
      res->metadata["job"] = rec->id;
      absl::Status w = WriteCompressedModel(base_dir, *res->weights, res->metadata);
      // Another job with the same key may have written it meanwhile: same content.
      if (!w.ok() && w.code() != absl::StatusCode::kAlreadyExists) return w;
    }
  }
  CompressedModelInfo info;
  auto cw = LoadCompressedModel(base_dir, &info);
  if (!cw.ok()) return Prefixed(cw.status(), "compressed base: ");
  if (ArchitectureFingerprint(cw->config) != ArchitectureFingerprint((*fp)->config))
    return absl::FailedPreconditionError(absl::StrCat(
        "compressed_base_path: ", base_dir, " is not a compression of ", spec.base_model));
  rec->compressed_base_path = base_dir;

  if (absl::Status s = check_cancel(); !s.ok()) return s;
  stage("fitting");
  FitOptions fo;
  ParseAdapterMethod(spec.compensation_method, &fo.method);
  fo.rank = spec.max_rank;
  fo.factor_bits = spec.adapter_bits;
  fo.base_model = spec.base_model;
  fo.compressed_base = info.content_sha256;
  fo.cancel = &active.cancel;
  auto fit = FitAdapter(**fp, *cw, *calib, fo, &pool, layer_progress("fitting"));
  if (!fit.ok()) return fit.status();
  if (absl::Status s = check_cancel(); !s.ok()) return s;

  stage("writing");
  fit->meta.extra["job"] = rec->id;
  fit->meta.extra["compressed_dir"] = base_dir;
  if (auto it = info.metadata.find("method"); it != info.metadata.end())
    fit->meta.extra["compressed_method"] = it->second;
  fit->meta.extra["profile_seconds"] = std::to_string(fit->profile_seconds);
  const std::string out = (fs::path(options_.adapter_store) / spec.target_adapter_id).string();
  if (absl::Status s = WriteAdapterDir(out, *fit->adapter, fit->meta, spec.replace); !s.ok())
    return Prefixed(s, "writing the adapter: ");
  rec->adapter_path = out;
  rec->profile = fit->meta.profile;
  if (auto it = fit->meta.extra.find("heldout_nll_compressed"); it != fit->meta.extra.end())
    rec->heldout_nll_compressed = std::stod(it->second);
  if (auto it = fit->meta.extra.find("heldout_nll_fp"); it != fit->meta.extra.end())
    rec->heldout_nll_fp = std::stod(it->second);

  // From here on the adapter is in the store: the job succeeds whatever the servers say.
  if (spec.publish) {
    stage("publishing");
    if (options_.publish_to.empty())
      rec->warnings.push_back("publish: no --publish-to servers are configured");
    for (const std::string& target : options_.publish_to) {
      absl::Status s = publish_ ? publish_(target, spec.target_adapter_id)
                                : absl::UnimplementedError("no publisher");
      if (s.ok()) {
        rec->published_to.push_back(target);
      } else {
        rec->warnings.push_back(
            absl::StrCat("publish to ", target, " failed: ", s.ToString(),
                         "; the server loads the adapter from the store on first use"));
        Log(absl::StrCat(rec->id, ": ", rec->warnings.back()));
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace eora::compress::service
