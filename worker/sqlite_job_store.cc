#include "worker/sqlite_job_store.h"

#include <sqlite3.h>

#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "worker/engine/base/errno_status.h"
#include "worker/engine/base/log.h"
#include "worker/engine/base/status_macros.h"
#include "worker/job_codec.h"

namespace quantd::worker {
namespace {

constexpr char kSchema[] = R"sql(
CREATE TABLE IF NOT EXISTS jobs (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  id TEXT NOT NULL UNIQUE,
  state INTEGER NOT NULL,
  phase INTEGER NOT NULL DEFAULT 0,
  create_us INTEGER NOT NULL,
  start_us INTEGER,
  finish_us INTEGER,
  deadline_us INTEGER,
  spec TEXT NOT NULL,
  request BLOB NOT NULL,
  idempotency_key TEXT UNIQUE,
  fingerprint TEXT NOT NULL,
  attempt INTEGER NOT NULL DEFAULT 0,
  result TEXT,
  artifact_id TEXT,
  owner TEXT NOT NULL DEFAULT '',
  holder TEXT NOT NULL DEFAULT '',
  lease_us INTEGER
);
CREATE INDEX IF NOT EXISTS jobs_state_seq ON jobs(state, seq);
CREATE INDEX IF NOT EXISTS jobs_artifact ON jobs(artifact_id);
CREATE TABLE IF NOT EXISTS cancel_requests (
  id TEXT PRIMARY KEY,
  reason TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (
  name TEXT PRIMARY KEY,
  value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS evaluations (
  id TEXT PRIMARY KEY,
  record TEXT NOT NULL,
  model_name TEXT,
  model_version INTEGER,
  succeeded_us INTEGER,
  has_fp32 INTEGER NOT NULL DEFAULT 0,
  finished INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS deleted_jobs (
  id TEXT PRIMARY KEY
);
CREATE TABLE IF NOT EXISTS model_versions (
  name TEXT NOT NULL,
  version INTEGER NOT NULL,
  job_id TEXT NOT NULL UNIQUE,
  create_us INTEGER NOT NULL,
  PRIMARY KEY (name, version)
);
)sql";

// The rows that hold an artifact (?1): jobs SUCCEEDED with it, or RUNNING
// with it pinned. Delete and ArtifactHolders decide by the same rule.
constexpr char kHoldsArtifact[] = "artifact_id = ?1 AND state IN (2, 3)";

// Between a job's owner and its idempotency key in the stored key.
constexpr char kKeyScope = '\x1f';

constexpr char kColumns[] =
    "seq, id, state, phase, create_us, start_us, finish_us, deadline_us, spec, request, "
    "idempotency_key, fingerprint, attempt, result, owner, "
    "EXISTS (SELECT 1 FROM model_versions WHERE model_versions.job_id = jobs.id)";

// A full disk (SQLITE_FULL, or an I/O error whose errno says so) is
// RESOURCE_EXHAUSTED: the caller can retry once space is freed.
absl::Status SqliteError(sqlite3* db, int rc, const std::string& what) {
  const int system_errno = sqlite3_system_errno(db);
  const std::string message = absl::StrCat(what, ": ", sqlite3_errmsg(db));
  if ((rc & 0xff) == SQLITE_FULL || IsOutOfSpace(system_errno)) {
    return absl::ResourceExhaustedError(absl::StrCat(message, " (the disk holding the job store is full)"));
  }
  // Another connection (a backup, the sqlite3 shell) holds the database:
  // worth retrying.
  if ((rc & 0xff) == SQLITE_BUSY || (rc & 0xff) == SQLITE_LOCKED) {
    return absl::UnavailableError(absl::StrCat(message, " (the job store is locked by another connection)"));
  }
  return absl::InternalError(message);
}

// A prepared statement, finalized on destruction.
class Stmt {
 public:
  Stmt(sqlite3* db, const std::string& sql) : db_(db) {
    rc_ = sqlite3_prepare_v2(db, sql.c_str(), -1, &stmt_, nullptr);
  }
  ~Stmt() { sqlite3_finalize(stmt_); }
  absl::Status status() const {
    if (rc_ == SQLITE_OK) return absl::OkStatus();
    return absl::InternalError(absl::StrCat("sqlite prepare: ", sqlite3_errmsg(db_)));
  }
  Stmt& Bind(int i, const std::string& v) {
    sqlite3_bind_text(stmt_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
    return *this;
  }
  Stmt& BindBlob(int i, const std::string& v) {
    sqlite3_bind_blob(stmt_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
    return *this;
  }
  Stmt& Bind(int i, int64_t v) {
    sqlite3_bind_int64(stmt_, i, v);
    return *this;
  }
  Stmt& BindNull(int i) {
    sqlite3_bind_null(stmt_, i);
    return *this;
  }
  // SQLITE_ROW, SQLITE_DONE or an error.
  absl::StatusOr<bool> Step() {
    int rc = sqlite3_step(stmt_);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    return SqliteError(db_, rc, "sqlite step");
  }
  int64_t Int(int col) { return sqlite3_column_int64(stmt_, col); }
  bool IsNull(int col) { return sqlite3_column_type(stmt_, col) == SQLITE_NULL; }
  std::string Text(int col) {
    const void* p = sqlite3_column_blob(stmt_, col);
    int n = sqlite3_column_bytes(stmt_, col);
    return p == nullptr ? std::string() : std::string(static_cast<const char*>(p), n);
  }

 private:
  sqlite3* db_;
  sqlite3_stmt* stmt_ = nullptr;
  int rc_;
};

int64_t ToUs(absl::Time t) { return absl::ToUnixMicros(t); }
absl::Time FromUs(int64_t us) { return absl::FromUnixMicros(us); }

absl::StatusOr<Job> ReadJob(Stmt& s) {
  Job job;
  job.id = s.Text(1);
  job.state = static_cast<JobState>(s.Int(2));
  job.phase = static_cast<JobPhase>(s.Int(3));
  job.create_time = FromUs(s.Int(4));
  if (!s.IsNull(5)) job.start_time = FromUs(s.Int(5));
  if (!s.IsNull(6)) job.finish_time = FromUs(s.Int(6));
  if (!s.IsNull(7)) job.deadline = FromUs(s.Int(7));
  QUANTD_ASSIGN_OR_RETURN(job.spec, DecodeJobSpec(s.Text(8)));
  job.request_echo = s.Text(9);
  job.idempotency_key = s.Text(10);
  if (const size_t scope = job.idempotency_key.find(kKeyScope); scope != std::string::npos) {
    job.idempotency_key.erase(0, scope + 1);  // the submitter's own key, as given
  }
  job.request_fingerprint = s.Text(11);
  job.attempt_count = static_cast<uint32_t>(s.Int(12));
  if (!s.IsNull(13)) {
    // A result that does not read back (written by a bug, or damaged) must
    // not make the job unlistable and undeletable: it reads as DATA_LOSS.
    absl::StatusOr<JobResult> result = DecodeJobResult(s.Text(13));
    if (result.ok()) {
      job.result = *std::move(result);
    } else {
      job.result.emplace();
      job.result->error_code = absl::StatusCode::kDataLoss;
      job.result->error_message = std::string(result.status().message());
    }
  }
  job.owner = s.Text(14);
  // The result keeps the version it published; whether that version is
  // still served is the model_versions table's to say.
  if (job.result && job.result->model_version > 0) job.result->model_version_deleted = s.Int(15) == 0;
  return job;
}

// Reads all rows of `s` into a page of at most `page_size` (one extra row
// tells whether there is a next page; its token is the last row's seq).
absl::StatusOr<JobPage> ReadPage(Stmt& s, int page_size) {
  JobPage page;
  int64_t last_seq = 0;
  while (true) {
    QUANTD_ASSIGN_OR_RETURN(bool row, s.Step());
    if (!row) break;
    if (static_cast<int>(page.jobs.size()) == page_size) {
      page.next_page_token = absl::StrCat(last_seq);
      break;
    }
    last_seq = s.Int(0);
    QUANTD_ASSIGN_OR_RETURN(Job job, ReadJob(s));
    page.jobs.push_back(std::move(job));
  }
  return page;
}

// The first column of every row of `s`: job ids.
absl::StatusOr<std::vector<std::string>> ReadIds(Stmt& s) {
  std::vector<std::string> ids;
  while (true) {
    QUANTD_ASSIGN_OR_RETURN(bool row, s.Step());
    if (!row) break;
    ids.push_back(s.Text(0));
  }
  return ids;
}

absl::StatusOr<int64_t> ParsePageToken(const std::string& token) {
  if (token.empty()) return INT64_MAX;
  int64_t seq = 0;
  if (!absl::SimpleAtoi(token, &seq) || seq <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("page_token: \"", token, "\" is not a token this server issued"));
  }
  return seq;
}

}  // namespace

absl::StatusOr<std::unique_ptr<SqliteJobStore>> SqliteJobStore::Open(const std::string& path) {
  sqlite3* db = nullptr;
  int rc = sqlite3_open_v2(path.c_str(), &db,
                           SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX,
                           nullptr);
  if (rc != SQLITE_OK) {
    std::string message = db ? sqlite3_errmsg(db) : "out of memory";
    sqlite3_close(db);
    return absl::FailedPreconditionError(
        absl::StrCat("cannot open job database \"", path, "\": ", message));
  }
  sqlite3_busy_timeout(db, 5000);
  std::unique_ptr<SqliteJobStore> store(new SqliteJobStore(db));
  absl::MutexLock lock(&store->mu_);
  QUANTD_RETURN_IF_ERROR(store->Exec("PRAGMA journal_mode=WAL"));
  QUANTD_RETURN_IF_ERROR(store->Exec("PRAGMA synchronous=FULL"));
  QUANTD_RETURN_IF_ERROR(store->Exec(kSchema));
  // Job stores from before jobs had owners and leases, and evaluations
  // indexes: every column added since is added here. A RUNNING row without a
  // lease (lease_us NULL) is from a server that has stopped, so it counts as
  // expired; an evaluation without an index is in no LatestEvaluations.
  struct AddedColumn {
    const char* table;
    const char* name;
    const char* definition;
  };
  static constexpr AddedColumn kAdded[] = {
      {"jobs", "owner", "owner TEXT NOT NULL DEFAULT ''"},
      {"jobs", "holder", "holder TEXT NOT NULL DEFAULT ''"},
      {"jobs", "lease_us", "lease_us INTEGER"},
      {"evaluations", "model_name", "model_name TEXT"},
      {"evaluations", "model_version", "model_version INTEGER"},
      {"evaluations", "succeeded_us", "succeeded_us INTEGER"},
      {"evaluations", "has_fp32", "has_fp32 INTEGER NOT NULL DEFAULT 0"},
      // Rows from before it read as running: never pruned.
      {"evaluations", "finished", "finished INTEGER NOT NULL DEFAULT 0"}};
  auto present = [db](const AddedColumn& added) -> absl::StatusOr<bool> {
    Stmt column(db, "SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2");
    QUANTD_RETURN_IF_ERROR(column.status());
    column.Bind(1, std::string(added.table)).Bind(2, std::string(added.name));
    return column.Step();
  };
  bool any_missing = false;
  for (const AddedColumn& added : kAdded) {
    QUANTD_ASSIGN_OR_RETURN(bool there, present(added));
    any_missing = any_missing || !there;
  }
  if (any_missing) {
    // Looked for again and added in one write transaction: two processes
    // opening an old store at once would both see a column missing, and
    // the second's ALTER would fail ("duplicate column"). (Only then: a
    // write lock at every open would wait on another process's writes.)
    QUANTD_RETURN_IF_ERROR(store->Exec("BEGIN IMMEDIATE"));
    const absl::Status migrated = [&]() -> absl::Status {
      for (const AddedColumn& added : kAdded) {
        QUANTD_ASSIGN_OR_RETURN(bool there, present(added));
        if (!there) {
          QUANTD_RETURN_IF_ERROR(
              store->Exec(absl::StrCat("ALTER TABLE ", added.table, " ADD COLUMN ", added.definition).c_str()));
        }
      }
      return absl::OkStatus();
    }();
    if (!migrated.ok()) {
      (void)store->Exec("ROLLBACK");
      return migrated;
    }
    QUANTD_RETURN_IF_ERROR(store->Exec("COMMIT"));
  }
  QUANTD_RETURN_IF_ERROR(store->Exec(
      "CREATE INDEX IF NOT EXISTS evaluations_latest ON evaluations(model_name, model_version, succeeded_us)"));
  return store;
}

SqliteJobStore::~SqliteJobStore() {
  absl::MutexLock lock(&mu_);
  sqlite3_close(db_);
}

absl::Status SqliteJobStore::Exec(const char* sql) {
  char* error = nullptr;
  if (const int rc = sqlite3_exec(db_, sql, nullptr, nullptr, &error); rc != SQLITE_OK) {
    sqlite3_free(error);
    return SqliteError(db_, rc, absl::StrCat("sqlite (in ", sql, ")"));
  }
  return absl::OkStatus();
}

absl::Status SqliteJobStore::EndTransaction(const absl::Status& body) {
  if (!body.ok()) {
    (void)Exec("ROLLBACK");
    return body;
  }
  absl::Status committed = Exec("COMMIT");
  // A failed COMMIT (SQLITE_BUSY, disk full) can leave the transaction open;
  // every later statement on this connection would then be part of it.
  if (!committed.ok() && !sqlite3_get_autocommit(db_)) (void)Exec("ROLLBACK");
  return committed;
}

absl::StatusOr<Job> SqliteJobStore::GetLocked(const std::string& id) {
  Stmt s(db_, absl::StrCat("SELECT ", kColumns, " FROM jobs WHERE id = ?1"));
  QUANTD_RETURN_IF_ERROR(s.status());
  s.Bind(1, id);
  QUANTD_ASSIGN_OR_RETURN(bool row, s.Step());
  if (!row) return absl::NotFoundError(absl::StrCat("job \"", id, "\" not found"));
  return ReadJob(s);
}

absl::StatusOr<Job> SqliteJobStore::Get(const std::string& id) {
  absl::MutexLock lock(&mu_);
  return GetLocked(id);
}

namespace {

// Keys are per submitter: one's "nightly" is not another's. Stored as
// owner, US, key (keys are printable ASCII, so no key holds the US).
std::string StoredIdempotencyKey(const std::string& owner, const std::string& key) {
  if (owner.empty() || key.empty()) return key;
  return owner + kKeyScope + key;
}

}  // namespace

absl::StatusOr<std::optional<Job>> SqliteJobStore::FindByIdempotencyKey(const std::string& owner,
                                                                        const std::string& idempotency_key) {
  if (idempotency_key.empty()) return std::nullopt;
  absl::MutexLock lock(&mu_);
  Stmt s(db_, absl::StrCat("SELECT ", kColumns, " FROM jobs WHERE idempotency_key = ?1"));
  QUANTD_RETURN_IF_ERROR(s.status());
  s.Bind(1, StoredIdempotencyKey(owner, idempotency_key));
  QUANTD_ASSIGN_OR_RETURN(bool row, s.Step());
  if (!row) return std::nullopt;
  QUANTD_ASSIGN_OR_RETURN(Job job, ReadJob(s));
  return job;
}

absl::StatusOr<Job> SqliteJobStore::Create(const Job& job, int64_t max_queued) {
  absl::MutexLock lock(&mu_);
  const std::string stored_key = StoredIdempotencyKey(job.owner, job.idempotency_key);
  QUANTD_RETURN_IF_ERROR(Exec("BEGIN IMMEDIATE"));
  auto body = [&]() -> absl::StatusOr<Job> {
    if (!job.idempotency_key.empty()) {
      Stmt s(db_, absl::StrCat("SELECT ", kColumns, " FROM jobs WHERE idempotency_key = ?1"));
      QUANTD_RETURN_IF_ERROR(s.status());
      s.Bind(1, stored_key);
      QUANTD_ASSIGN_OR_RETURN(bool row, s.Step());
      if (row) {
        QUANTD_ASSIGN_OR_RETURN(Job existing, ReadJob(s));
        if (existing.request_fingerprint != job.request_fingerprint) {
          return absl::AlreadyExistsError(absl::StrCat(
              "idempotency_key \"", job.idempotency_key, "\" was already used by job ",
              existing.id, " with a different request"));
        }
        return existing;
      }
    }
    Stmt count(db_, "SELECT COUNT(*) FROM jobs WHERE state = 1");
    QUANTD_RETURN_IF_ERROR(count.status());
    QUANTD_RETURN_IF_ERROR(count.Step().status());
    if (count.Int(0) >= max_queued) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "the job queue is full (", count.Int(0), " queued, capacity ", max_queued,
          "); retry later"));
    }
    Stmt s(db_,
           "INSERT INTO jobs (id, state, phase, create_us, deadline_us, spec, request, "
           "idempotency_key, fingerprint, attempt, owner) VALUES (?1, 1, 0, ?2, ?3, ?4, ?5, ?6, ?7, 0, ?8)");
    QUANTD_RETURN_IF_ERROR(s.status());
    s.Bind(1, job.id).Bind(2, ToUs(job.create_time));
    if (job.deadline.has_value()) s.Bind(3, ToUs(*job.deadline)); else s.BindNull(3);
    s.Bind(4, EncodeJobSpec(job.spec)).BindBlob(5, job.request_echo);
    if (job.idempotency_key.empty()) s.BindNull(6); else s.Bind(6, stored_key);
    s.Bind(7, job.request_fingerprint).Bind(8, job.owner);
    QUANTD_RETURN_IF_ERROR(s.Step().status());
    return GetLocked(job.id);
  };
  absl::StatusOr<Job> result = body();
  QUANTD_RETURN_IF_ERROR(EndTransaction(result.status()));
  return result;
}

absl::StatusOr<JobPage> SqliteJobStore::List(const std::vector<JobState>& states, int page_size,
                                             const std::string& page_token) {
  QUANTD_ASSIGN_OR_RETURN(int64_t before, ParsePageToken(page_token));
  std::string filter;
  if (!states.empty()) {
    std::vector<int> values;
    for (JobState state : states) values.push_back(static_cast<int>(state));
    filter = absl::StrCat(" AND state IN (", absl::StrJoin(values, ","), ")");
  }
  absl::MutexLock lock(&mu_);
  Stmt s(db_, absl::StrCat("SELECT ", kColumns, " FROM jobs WHERE seq < ?1", filter,
                           " ORDER BY seq DESC LIMIT ?2"));
  QUANTD_RETURN_IF_ERROR(s.status());
  s.Bind(1, before).Bind(2, static_cast<int64_t>(page_size) + 1);
  return ReadPage(s, page_size);
}

absl::StatusOr<std::optional<Job>> SqliteJobStore::ClaimNext(absl::Time now, const std::string& holder,
                                                             absl::Duration lease) {
  absl::MutexLock lock(&mu_);
  // A row that cannot be decoded is failed and the next one is tried, so a
  // bad row never sits RUNNING with nobody running it (nor blocks the queue).
  for (int tries = 0; tries < 100; ++tries) {
    QUANTD_RETURN_IF_ERROR(Exec("BEGIN IMMEDIATE"));
    std::optional<Job> claimed;
    bool undecodable = false;
    auto body = [&]() -> absl::Status {
      // One statement: only the process whose UPDATE matched a QUEUED row owns it.
      Stmt s(db_,
             "UPDATE jobs SET state = 2, phase = 0, attempt = attempt + 1, start_us = ?1, holder = ?2, "
             "lease_us = ?3, artifact_id = NULL "
             "WHERE seq = (SELECT seq FROM jobs WHERE state = 1 ORDER BY seq LIMIT 1) AND state = 1 "
             "RETURNING id");
      QUANTD_RETURN_IF_ERROR(s.status());
      s.Bind(1, ToUs(now)).Bind(2, holder).Bind(3, ToUs(now + lease));
      QUANTD_ASSIGN_OR_RETURN(bool row, s.Step());
      if (!row) return absl::OkStatus();
      const std::string id = s.Text(0);
      QUANTD_RETURN_IF_ERROR(s.Step().status());
      absl::StatusOr<Job> job = GetLocked(id);
      if (job.ok()) {
        claimed = std::move(*job);
        return absl::OkStatus();
      }
      // Only a spec that does not decode is lost for good. Any other error
      // (an I/O error, out of memory) rolls the claim back: the job stays
      // QUEUED for the next claim, its spec untouched.
      if (job.status().code() != absl::StatusCode::kDataLoss) return job.status();
      undecodable = true;
      JobResult failed;
      failed.error_code = absl::StatusCode::kDataLoss;
      failed.error_message = absl::StrCat("the stored job cannot be read back: ", job.status().message());
      // Its spec is replaced by an empty one, so that the FAILED row can be
      // listed, read and deleted (the reason says what was lost).
      Stmt fail(db_, "UPDATE jobs SET state = 4, finish_us = ?1, result = ?2, spec = ?4 WHERE id = ?3");
      QUANTD_RETURN_IF_ERROR(fail.status());
      fail.Bind(1, ToUs(now)).Bind(2, EncodeJobResult(failed)).Bind(3, id).Bind(4, EncodeJobSpec(JobSpec{}));
      return fail.Step().status();
    };
    QUANTD_RETURN_IF_ERROR(EndTransaction(body()));
    if (!undecodable) return claimed;
  }
  return std::optional<Job>();
}

absl::Status SqliteJobStore::RenewLease(const std::string& id, uint32_t attempt, absl::Time expires) {
  absl::MutexLock lock(&mu_);
  Stmt s(db_, "UPDATE jobs SET lease_us = ?1 WHERE id = ?2 AND state = 2 AND attempt = ?3");
  QUANTD_RETURN_IF_ERROR(s.status());
  s.Bind(1, ToUs(expires)).Bind(2, id).Bind(3, static_cast<int64_t>(attempt));
  QUANTD_RETURN_IF_ERROR(s.Step().status());
  if (sqlite3_changes(db_) == 0) {
    return absl::FailedPreconditionError(absl::StrCat("job ", id, " attempt ", attempt, " is no longer running"));
  }
  return absl::OkStatus();
}

absl::Status SqliteJobStore::SetPhase(const std::string& id, uint32_t attempt, JobPhase phase) {
  absl::MutexLock lock(&mu_);
  Stmt s(db_, "UPDATE jobs SET phase = ?1 WHERE id = ?2 AND state = 2 AND attempt = ?3");
  QUANTD_RETURN_IF_ERROR(s.status());
  s.Bind(1, static_cast<int64_t>(phase)).Bind(2, id).Bind(3, static_cast<int64_t>(attempt));
  return s.Step().status();
}

absl::Status SqliteJobStore::Finish(const std::string& id, uint32_t attempt, JobState state,
                                    const JobResult& result, absl::Time now) {
  absl::MutexLock lock(&mu_);
  QUANTD_RETURN_IF_ERROR(Exec("BEGIN IMMEDIATE"));
  return EndTransaction(FinishLocked(id, attempt, state, result, now));
}

absl::Status SqliteJobStore::FinishLocked(const std::string& id, uint32_t attempt, JobState state, JobResult result,
                                          absl::Time now) {
  Stmt running(db_, "SELECT spec FROM jobs WHERE id = ?1 AND state = 2 AND attempt = ?2");
  QUANTD_RETURN_IF_ERROR(running.status());
  running.Bind(1, id).Bind(2, static_cast<int64_t>(attempt));
  QUANTD_ASSIGN_OR_RETURN(bool row, running.Step());
  if (!row) {
    return absl::FailedPreconditionError(absl::StrCat("job ", id, " attempt ", attempt, " is no longer running"));
  }
  QUANTD_ASSIGN_OR_RETURN(JobSpec spec, DecodeJobSpec(running.Text(0)));
  if (state == JobState::kSucceeded) {
    // In the same transaction as the outcome, so a cancel is either seen here
    // or refused (the job no longer RUNNING) when it is asked for.
    Stmt requested(db_, "SELECT 1 FROM cancel_requests WHERE id = ?1");
    QUANTD_RETURN_IF_ERROR(requested.status());
    requested.Bind(1, id);
    QUANTD_ASSIGN_OR_RETURN(bool cancel_requested, requested.Step());
    if (cancel_requested) return absl::AbortedError(absl::StrCat("job ", id, " was cancelled before it finished"));
  }
  if (state == JobState::kSucceeded && !spec.model_name.empty()) {
    // Versions are counted, not computed from the rows: a deleted version's
    // number is never handed out again.
    Stmt next(db_,
              "INSERT INTO counters (name, value) VALUES (?1, 1) "
              "ON CONFLICT(name) DO UPDATE SET value = value + 1 RETURNING value");
    QUANTD_RETURN_IF_ERROR(next.status());
    next.Bind(1, absl::StrCat("model_version:", spec.model_name));
    QUANTD_ASSIGN_OR_RETURN(bool counted, next.Step());
    if (!counted) return absl::InternalError("sqlite: no model version returned");
    result.model_name = spec.model_name;
    result.model_version = next.Int(0);
    QUANTD_RETURN_IF_ERROR(next.Step().status());
    Stmt publish(db_, "INSERT INTO model_versions (name, version, job_id, create_us) VALUES (?1, ?2, ?3, ?4)");
    QUANTD_RETURN_IF_ERROR(publish.status());
    publish.Bind(1, spec.model_name).Bind(2, result.model_version).Bind(3, id).Bind(4, ToUs(now));
    QUANTD_RETURN_IF_ERROR(publish.Step().status());
  }
  Stmt s(db_,
         "UPDATE jobs SET state = ?1, finish_us = ?2, result = ?3, artifact_id = ?4 "
         "WHERE id = ?5 AND state = 2 AND attempt = ?6");
  QUANTD_RETURN_IF_ERROR(s.status());
  s.Bind(1, static_cast<int64_t>(state)).Bind(2, ToUs(now)).Bind(3, EncodeJobResult(result));
  if (result.artifact_id.empty()) s.BindNull(4); else s.Bind(4, result.artifact_id);
  s.Bind(5, id).Bind(6, static_cast<int64_t>(attempt));
  QUANTD_RETURN_IF_ERROR(s.Step().status());
  return ClearCancelRequestLocked(id);
}

absl::Status SqliteJobStore::ClearCancelRequestLocked(const std::string& id) {
  Stmt s(db_, "DELETE FROM cancel_requests WHERE id = ?1");
  QUANTD_RETURN_IF_ERROR(s.status());
  s.Bind(1, id);
  return s.Step().status();
}

absl::StatusOr<bool> SqliteJobStore::InsertCancelRequestLocked(const std::string& id, const std::string& reason,
                                                               const char* running) {
  Stmt s(db_, absl::StrCat("INSERT OR REPLACE INTO cancel_requests (id, reason) SELECT ?1, ?2 WHERE EXISTS (",
                           running, ")"));
  QUANTD_RETURN_IF_ERROR(s.status());
  s.Bind(1, id).Bind(2, reason);
  QUANTD_RETURN_IF_ERROR(s.Step().status());
  return sqlite3_changes(db_) == 1;
}

absl::Status SqliteJobStore::RequestCancel(const std::string& id, const std::string& reason) {
  absl::MutexLock lock(&mu_);
  QUANTD_ASSIGN_OR_RETURN(bool inserted,
                          InsertCancelRequestLocked(id, reason, "SELECT 1 FROM jobs WHERE id = ?1 AND state = 2"));
  if (!inserted) return absl::FailedPreconditionError(absl::StrCat("job ", id, " is not RUNNING"));
  return absl::OkStatus();
}

absl::Status SqliteJobStore::RequestEvaluationCancel(const std::string& id, const std::string& reason) {
  absl::MutexLock lock(&mu_);
  // Only while its record says RUNNING (state 1 in the record's JSON): one
  // that finished since the caller looked must not get a request that no
  // final record will clear.
  QUANTD_ASSIGN_OR_RETURN(
      bool inserted,
      InsertCancelRequestLocked(id, reason,
                                "SELECT 1 FROM evaluations WHERE id = ?1 AND json_extract(record, '$.state') = 1"));
  if (inserted) return absl::OkStatus();
  Stmt exists(db_, "SELECT 1 FROM evaluations WHERE id = ?1");
  QUANTD_RETURN_IF_ERROR(exists.status());
  exists.Bind(1, id);
  QUANTD_ASSIGN_OR_RETURN(bool row, exists.Step());
  if (!row) return absl::NotFoundError(absl::StrCat("no evaluation ", id));
  return absl::FailedPreconditionError(absl::StrCat("evaluation ", id, " has finished"));
}

absl::StatusOr<std::optional<std::string>> SqliteJobStore::CancelRequest(const std::string& id) {
  absl::MutexLock lock(&mu_);
  Stmt s(db_, "SELECT reason FROM cancel_requests WHERE id = ?1");
  QUANTD_RETURN_IF_ERROR(s.status());
  s.Bind(1, id);
  QUANTD_ASSIGN_OR_RETURN(bool row, s.Step());
  if (!row) return std::optional<std::string>();
  return std::optional<std::string>(s.Text(0));
}

absl::StatusOr<std::optional<std::string>> SqliteJobStore::Release(const std::string& id, uint32_t attempt) {
  absl::MutexLock lock(&mu_);
  Stmt s(db_,
         "UPDATE jobs SET state = 1, phase = 0, attempt = attempt - 1, lease_us = NULL, artifact_id = NULL "
         "WHERE id = ?1 AND state = 2 AND attempt = ?2 AND NOT EXISTS (SELECT 1 FROM cancel_requests WHERE id = ?1)");
  QUANTD_RETURN_IF_ERROR(s.status());
  s.Bind(1, id).Bind(2, static_cast<int64_t>(attempt));
  QUANTD_RETURN_IF_ERROR(s.Step().status());
  if (sqlite3_changes(db_) == 1) return std::optional<std::string>();
  // Not released: another attempt owns the job (nothing to do), or a cancel
  // request kept it (the UPDATE checked for one in the same statement, so
  // none slipped in between).
  Stmt requested(db_,
                 "SELECT reason FROM cancel_requests WHERE id = ?1 AND EXISTS "
                 "(SELECT 1 FROM jobs WHERE id = ?1 AND state = 2 AND attempt = ?2)");
  QUANTD_RETURN_IF_ERROR(requested.status());
  requested.Bind(1, id).Bind(2, static_cast<int64_t>(attempt));
  QUANTD_ASSIGN_OR_RETURN(bool row, requested.Step());
  if (!row) return std::optional<std::string>();
  return std::optional<std::string>(requested.Text(0));
}

absl::StatusOr<Job> SqliteJobStore::CancelQueued(const std::string& id, const std::string& reason,
                                                 absl::Time now) {
  absl::MutexLock lock(&mu_);
  JobResult result;
  result.error_code = absl::StatusCode::kCancelled;
  result.error_message = reason;
  // One transaction: a failure after the UPDATE (a busy store) must not leave
  // the job CANCELLED while the caller is told the cancel failed.
  QUANTD_RETURN_IF_ERROR(Exec("BEGIN IMMEDIATE"));
  auto body = [&]() -> absl::StatusOr<Job> {
    Stmt s(db_, "UPDATE jobs SET state = 5, finish_us = ?1, result = ?2 WHERE id = ?3 AND state = 1");
    QUANTD_RETURN_IF_ERROR(s.status());
    s.Bind(1, ToUs(now)).Bind(2, EncodeJobResult(result)).Bind(3, id);
    QUANTD_RETURN_IF_ERROR(s.Step().status());
    // Read before GetLocked: whether this call made the change. A job already
    // CANCELLED (by a concurrent CancelJob) is not QUEUED either, so only one
    // caller publishes the cancellation's events.
    const bool changed = sqlite3_changes(db_) == 1;
    QUANTD_ASSIGN_OR_RETURN(Job job, GetLocked(id));
    if (!changed) {
      return absl::FailedPreconditionError(absl::StrCat("job ", id, " is ", JobStateName(job.state), ", not QUEUED"));
    }
    // A cancel asked of an earlier attempt (released to the queue at a
    // shutdown before it saw it) is answered now.
    QUANTD_RETURN_IF_ERROR(ClearCancelRequestLocked(id));
    return job;
  };
  absl::StatusOr<Job> cancelled = body();
  QUANTD_RETURN_IF_ERROR(EndTransaction(cancelled.status()));
  return cancelled;
}

absl::StatusOr<uint64_t> SqliteJobStore::NextGeneration() {
  absl::MutexLock lock(&mu_);
  Stmt s(db_,
         "INSERT INTO counters (name, value) VALUES ('generation', 1) "
         "ON CONFLICT(name) DO UPDATE SET value = value + 1 RETURNING value");
  QUANTD_RETURN_IF_ERROR(s.status());
  QUANTD_ASSIGN_OR_RETURN(bool row, s.Step());
  if (!row) return absl::InternalError("sqlite: no generation returned");
  const int64_t generation = s.Int(0);
  QUANTD_RETURN_IF_ERROR(s.Step().status());  // finish the statement: commits
  return static_cast<uint64_t>(generation);
}

absl::Status SqliteJobStore::PinArtifact(const std::string& id, uint32_t attempt, const std::string& artifact_id) {
  absl::MutexLock lock(&mu_);
  Stmt s(db_, "UPDATE jobs SET artifact_id = ?1 WHERE id = ?2 AND state = 2 AND attempt = ?3");
  QUANTD_RETURN_IF_ERROR(s.status());
  s.Bind(1, artifact_id).Bind(2, id).Bind(3, static_cast<int64_t>(attempt));
  QUANTD_RETURN_IF_ERROR(s.Step().status());
  if (sqlite3_changes(db_) != 1) {
    return absl::FailedPreconditionError(absl::StrCat("job ", id, " attempt ", attempt, " is no longer running"));
  }
  return absl::OkStatus();
}

absl::Status SqliteJobStore::WithArtifactLocked(const std::string& artifact_id, const ArtifactHoldersUse& use) {
  absl::MutexLock lock(&mu_);
  return WithArtifactLockedLocked(artifact_id, use);
}

absl::Status SqliteJobStore::WithArtifactLockedLocked(const std::string& artifact_id,
                                                      const ArtifactHoldersUse& use) {
  // mu_ keeps this process's PinArtifact out; the write lock of BEGIN
  // IMMEDIATE keeps out every other connection's (PinArtifact writes) until
  // the ROLLBACK. Nothing is written here, so nothing can be lost by it.
  QUANTD_RETURN_IF_ERROR(Exec("BEGIN IMMEDIATE"));
  absl::Status used = [&]() -> absl::Status {
    QUANTD_ASSIGN_OR_RETURN(const std::vector<std::string> holders, ArtifactHoldersLocked(artifact_id));
    return use(holders);
  }();
  (void)Exec("ROLLBACK");
  return used;
}

absl::Status SqliteJobStore::Delete(const std::string& id, const ReleaseArtifact& release) {
  absl::MutexLock lock(&mu_);
  QUANTD_ASSIGN_OR_RETURN(Job job, GetLocked(id));
  if (!IsTerminal(job.state)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "job ", id, " is ", JobStateName(job.state), "; cancel it before deleting it"));
  }
  const bool has_artifact = job.result.has_value() && !job.result->artifact_id.empty();
  // The job, its cancel request and its model version go in one transaction:
  // a crash or write error in between never leaves a version whose job is
  // gone.
  QUANTD_RETURN_IF_ERROR(Exec("BEGIN IMMEDIATE"));
  absl::Status deleted = [&]() -> absl::Status {
    Stmt s(db_, "DELETE FROM jobs WHERE id = ?1 AND state IN (3, 4, 5)");
    QUANTD_RETURN_IF_ERROR(s.status());
    s.Bind(1, id);
    QUANTD_RETURN_IF_ERROR(s.Step().status());
    // Read before the transaction: another replica (or a retry landing on
    // one) may have deleted it since, and only one of them did.
    if (sqlite3_changes(db_) == 0) return absl::NotFoundError(absl::StrCat("job \"", id, "\" not found"));
    QUANTD_RETURN_IF_ERROR(ClearCancelRequestLocked(id));  // one left by a crashed runner
    // Its version's evaluations go with it: nothing else ever deletes them.
    Stmt evaluations(db_,
                     "DELETE FROM evaluations WHERE (model_name, model_version) IN "
                     "(SELECT name, version FROM model_versions WHERE job_id = ?1)");
    QUANTD_RETURN_IF_ERROR(evaluations.status());
    evaluations.Bind(1, id);
    QUANTD_RETURN_IF_ERROR(evaluations.Step().status());
    Stmt unpublish(db_, "DELETE FROM model_versions WHERE job_id = ?1");
    QUANTD_RETURN_IF_ERROR(unpublish.status());
    unpublish.Bind(1, id);
    QUANTD_RETURN_IF_ERROR(unpublish.Step().status());
    // Remembered, so that the artifact sweep removes what this deletion
    // leaves behind, and keeps the files of jobs this store never knew.
    Stmt remember(db_, "INSERT OR IGNORE INTO deleted_jobs (id) VALUES (?1)");
    QUANTD_RETURN_IF_ERROR(remember.status());
    remember.Bind(1, id);
    return remember.Step().status();
  }();
  QUANTD_RETURN_IF_ERROR(EndTransaction(deleted));
  if (!release || !has_artifact) return absl::OkStatus();
  // Files go only once the deletion is committed (a failed commit leaves the
  // job and its artifact both in place), and under the lock that pinning
  // waits for. The job is gone now whatever happens to its files: a caller
  // told otherwise would retry into NOT_FOUND.
  const absl::Status released = WithArtifactLockedLocked(
      job.result->artifact_id,
      [&](const std::vector<std::string>& holders) { return release(job, /*last_holder=*/holders.empty()); });
  if (!released.ok()) {
    Log(LogLevel::kWarning, "quantd: deleted job ", id, ", but not its artifact ", job.result->artifact_id,
        " (the next start's sweep removes it if no job holds it): ", released);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<Job>> SqliteJobStore::JobsWithArtifact(const std::string& artifact_id) {
  absl::MutexLock lock(&mu_);
  Stmt s(db_, absl::StrCat("SELECT ", kColumns,
                           " FROM jobs WHERE artifact_id = ?1 AND state = 3 ORDER BY seq"));
  QUANTD_RETURN_IF_ERROR(s.status());
  s.Bind(1, artifact_id);
  QUANTD_ASSIGN_OR_RETURN(JobPage page, ReadPage(s, INT32_MAX));
  return std::move(page.jobs);
}

absl::StatusOr<std::vector<std::string>> SqliteJobStore::ArtifactHolders(const std::string& artifact_id) {
  absl::MutexLock lock(&mu_);
  return ArtifactHoldersLocked(artifact_id);
}

absl::StatusOr<std::vector<std::string>> SqliteJobStore::ArtifactHoldersLocked(const std::string& artifact_id) {
  Stmt s(db_, absl::StrCat("SELECT id FROM jobs WHERE ", kHoldsArtifact, " ORDER BY seq"));
  QUANTD_RETURN_IF_ERROR(s.status());
  s.Bind(1, artifact_id);
  return ReadIds(s);
}

absl::StatusOr<bool> SqliteJobStore::WasDeleted(const std::string& id) {
  absl::MutexLock lock(&mu_);
  Stmt s(db_, "SELECT id FROM deleted_jobs WHERE id = ?1");
  QUANTD_RETURN_IF_ERROR(s.status());
  s.Bind(1, id);
  return s.Step();
}

absl::StatusOr<std::vector<std::string>> SqliteJobStore::ActiveJobsUsing(const std::string& needle) {
  absl::MutexLock lock(&mu_);
  // instr(), not LIKE: the needle is matched literally. A published job
  // holds its source model only, not the datasets it was calibrated,
  // tuned or evaluated on.
  Stmt s(db_,
         "SELECT id FROM jobs WHERE (state IN (1, 2) AND instr(spec, ?1) > 0) "
         "OR (id IN (SELECT job_id FROM model_versions) AND instr(json_extract(spec, '$.model_path'), ?1) > 0) "
         "ORDER BY seq");
  QUANTD_RETURN_IF_ERROR(s.status());
  s.Bind(1, needle);
  return ReadIds(s);
}

absl::StatusOr<JobPage> SqliteJobStore::ListArtifactJobs(const std::string& job_id, int page_size,
                                                         const std::string& page_token) {
  QUANTD_ASSIGN_OR_RETURN(int64_t before, ParsePageToken(page_token));
  absl::MutexLock lock(&mu_);
  std::string job_filter = job_id.empty() ? "" : " AND artifact_id = (SELECT artifact_id FROM jobs WHERE id = ?3)";
  Stmt s(db_, absl::StrCat("SELECT ", kColumns, " FROM jobs WHERE seq IN (SELECT MIN(seq) FROM jobs "
                           "WHERE state = 3 AND artifact_id IS NOT NULL GROUP BY artifact_id) "
                           "AND seq < ?1", job_filter, " ORDER BY seq DESC LIMIT ?2"));
  QUANTD_RETURN_IF_ERROR(s.status());
  s.Bind(1, before).Bind(2, static_cast<int64_t>(page_size) + 1);
  if (!job_id.empty()) s.Bind(3, job_id);
  return ReadPage(s, page_size);
}

absl::StatusOr<JobStore::RecoveryCounts> SqliteJobStore::RecoverInterrupted(
    uint32_t max_attempts, absl::Time now, const std::string& restarted_holder) {
  absl::MutexLock lock(&mu_);
  QUANTD_RETURN_IF_ERROR(Exec("BEGIN IMMEDIATE"));
  absl::StatusOr<RecoveryCounts> counts = RecoverInterruptedLocked(max_attempts, now, restarted_holder);
  QUANTD_RETURN_IF_ERROR(EndTransaction(counts.status()));
  return counts;
}

absl::StatusOr<JobStore::RecoveryCounts> SqliteJobStore::RecoverInterruptedLocked(
    uint32_t max_attempts, absl::Time now, const std::string& restarted_holder) {
  RecoveryCounts counts;
  // ?1 = now, ?2 = the restarted holder ('' = none).
  constexpr char kInterrupted[] =
      "state = 2 AND (lease_us IS NULL OR lease_us < ?1 OR (?2 <> '' AND holder = ?2))";
  // A cancel acknowledged before the interruption is the job's outcome: it
  // must not run again (nor fail for having crashed).
  std::vector<std::pair<std::string, std::string>> cancelled;  // id, reason
  {
    Stmt requested(db_, absl::StrCat("SELECT jobs.id, cancel_requests.reason FROM jobs JOIN cancel_requests "
                                     "ON cancel_requests.id = jobs.id WHERE ", kInterrupted));
    QUANTD_RETURN_IF_ERROR(requested.status());
    requested.Bind(1, ToUs(now)).Bind(2, restarted_holder);
    while (true) {
      QUANTD_ASSIGN_OR_RETURN(bool row, requested.Step());
      if (!row) break;
      cancelled.emplace_back(requested.Text(0), requested.Text(1));
    }
  }
  for (const auto& [id, reason] : cancelled) {
    JobResult result;
    result.error_code = absl::StatusCode::kCancelled;
    result.error_message = CancelledMessage(reason);
    Stmt cancel(db_, "UPDATE jobs SET state = 5, finish_us = ?1, result = ?2, lease_us = NULL, artifact_id = NULL WHERE id = ?3");
    QUANTD_RETURN_IF_ERROR(cancel.status());
    cancel.Bind(1, ToUs(now)).Bind(2, EncodeJobResult(result)).Bind(3, id);
    QUANTD_RETURN_IF_ERROR(cancel.Step().status());
    QUANTD_RETURN_IF_ERROR(ClearCancelRequestLocked(id));
    ++counts.cancelled;
  }
  JobResult failed;
  failed.error_code = absl::StatusCode::kAborted;
  // Interrupted is all the store knows: the job may have crashed its server,
  // or the server was killed or lost its lease for another reason.
  failed.error_message = absl::StrCat("the job was interrupted while running ", max_attempts,
                                      " times (its server crashed, was killed or lost the job's lease); "
                                      "not retried again");
  Stmt fail(db_, absl::StrCat("UPDATE jobs SET state = 4, finish_us = ?1, result = ?3, lease_us = NULL, artifact_id = NULL "
                              "WHERE ", kInterrupted, " AND attempt >= ?4"));
  QUANTD_RETURN_IF_ERROR(fail.status());
  fail.Bind(1, ToUs(now)).Bind(2, restarted_holder).Bind(3, EncodeJobResult(failed));
  fail.Bind(4, static_cast<int64_t>(max_attempts));
  QUANTD_RETURN_IF_ERROR(fail.Step().status());
  counts.failed = sqlite3_changes(db_);
  Stmt requeue(db_, absl::StrCat("UPDATE jobs SET state = 1, phase = 0, lease_us = NULL, artifact_id = NULL WHERE ",
                                 kInterrupted));
  QUANTD_RETURN_IF_ERROR(requeue.status());
  requeue.Bind(1, ToUs(now)).Bind(2, restarted_holder);
  QUANTD_RETURN_IF_ERROR(requeue.Step().status());
  counts.requeued = sqlite3_changes(db_);
  return counts;
}

absl::StatusOr<std::vector<ModelVersion>> SqliteJobStore::ListModelVersions(const std::string& name) {
  absl::MutexLock lock(&mu_);
  Stmt s(db_,
         "SELECT name, version, job_id, create_us FROM model_versions WHERE ?1 = '' OR name = ?1 "
         "ORDER BY name, version");
  QUANTD_RETURN_IF_ERROR(s.status());
  s.Bind(1, name);
  std::vector<ModelVersion> versions;
  while (true) {
    QUANTD_ASSIGN_OR_RETURN(bool row, s.Step());
    if (!row) break;
    versions.push_back({s.Text(0), s.Int(1), s.Text(2), FromUs(s.Int(3))});
  }
  return versions;
}

absl::Status SqliteJobStore::PutEvaluation(const std::string& id, const std::string& record,
                                           const EvaluationIndex& index) {
  absl::MutexLock lock(&mu_);
  // Only while its version is published: deleting the version deletes its
  // evaluations, and one running then must not write its record back.
  Stmt s(db_,
         "INSERT OR REPLACE INTO evaluations "
         "(id, record, model_name, model_version, succeeded_us, has_fp32, finished) "
         "SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7 WHERE EXISTS "
         "(SELECT 1 FROM model_versions WHERE name = ?3 AND version = ?4)");
  QUANTD_RETURN_IF_ERROR(s.status());
  s.Bind(1, id).Bind(2, record).Bind(3, index.model_name).Bind(4, index.model_version);
  if (index.succeeded.has_value()) s.Bind(5, ToUs(*index.succeeded)); else s.BindNull(5);
  s.Bind(6, int64_t{index.has_fp32 ? 1 : 0}).Bind(7, int64_t{index.finished ? 1 : 0});
  QUANTD_RETURN_IF_ERROR(s.Step().status());
  if (sqlite3_changes(db_) == 0) {
    ClearCancelRequestLocked(id).IgnoreError();  // nothing will read it
    return absl::NotFoundError(absl::StrCat("model version ", index.model_name, ":", index.model_version,
                                            " was deleted"));
  }
  if (!index.finished) return absl::OkStatus();
  QUANTD_RETURN_IF_ERROR(ClearCancelRequestLocked(id));
  // Every Evaluate adds a record: past the newest kEvaluationsKeptPerVersion
  // of a version, finished ones go, except those LatestEvaluations returns
  // (ids are ordered by creation time).
  Stmt prune(db_,
             "DELETE FROM evaluations WHERE model_name = ?1 AND model_version = ?2 AND finished = 1 "
             "AND id NOT IN (SELECT id FROM evaluations WHERE model_name = ?1 AND model_version = ?2 "
             "ORDER BY id DESC LIMIT ?3) "
             "AND id NOT IN (SELECT id FROM evaluations WHERE model_name = ?1 AND model_version = ?2 "
             "AND succeeded_us IS NOT NULL ORDER BY succeeded_us DESC, id DESC LIMIT 1) "
             "AND id NOT IN (SELECT id FROM evaluations WHERE model_name = ?1 AND model_version = ?2 "
             "AND succeeded_us IS NOT NULL AND has_fp32 = 1 ORDER BY succeeded_us DESC, id DESC LIMIT 1)");
  QUANTD_RETURN_IF_ERROR(prune.status());
  prune.Bind(1, index.model_name).Bind(2, index.model_version).Bind(3, kEvaluationsKeptPerVersion);
  // The record is stored either way: a prune that failed is tried again by the next one.
  if (const absl::Status pruned = prune.Step().status(); !pruned.ok()) {
    Log(LogLevel::kWarning, "job store: old evaluations of ", index.model_name, ":", index.model_version,
        " were not pruned: ", pruned.message());
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::string>> SqliteJobStore::LatestEvaluations() {
  absl::MutexLock lock(&mu_);
  // Each version's newest succeeded row, and its newest with FP32; a row
  // that is both is returned once.
  Stmt s(db_,
         "SELECT e.record FROM evaluations e WHERE e.succeeded_us IS NOT NULL AND ("
         "e.succeeded_us = (SELECT MAX(succeeded_us) FROM evaluations "
         "WHERE model_name = e.model_name AND model_version = e.model_version) OR "
         "(e.has_fp32 = 1 AND e.succeeded_us = (SELECT MAX(succeeded_us) FROM evaluations "
         "WHERE model_name = e.model_name AND model_version = e.model_version AND has_fp32 = 1))) "
         // An evaluation that was running when its version was deleted
         // writes its record after the deletion.
         "AND EXISTS (SELECT 1 FROM model_versions v WHERE v.name = e.model_name AND v.version = e.model_version) "
         "ORDER BY e.succeeded_us, e.id");
  QUANTD_RETURN_IF_ERROR(s.status());
  std::vector<std::string> records;
  while (true) {
    QUANTD_ASSIGN_OR_RETURN(bool row, s.Step());
    if (!row) break;
    records.push_back(s.Text(0));
  }
  return records;
}

absl::StatusOr<std::string> SqliteJobStore::GetEvaluation(const std::string& id) {
  absl::MutexLock lock(&mu_);
  Stmt s(db_, "SELECT record FROM evaluations WHERE id = ?1");
  QUANTD_RETURN_IF_ERROR(s.status());
  s.Bind(1, id);
  QUANTD_ASSIGN_OR_RETURN(bool row, s.Step());
  if (!row) {
    return absl::NotFoundError(absl::StrCat("evaluation \"", id.substr(0, 64),
                                            "\" not found (an evaluation goes with its model version)"));
  }
  return s.Text(0);
}

absl::StatusOr<std::map<JobState, int64_t>> SqliteJobStore::CountByState() {
  absl::MutexLock lock(&mu_);
  Stmt s(db_, "SELECT state, COUNT(*) FROM jobs GROUP BY state");
  QUANTD_RETURN_IF_ERROR(s.status());
  std::map<JobState, int64_t> counts;
  while (true) {
    QUANTD_ASSIGN_OR_RETURN(bool row, s.Step());
    if (!row) break;
    counts[static_cast<JobState>(s.Int(0))] = s.Int(1);
  }
  return counts;
}

absl::StatusOr<ModelVersion> SqliteJobStore::GetModelVersion(const std::string& name, int64_t version) {
  absl::MutexLock lock(&mu_);
  Stmt s(db_,
         "SELECT name, version, job_id, create_us FROM model_versions WHERE name = ?1 AND (?2 = 0 OR version = ?2) "
         "ORDER BY version DESC LIMIT 1");
  QUANTD_RETURN_IF_ERROR(s.status());
  s.Bind(1, name).Bind(2, version);
  QUANTD_ASSIGN_OR_RETURN(bool row, s.Step());
  if (!row) {
    return absl::NotFoundError(version == 0 ? absl::StrCat("model \"", name, "\" has no published version")
                                            : absl::StrCat("model \"", name, "\" has no version ", version));
  }
  return ModelVersion{s.Text(0), s.Int(1), s.Text(2), FromUs(s.Int(3))};
}

absl::Status SqliteJobStore::DeleteModelVersion(const std::string& name, int64_t version) {
  absl::MutexLock lock(&mu_);
  QUANTD_RETURN_IF_ERROR(Exec("BEGIN IMMEDIATE"));
  absl::Status deleted = [&]() -> absl::Status {
    Stmt s(db_, "DELETE FROM model_versions WHERE name = ?1 AND version = ?2");
    QUANTD_RETURN_IF_ERROR(s.status());
    s.Bind(1, name).Bind(2, version);
    QUANTD_RETURN_IF_ERROR(s.Step().status());
    if (sqlite3_changes(db_) != 1) {
      return absl::NotFoundError(absl::StrCat("model \"", name, "\" has no version ", version));
    }
    // Its evaluations go with it (version numbers are never handed out
    // again): nothing else ever deletes them, and each Evaluate adds one.
    Stmt evaluations(db_, "DELETE FROM evaluations WHERE model_name = ?1 AND model_version = ?2");
    QUANTD_RETURN_IF_ERROR(evaluations.status());
    evaluations.Bind(1, name).Bind(2, version);
    return evaluations.Step().status();
  }();
  return EndTransaction(deleted);
}

}  // namespace quantd::worker
