#include "compressor/service/sqlite_job_store.h"

#include <sqlite3.h>

#include <cstdlib>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "nlohmann/json.hpp"

namespace eora::compress::service {

// ---- Names and ids (job_store.h) -------------------------------------------------

const char* JobStateName(JobState s) {
  switch (s) {
    case JobState::kQueued:
      return "queued";
    case JobState::kRunning:
      return "running";
    case JobState::kSucceeded:
      return "succeeded";
    case JobState::kFailed:
      return "failed";
    case JobState::kCancelled:
      return "cancelled";
  }
  return "?";
}

bool ParseJobState(const std::string& name, JobState* out) {
  for (JobState s : kAllJobStates)
    if (name == JobStateName(s)) {
      *out = s;
      return true;
    }
  return false;
}

std::string JobIdFromNumber(int64_t n) { return absl::StrCat("job-", n); }

bool JobNumberFromId(const std::string& id, int64_t* n) {
  if (id.rfind("job-", 0) != 0) return false;
  return absl::SimpleAtoi(absl::string_view(id).substr(4), n) && *n > 0;
}

namespace {

using json = nlohmann::json;

// One prepared statement; binds by position (1-based), finalizes on destruction.
class Stmt {
 public:
  Stmt(sqlite3* db, const char* sql) : db_(db) {
    rc_ = sqlite3_prepare_v2(db, sql, -1, &st_, nullptr);
  }
  ~Stmt() { sqlite3_finalize(st_); }
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;

  absl::Status prepared() const {
    if (rc_ == SQLITE_OK) return absl::OkStatus();
    return absl::InternalError(absl::StrCat("sqlite prepare: ", sqlite3_errmsg(db_)));
  }
  Stmt& Bind(int i, const std::string& v) {
    sqlite3_bind_text(st_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
    return *this;
  }
  Stmt& Bind(int i, int64_t v) {
    sqlite3_bind_int64(st_, i, v);
    return *this;
  }
  Stmt& Bind(int i, double v) {
    sqlite3_bind_double(st_, i, v);
    return *this;
  }
  // SQLITE_ROW -> true, SQLITE_DONE -> false, else an error.
  absl::StatusOr<bool> Step() {
    const int rc = sqlite3_step(st_);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    return absl::InternalError(absl::StrCat("sqlite: ", sqlite3_errmsg(db_)));
  }
  absl::Status Run() {
    auto r = Step();
    return r.ok() ? absl::OkStatus() : r.status();
  }
  // Calls fn() (returning absl::Status) on every row; stops at the first error.
  template <typename Fn>
  absl::Status ForEachRow(Fn fn) {
    for (;;) {
      auto row = Step();
      if (!row.ok()) return row.status();
      if (!*row) return absl::OkStatus();
      if (absl::Status s = fn(); !s.ok()) return s;
    }
  }
  std::string Text(int col) const {
    const unsigned char* t = sqlite3_column_text(st_, col);
    return t ? std::string(reinterpret_cast<const char*>(t),
                           static_cast<size_t>(sqlite3_column_bytes(st_, col)))
             : std::string();
  }
  int64_t Int(int col) const { return sqlite3_column_int64(st_, col); }
  double Real(int col) const { return sqlite3_column_double(st_, col); }

 private:
  sqlite3* db_;
  sqlite3_stmt* st_ = nullptr;
  int rc_;
};

absl::Status Exec(sqlite3* db, const std::string& sql) {
  char* err = nullptr;
  if (sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &err) != SQLITE_OK) {
    absl::Status s =
        absl::InternalError(absl::StrCat("sqlite: ", err ? err : "error", " in: ", sql));
    sqlite3_free(err);
    return s;
  }
  return absl::OkStatus();
}

// BEGIN IMMEDIATE ... COMMIT, rolled back unless committed.
class Transaction {
 public:
  explicit Transaction(sqlite3* db) : db_(db) { status_ = Exec(db, "BEGIN IMMEDIATE"); }
  ~Transaction() {
    if (status_.ok() && !done_) (void)Exec(db_, "ROLLBACK");
  }
  const absl::Status& begun() const { return status_; }
  absl::Status Commit() {
    done_ = true;
    return Exec(db_, "COMMIT");
  }

 private:
  sqlite3* db_;
  absl::Status status_;
  bool done_ = false;
};

// Migration i (1-based) takes the schema from version i-1 to i. Never edit a
// released step; append a new one and bump kSchemaVersion.
const char* const kMigrations[] = {
    // 1: initial schema.
    R"sql(
CREATE TABLE calibration_sets(
  id TEXT PRIMARY KEY,
  name TEXT NOT NULL,
  kind INTEGER NOT NULL,
  content_hash TEXT NOT NULL,
  bytes INTEGER NOT NULL,
  token_count INTEGER NOT NULL,
  tokenizer_model TEXT NOT NULL,
  file TEXT NOT NULL,
  created_at REAL NOT NULL);
CREATE TABLE jobs(
  num INTEGER PRIMARY KEY AUTOINCREMENT,
  state TEXT NOT NULL,
  target_adapter_id TEXT NOT NULL,
  method TEXT NOT NULL,
  spec TEXT NOT NULL,
  stage TEXT NOT NULL DEFAULT 'queued',
  layer INTEGER NOT NULL DEFAULT 0,
  num_layers INTEGER NOT NULL DEFAULT 0,
  elapsed_s REAL NOT NULL DEFAULT 0,
  eta_s REAL NOT NULL DEFAULT 0,
  error TEXT NOT NULL DEFAULT '',
  result TEXT NOT NULL DEFAULT '{}',
  created_at REAL NOT NULL,
  started_at REAL NOT NULL DEFAULT 0,
  finished_at REAL NOT NULL DEFAULT 0);
CREATE INDEX jobs_by_state ON jobs(state);
CREATE TABLE job_calibration_sets(
  job_num INTEGER NOT NULL REFERENCES jobs(num),
  position INTEGER NOT NULL,
  calibration_set_id TEXT NOT NULL,
  PRIMARY KEY(job_num, position));
CREATE INDEX job_calibration_sets_by_set ON job_calibration_sets(calibration_set_id);
)sql",
};
static_assert(sizeof(kMigrations) / sizeof(kMigrations[0]) == SqliteJobStore::kSchemaVersion);

json SpecToJson(const JobSpec& s) {
  return json{{"base_model", s.base_model},
              {"compress_method", s.compress_method},
              {"bits", s.bits},
              {"group_size", s.group_size},
              {"compressed_base_path", s.compressed_base_path},
              {"compensation_method", s.compensation_method},
              {"max_rank", s.max_rank},
              {"adapter_bits", s.adapter_bits},
              {"calibration_set_ids", s.calibration_set_ids},
              {"seq_len", s.seq_len},
              {"num_seqs", s.num_seqs},
              {"heldout_seqs", s.heldout_seqs},
              {"target_adapter_id", s.target_adapter_id},
              {"publish", s.publish},
              {"replace", s.replace}};
}

JobSpec SpecFromJson(const json& j) {
  JobSpec s;
  s.base_model = j.value("base_model", "");
  s.compress_method = j.value("compress_method", "");
  s.bits = j.value("bits", 0);
  s.group_size = j.value("group_size", 0);
  s.compressed_base_path = j.value("compressed_base_path", "");
  s.compensation_method = j.value("compensation_method", "eora");
  s.max_rank = j.value("max_rank", 0);
  s.adapter_bits = j.value("adapter_bits", 16);
  s.calibration_set_ids = j.value("calibration_set_ids", std::vector<std::string>{});
  s.seq_len = j.value("seq_len", 0);
  s.num_seqs = j.value("num_seqs", 0);
  s.heldout_seqs = j.value("heldout_seqs", 0);
  s.target_adapter_id = j.value("target_adapter_id", "");
  s.publish = j.value("publish", false);
  s.replace = j.value("replace", false);
  return s;
}

json ResultToJson(const JobRecord& r) {
  json profile = json::array();
  for (const RankQuality& q : r.profile)
    profile.push_back({{"rank", q.rank}, {"nll", q.nll}, {"ppl", q.ppl}});
  return json{{"warnings", r.warnings},
              {"adapter_path", r.adapter_path},
              {"compressed_base_path", r.compressed_base_path},
              {"profile", profile},
              {"heldout_nll_compressed", r.heldout_nll_compressed},
              {"heldout_nll_fp", r.heldout_nll_fp},
              {"published_to", r.published_to},
              {"calibration_hash", r.calibration_hash}};
}

void ResultFromJson(const json& j, JobRecord* r) {
  r->warnings = j.value("warnings", std::vector<std::string>{});
  r->adapter_path = j.value("adapter_path", "");
  r->compressed_base_path = j.value("compressed_base_path", "");
  r->profile.clear();
  for (const json& q : j.value("profile", json::array()))
    r->profile.push_back({q.value("rank", 0), q.value("nll", 0.0), q.value("ppl", 0.0)});
  r->heldout_nll_compressed = j.value("heldout_nll_compressed", 0.0);
  r->heldout_nll_fp = j.value("heldout_nll_fp", 0.0);
  r->published_to = j.value("published_to", std::vector<std::string>{});
  r->calibration_hash = j.value("calibration_hash", "");
}

constexpr char kJobColumns[] =
    "num, state, spec, stage, layer, num_layers, elapsed_s, eta_s, error, result, created_at, "
    "started_at, finished_at";

absl::StatusOr<JobRecord> ReadJob(const Stmt& st) {
  JobRecord r;
  r.id = JobIdFromNumber(st.Int(0));
  if (!ParseJobState(st.Text(1), &r.state))
    return absl::DataLossError(absl::StrCat(r.id, ": unknown state '", st.Text(1), "'"));
  const json spec = json::parse(st.Text(2), nullptr, /*allow_exceptions=*/false);
  const json result = json::parse(st.Text(9), nullptr, false);
  if (spec.is_discarded() || result.is_discarded())
    return absl::DataLossError(absl::StrCat(r.id, ": malformed spec or result JSON"));
  r.spec = SpecFromJson(spec);
  r.progress.stage = st.Text(3);
  r.progress.layer = static_cast<int>(st.Int(4));
  r.progress.num_layers = static_cast<int>(st.Int(5));
  r.progress.elapsed_s = st.Real(6);
  r.progress.eta_s = st.Real(7);
  r.error = st.Text(8);
  ResultFromJson(result, &r);
  r.created_at = st.Real(10);
  r.started_at = st.Real(11);
  r.finished_at = st.Real(12);
  return r;
}

absl::Status ReadJobs(Stmt& st, std::vector<JobRecord>* out) {
  return st.ForEachRow([&]() -> absl::Status {
    auto r = ReadJob(st);
    if (!r.ok()) return r.status();
    out->push_back(std::move(*r));
    return absl::OkStatus();
  });
}

CalibrationSetRecord ReadCalibration(const Stmt& st) {
  CalibrationSetRecord r;
  r.id = st.Text(0);
  r.name = st.Text(1);
  r.kind = static_cast<CalibrationKind>(st.Int(2));
  r.content_hash = st.Text(3);
  r.bytes = static_cast<uint64_t>(st.Int(4));
  r.token_count = static_cast<uint64_t>(st.Int(5));
  r.tokenizer_model = st.Text(6);
  r.file = st.Text(7);
  r.created_at = st.Real(8);
  return r;
}

constexpr char kCalibrationColumns[] =
    "id, name, kind, content_hash, bytes, token_count, tokenizer_model, file, created_at";

}  // namespace

absl::StatusOr<std::unique_ptr<SqliteJobStore>> SqliteJobStore::Open(const std::string& path) {
  sqlite3* db = nullptr;
  const int rc =
      sqlite3_open_v2(path.c_str(), &db,
                      SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX, nullptr);
  if (rc != SQLITE_OK) {
    absl::Status s = absl::UnavailableError(absl::StrCat(
        path, ": cannot open the job database: ", db ? sqlite3_errmsg(db) : "out of memory"));
    sqlite3_close(db);
    return s;
  }
  std::unique_ptr<SqliteJobStore> store(new SqliteJobStore(db, path));
  sqlite3_busy_timeout(db, 10000);
  for (const char* pragma :
       {"PRAGMA journal_mode=WAL", "PRAGMA synchronous=FULL", "PRAGMA foreign_keys=ON"})
    if (absl::Status s = Exec(db, pragma); !s.ok())
      return absl::Status(s.code(), absl::StrCat(path, ": ", s.message()));
  if (absl::Status s = store->Migrate(); !s.ok())
    return absl::Status(s.code(), absl::StrCat(path, ": ", s.message()));
  return store;
}

SqliteJobStore::~SqliteJobStore() { sqlite3_close(db_); }

absl::Status SqliteJobStore::Migrate() {
  std::lock_guard<std::mutex> lock(mu_);
  Stmt v(db_, "PRAGMA user_version");
  if (absl::Status s = v.prepared(); !s.ok()) return s;
  auto row = v.Step();
  if (!row.ok()) return row.status();
  const int64_t version = *row ? v.Int(0) : 0;
  if (version > kSchemaVersion)
    return absl::FailedPreconditionError(
        absl::StrCat("the job database has schema version ", version, ", newer than this binary's ",
                     kSchemaVersion, "; refusing to touch it (use a newer eora-compressor)"));
  for (int64_t to = version + 1; to <= kSchemaVersion; ++to) {
    Transaction tx(db_);
    if (!tx.begun().ok()) return tx.begun();
    if (absl::Status s = Exec(db_, kMigrations[to - 1]); !s.ok()) return s;
    if (absl::Status s = Exec(db_, absl::StrCat("PRAGMA user_version = ", to)); !s.ok()) return s;
    if (absl::Status s = tx.Commit(); !s.ok()) return s;
  }
  return absl::OkStatus();
}

// ---- Calibration sets ----------------------------------------------------------

absl::StatusOr<bool> SqliteJobStore::PutCalibrationSet(const CalibrationSetRecord& r) {
  std::lock_guard<std::mutex> lock(mu_);
  Stmt st(db_, absl::StrCat("INSERT OR IGNORE INTO calibration_sets(", kCalibrationColumns,
                            ") VALUES(?,?,?,?,?,?,?,?,?)")
                   .c_str());
  if (absl::Status s = st.prepared(); !s.ok()) return s;
  st.Bind(1, r.id).Bind(2, r.name).Bind(3, static_cast<int64_t>(r.kind)).Bind(4, r.content_hash);
  st.Bind(5, static_cast<int64_t>(r.bytes)).Bind(6, static_cast<int64_t>(r.token_count));
  st.Bind(7, r.tokenizer_model).Bind(8, r.file).Bind(9, r.created_at);
  if (absl::Status s = st.Run(); !s.ok()) return s;
  return sqlite3_changes(db_) > 0;
}

absl::StatusOr<CalibrationSetRecord> SqliteJobStore::GetCalibrationSet(const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  Stmt st(
      db_,
      absl::StrCat("SELECT ", kCalibrationColumns, " FROM calibration_sets WHERE id = ?").c_str());
  if (absl::Status s = st.prepared(); !s.ok()) return s;
  st.Bind(1, id);
  auto row = st.Step();
  if (!row.ok()) return row.status();
  if (!*row) return absl::NotFoundError(absl::StrCat("calibration set '", id, "' not found"));
  return ReadCalibration(st);
}

absl::StatusOr<std::vector<CalibrationSetRecord>> SqliteJobStore::ListCalibrationSets() {
  std::lock_guard<std::mutex> lock(mu_);
  Stmt st(db_, absl::StrCat("SELECT ", kCalibrationColumns,
                            " FROM calibration_sets ORDER BY created_at, id")
                   .c_str());
  if (absl::Status s = st.prepared(); !s.ok()) return s;
  std::vector<CalibrationSetRecord> out;
  if (absl::Status s = st.ForEachRow([&] {
        out.push_back(ReadCalibration(st));
        return absl::OkStatus();
      });
      !s.ok())
    return s;
  return out;
}

absl::StatusOr<int> SqliteJobStore::ActiveJobsUsingLocked(const std::string& id,
                                                          std::string* which) {
  Stmt st(db_,
          "SELECT DISTINCT j.num FROM job_calibration_sets c JOIN jobs j ON j.num = c.job_num "
          "WHERE c.calibration_set_id = ? AND j.state IN ('queued', 'running') ORDER BY j.num");
  if (absl::Status s = st.prepared(); !s.ok()) return s;
  st.Bind(1, id);
  std::vector<std::string> jobs;
  if (absl::Status s = st.ForEachRow([&] {
        jobs.push_back(JobIdFromNumber(st.Int(0)));
        return absl::OkStatus();
      });
      !s.ok())
    return s;
  if (which) *which = absl::StrJoin(jobs, ", ");
  return static_cast<int>(jobs.size());
}

absl::StatusOr<int> SqliteJobStore::ActiveJobsUsing(const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  return ActiveJobsUsingLocked(id, nullptr);
}

absl::StatusOr<CalibrationSetRecord> SqliteJobStore::DeleteCalibrationSet(const std::string& id) {
  std::lock_guard<std::mutex> lock(mu_);
  Transaction tx(db_);
  if (!tx.begun().ok()) return tx.begun();
  Stmt get(
      db_,
      absl::StrCat("SELECT ", kCalibrationColumns, " FROM calibration_sets WHERE id = ?").c_str());
  if (absl::Status s = get.prepared(); !s.ok()) return s;
  get.Bind(1, id);
  auto row = get.Step();
  if (!row.ok()) return row.status();
  if (!*row) return absl::NotFoundError(absl::StrCat("calibration set '", id, "' not found"));
  CalibrationSetRecord rec = ReadCalibration(get);
  std::string which;
  auto n = ActiveJobsUsingLocked(id, &which);
  if (!n.ok()) return n.status();
  if (*n > 0)
    return absl::FailedPreconditionError(absl::StrCat("calibration set '", id, "' is used by ", *n,
                                                      " queued or running job(s): ", which));
  Stmt del(db_, "DELETE FROM calibration_sets WHERE id = ?");
  if (absl::Status s = del.prepared(); !s.ok()) return s;
  del.Bind(1, id);
  if (absl::Status s = del.Run(); !s.ok()) return s;
  if (absl::Status s = tx.Commit(); !s.ok()) return s;
  return rec;
}

// ---- Jobs -------------------------------------------------------------------------

absl::StatusOr<JobRecord> SqliteJobStore::CreateJob(const JobSpec& spec, double now) {
  std::lock_guard<std::mutex> lock(mu_);
  Transaction tx(db_);
  if (!tx.begun().ok()) return tx.begun();
  for (const std::string& cs : spec.calibration_set_ids) {
    Stmt st(db_, "SELECT 1 FROM calibration_sets WHERE id = ?");
    if (absl::Status s = st.prepared(); !s.ok()) return s;
    st.Bind(1, cs);
    auto row = st.Step();
    if (!row.ok()) return row.status();
    if (!*row)
      return absl::NotFoundError(absl::StrCat("calibration_set_ids: '", cs, "' not found"));
  }
  {
    Stmt st(db_,
            "SELECT num FROM jobs WHERE target_adapter_id = ? AND state IN ('queued', 'running')");
    if (absl::Status s = st.prepared(); !s.ok()) return s;
    st.Bind(1, spec.target_adapter_id);
    auto row = st.Step();
    if (!row.ok()) return row.status();
    if (*row)
      return absl::AlreadyExistsError(
          absl::StrCat("target_adapter_id: '", spec.target_adapter_id, "' is the target of ",
                       JobIdFromNumber(st.Int(0)), ", which has not finished"));
  }
  Stmt ins(db_,
           "INSERT INTO jobs(state, target_adapter_id, method, spec, created_at) "
           "VALUES('queued', ?, ?, ?, ?)");
  if (absl::Status s = ins.prepared(); !s.ok()) return s;
  ins.Bind(1, spec.target_adapter_id)
      .Bind(2, spec.compensation_method)
      .Bind(3, SpecToJson(spec).dump());
  ins.Bind(4, now);
  if (absl::Status s = ins.Run(); !s.ok()) return s;
  const int64_t num = sqlite3_last_insert_rowid(db_);
  for (size_t i = 0; i < spec.calibration_set_ids.size(); ++i) {
    Stmt link(
        db_,
        "INSERT INTO job_calibration_sets(job_num, position, calibration_set_id) VALUES(?,?,?)");
    if (absl::Status s = link.prepared(); !s.ok()) return s;
    link.Bind(1, num).Bind(2, static_cast<int64_t>(i)).Bind(3, spec.calibration_set_ids[i]);
    if (absl::Status s = link.Run(); !s.ok()) return s;
  }
  if (absl::Status s = tx.Commit(); !s.ok()) return s;
  return GetJobLocked(num);
}

absl::StatusOr<JobRecord> SqliteJobStore::GetJobLocked(int64_t num) {
  Stmt st(db_, absl::StrCat("SELECT ", kJobColumns, " FROM jobs WHERE num = ?").c_str());
  if (absl::Status s = st.prepared(); !s.ok()) return s;
  st.Bind(1, num);
  auto row = st.Step();
  if (!row.ok()) return row.status();
  if (!*row) return absl::NotFoundError(absl::StrCat("job '", JobIdFromNumber(num), "' not found"));
  return ReadJob(st);
}

absl::StatusOr<JobRecord> SqliteJobStore::GetJob(const std::string& id) {
  int64_t num = 0;
  if (!JobNumberFromId(id, &num))
    return absl::NotFoundError(absl::StrCat("job '", id, "' not found"));
  std::lock_guard<std::mutex> lock(mu_);
  return GetJobLocked(num);
}

absl::StatusOr<std::vector<JobRecord>> SqliteJobStore::ListJobs(const std::vector<JobState>& states,
                                                                int limit) {
  std::string where;
  if (!states.empty()) {
    std::vector<std::string> names;
    for (JobState s : states) names.push_back(absl::StrCat("'", JobStateName(s), "'"));
    where = absl::StrCat(" WHERE state IN (", absl::StrJoin(names, ","), ")");
  }
  const std::string sql = absl::StrCat("SELECT ", kJobColumns, " FROM jobs", where,
                                       " ORDER BY num DESC", limit > 0 ? " LIMIT ?" : "");
  std::lock_guard<std::mutex> lock(mu_);
  Stmt st(db_, sql.c_str());
  if (absl::Status s = st.prepared(); !s.ok()) return s;
  if (limit > 0) st.Bind(1, static_cast<int64_t>(limit));
  std::vector<JobRecord> out;
  if (absl::Status s = ReadJobs(st, &out); !s.ok()) return s;
  return out;
}

absl::Status SqliteJobStore::UpdateJob(const JobRecord& job) {
  int64_t num = 0;
  if (!JobNumberFromId(job.id, &num))
    return absl::NotFoundError(absl::StrCat("job '", job.id, "' not found"));
  std::lock_guard<std::mutex> lock(mu_);
  Stmt st(
      db_,
      "UPDATE jobs SET state = ?, stage = ?, layer = ?, num_layers = ?, elapsed_s = ?, eta_s = ?, "
      "error = ?, result = ?, started_at = ?, finished_at = ? WHERE num = ?");
  if (absl::Status s = st.prepared(); !s.ok()) return s;
  st.Bind(1, std::string(JobStateName(job.state))).Bind(2, job.progress.stage);
  st.Bind(3, static_cast<int64_t>(job.progress.layer))
      .Bind(4, static_cast<int64_t>(job.progress.num_layers));
  st.Bind(5, job.progress.elapsed_s).Bind(6, job.progress.eta_s).Bind(7, job.error);
  st.Bind(8, ResultToJson(job).dump())
      .Bind(9, job.started_at)
      .Bind(10, job.finished_at)
      .Bind(11, num);
  if (absl::Status s = st.Run(); !s.ok()) return s;
  if (sqlite3_changes(db_) == 0)
    return absl::NotFoundError(absl::StrCat("job '", job.id, "' not found"));
  return absl::OkStatus();
}

absl::StatusOr<std::map<JobState, int64_t>> SqliteJobStore::CountJobsByState() {
  std::lock_guard<std::mutex> lock(mu_);
  Stmt st(db_, "SELECT state, COUNT(*) FROM jobs GROUP BY state");
  if (absl::Status s = st.prepared(); !s.ok()) return s;
  std::map<JobState, int64_t> out;
  for (JobState s : kAllJobStates) out[s] = 0;
  if (absl::Status s = st.ForEachRow([&] {
        JobState state;
        if (ParseJobState(st.Text(0), &state)) out[state] = st.Int(1);
        return absl::OkStatus();
      });
      !s.ok())
    return s;
  return out;
}

absl::StatusOr<std::vector<JobRecord>> SqliteJobStore::FailInterruptedJobs(
    const std::string& reason, double now) {
  std::lock_guard<std::mutex> lock(mu_);
  Transaction tx(db_);
  if (!tx.begun().ok()) return tx.begun();
  std::vector<JobRecord> failed;
  {
    Stmt st(db_,
            absl::StrCat("SELECT ", kJobColumns, " FROM jobs WHERE state = 'running' ORDER BY num")
                .c_str());
    if (absl::Status s = st.prepared(); !s.ok()) return s;
    if (absl::Status s = ReadJobs(st, &failed); !s.ok()) return s;
  }
  for (JobRecord& r : failed) {
    r.error = absl::StrCat(reason, " (it was ", r.progress.stage,
                           r.progress.num_layers > 0 ? absl::StrCat(", layer ", r.progress.layer,
                                                                    " of ", r.progress.num_layers)
                                                     : std::string(),
                           ")");
    r.state = JobState::kFailed;
    r.finished_at = now;
    int64_t num = 0;
    JobNumberFromId(r.id, &num);
    Stmt st(db_, "UPDATE jobs SET state = 'failed', error = ?, finished_at = ? WHERE num = ?");
    if (absl::Status s = st.prepared(); !s.ok()) return s;
    st.Bind(1, r.error).Bind(2, now).Bind(3, num);
    if (absl::Status s = st.Run(); !s.ok()) return s;
  }
  if (absl::Status s = tx.Commit(); !s.ok()) return s;
  return failed;
}

}  // namespace eora::compress::service
