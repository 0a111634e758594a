-- The sandbox's SQLite schema. Budgets are integers (nano-epsilon, atto-delta).
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS principals (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    organisation  TEXT NOT NULL,
    roles         TEXT NOT NULL,            -- comma-separated role names
    public_key    BLOB NOT NULL UNIQUE,
    status        TEXT NOT NULL CHECK (status IN ('active', 'pending', 'suspended')),
    created_at_ms INTEGER NOT NULL,
    enrolled_by   TEXT,
    active_since_ms INTEGER NOT NULL DEFAULT 0  -- approval time: requests signed before it are refused
);

CREATE TABLE IF NOT EXISTS nonces (
    principal_id TEXT NOT NULL,
    nonce        TEXT NOT NULL,
    ts_ms        INTEGER NOT NULL,
    PRIMARY KEY (principal_id, nonce)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS nonces_ts ON nonces (ts_ms);

-- A version is HMAC-SHA256(catalogue key, content_sha256): nobody without the key can recompute it from a guessed
-- table. content_sha256 and the exact row_count never leave the server; the catalogue shows public_rows, the row
-- count released once with differential privacy at import. (Versions imported before the key existed are their
-- content_sha256: see storage._migrate_datasets.)
CREATE TABLE IF NOT EXISTS datasets (
    name           TEXT NOT NULL,
    version        TEXT NOT NULL,
    schema_json    TEXT NOT NULL,
    row_count      INTEGER NOT NULL,
    imported_at_ms INTEGER NOT NULL,
    imported_by    TEXT NOT NULL,
    content_sha256 TEXT NOT NULL,
    public_rows    INTEGER NOT NULL CHECK (public_rows >= 0),
    PRIMARY KEY (name, version)
);
CREATE TRIGGER IF NOT EXISTS datasets_read_only BEFORE UPDATE ON datasets
BEGIN SELECT RAISE(ABORT, 'datasets are read-only'); END;

CREATE TABLE IF NOT EXISTS scenarios (
    id               TEXT PRIMARY KEY,
    applicant_id     TEXT NOT NULL REFERENCES principals (id),
    application      BLOB NOT NULL,         -- serialised sandbox.v1.Application, resolved
    status           TEXT NOT NULL CHECK (status IN ('pending', 'approved', 'rejected', 'revoked')),
    decision_reason  TEXT NOT NULL DEFAULT '',
    decided_by       TEXT,
    created_at_ms    INTEGER NOT NULL,
    decided_at_ms    INTEGER
);
CREATE INDEX IF NOT EXISTS scenarios_status ON scenarios (status);

-- One scenario, one authorisation: the UNIQUE constraint is the enforcement.
CREATE TABLE IF NOT EXISTS grants (
    id             TEXT PRIMARY KEY,
    scenario_id    TEXT NOT NULL UNIQUE REFERENCES scenarios (id),
    terms          BLOB NOT NULL,           -- serialised sandbox.v1.GrantTerms, as signed
    signature      BLOB NOT NULL,
    approver_id    TEXT NOT NULL REFERENCES principals (id),
    issued_at_ms   INTEGER NOT NULL,
    revoked_at_ms  INTEGER,
    revoke_reason  TEXT NOT NULL DEFAULT ''
);
CREATE TRIGGER IF NOT EXISTS grants_terms_immutable BEFORE UPDATE OF id, scenario_id, terms, signature, approver_id, issued_at_ms ON grants
BEGIN SELECT RAISE(ABORT, 'grant terms are immutable'); END;
CREATE TRIGGER IF NOT EXISTS grants_no_delete BEFORE DELETE ON grants
BEGIN SELECT RAISE(ABORT, 'grants cannot be deleted'); END;

CREATE TABLE IF NOT EXISTS budgets (
    grant_id           TEXT PRIMARY KEY REFERENCES grants (id),
    epsilon_cap_nano   INTEGER NOT NULL CHECK (epsilon_cap_nano >= 0),
    epsilon_spent_nano INTEGER NOT NULL DEFAULT 0,
    delta_cap_atto     INTEGER NOT NULL CHECK (delta_cap_atto >= 0),
    delta_spent_atto   INTEGER NOT NULL DEFAULT 0,
    quota_cap          INTEGER NOT NULL CHECK (quota_cap >= 0),
    quota_used         INTEGER NOT NULL DEFAULT 0,
    CHECK (epsilon_spent_nano BETWEEN 0 AND epsilon_cap_nano),
    CHECK (delta_spent_atto BETWEEN 0 AND delta_cap_atto),
    CHECK (quota_used BETWEEN 0 AND quota_cap)
);
CREATE TRIGGER IF NOT EXISTS budgets_never_refund BEFORE UPDATE ON budgets
WHEN NEW.epsilon_spent_nano < OLD.epsilon_spent_nano
  OR NEW.delta_spent_atto < OLD.delta_spent_atto
  OR NEW.quota_used < OLD.quota_used
  OR NEW.epsilon_cap_nano != OLD.epsilon_cap_nano
  OR NEW.delta_cap_atto != OLD.delta_cap_atto
  OR NEW.quota_cap != OLD.quota_cap
BEGIN SELECT RAISE(ABORT, 'budgets only grow their spend'); END;

CREATE TABLE IF NOT EXISTS audit_log (
    seq             INTEGER PRIMARY KEY,
    time_ms         INTEGER NOT NULL,
    principal_id    TEXT NOT NULL,
    method          TEXT NOT NULL,
    scenario_id     TEXT NOT NULL,
    grant_id        TEXT NOT NULL,
    status          TEXT NOT NULL,
    error_code      TEXT NOT NULL,
    epsilon_nano    INTEGER NOT NULL,
    delta_atto      INTEGER NOT NULL,
    request_sha256  TEXT NOT NULL,
    response_sha256 TEXT NOT NULL,
    prev_hash       TEXT NOT NULL,
    entry_hash      TEXT NOT NULL,
    request         TEXT NOT NULL DEFAULT '',  -- canonical description of what was asked (covered by entry_hash)
    signature       BLOB                    -- the audit key's over (seq, entry_hash); NULL before entries were signed
);
CREATE INDEX IF NOT EXISTS audit_log_request ON audit_log (request_sha256);
CREATE TRIGGER IF NOT EXISTS audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;

-- Hash-chain checkpoints of the first version of the log: no longer written (tree heads replaced them).
CREATE TABLE IF NOT EXISTS audit_checkpoints (
    seq          INTEGER PRIMARY KEY,
    head_hash    TEXT NOT NULL,
    signed_at_ms INTEGER NOT NULL,
    signature    BLOB NOT NULL
);

-- Signed tree heads of the audit log's Merkle tree (RFC 9162 hashing over the entries' hashes).
CREATE TABLE IF NOT EXISTS tree_heads (
    size         INTEGER PRIMARY KEY,
    root_hash    TEXT NOT NULL,
    signed_at_ms INTEGER NOT NULL,
    signature    BLOB NOT NULL
);
CREATE TRIGGER IF NOT EXISTS tree_heads_no_update BEFORE UPDATE ON tree_heads
BEGIN SELECT RAISE(ABORT, 'tree heads are append-only'); END;
CREATE TRIGGER IF NOT EXISTS tree_heads_no_delete BEFORE DELETE ON tree_heads
BEGIN SELECT RAISE(ABORT, 'tree heads are append-only'); END;

-- Witnesses' countersignatures of tree heads they checked against the last head they had seen.
CREATE TABLE IF NOT EXISTS head_cosignatures (
    size              INTEGER NOT NULL REFERENCES tree_heads (size),
    witness_id        TEXT NOT NULL,
    witness_key       BLOB NOT NULL,
    head_signed_at_ms INTEGER NOT NULL,
    signature         BLOB NOT NULL,
    received_at_ms    INTEGER NOT NULL,
    PRIMARY KEY (size, witness_id)
);
CREATE TRIGGER IF NOT EXISTS head_cosignatures_no_update BEFORE UPDATE ON head_cosignatures
BEGIN SELECT RAISE(ABORT, 'cosignatures are append-only'); END;
CREATE TRIGGER IF NOT EXISTS head_cosignatures_no_delete BEFORE DELETE ON head_cosignatures
BEGIN SELECT RAISE(ABORT, 'cosignatures are append-only'); END;

-- Released DP answers by idempotency key: a retry returns the stored answer and is charged once.
CREATE TABLE IF NOT EXISTS releases (
    grant_id        TEXT NOT NULL REFERENCES grants (id),
    idempotency_key TEXT NOT NULL,
    request_sha256  TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('pending', 'done', 'failed', 'lost')),
    response        BLOB,
    created_at_ms   INTEGER NOT NULL,
    PRIMARY KEY (grant_id, idempotency_key)
) WITHOUT ROWID;

-- Model registry: declarative model specs, identified by the SHA-256 of their canonical JSON.
CREATE TABLE IF NOT EXISTS models (
    model_hash    TEXT PRIMARY KEY,
    canonical     TEXT NOT NULL,
    submitted_by  TEXT NOT NULL REFERENCES principals (id),
    created_at_ms INTEGER NOT NULL
);
CREATE TRIGGER IF NOT EXISTS models_read_only BEFORE UPDATE ON models
BEGIN SELECT RAISE(ABORT, 'models are immutable'); END;

-- Federated-training plan templates (model, features, label), identified by the SHA-256 of their canonical JSON.
CREATE TABLE IF NOT EXISTS plans (
    plan_hash     TEXT PRIMARY KEY,
    canonical     TEXT NOT NULL,
    submitted_by  TEXT NOT NULL REFERENCES principals (id),
    created_at_ms INTEGER NOT NULL
);
CREATE TRIGGER IF NOT EXISTS plans_read_only BEFORE UPDATE ON plans
BEGIN SELECT RAISE(ABORT, 'plans are immutable'); END;

-- HE scoring's per-entity limit: one row per Score call holding its batch's entity ids as keyed 8-byte
-- pseudonyms (BLAKE2b keyed with the server's secret, never an id in the clear), under a random batch key
-- that is never reused. The server counts them per grant (sandbox/he_entities.py).
CREATE TABLE IF NOT EXISTS he_scored (
    batch      INTEGER PRIMARY KEY,
    grant_id   TEXT NOT NULL REFERENCES grants (id),
    pseudonyms BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS he_scored_grant ON he_scored (grant_id, batch);

-- Who holds each dataset (every version): its department, its stewards, when they must co-sign (谁持有谁负责).
CREATE TABLE IF NOT EXISTS stewardship (
    dataset       TEXT PRIMARY KEY,
    owner         TEXT NOT NULL,
    steward_ids   TEXT NOT NULL,            -- comma-separated principal ids
    policy        TEXT NOT NULL CHECK (policy IN ('never', 'sensitive', 'always')),
    updated_at_ms INTEGER NOT NULL,
    updated_by    TEXT NOT NULL
);

-- Stewards' co-signatures of grant terms: append-only; a grant that needs one is inactive until it is here.
CREATE TABLE IF NOT EXISTS grant_cosignatures (
    grant_id     TEXT NOT NULL REFERENCES grants (id),
    dataset      TEXT NOT NULL,
    steward_id   TEXT NOT NULL,
    steward_key  BLOB NOT NULL,
    signature    BLOB NOT NULL,
    signed_at_ms INTEGER NOT NULL,
    PRIMARY KEY (grant_id, dataset)
);
CREATE TRIGGER IF NOT EXISTS grant_cosignatures_no_update BEFORE UPDATE ON grant_cosignatures
BEGIN SELECT RAISE(ABORT, 'co-signatures are append-only'); END;
CREATE TRIGGER IF NOT EXISTS grant_cosignatures_no_delete BEFORE DELETE ON grant_cosignatures
BEGIN SELECT RAISE(ABORT, 'co-signatures are append-only'); END;

-- Federated-training jobs (schema version 4): a summary row per job, written in the transaction that charged it,
-- updated while it runs and fixed once it ends (completed, failed, cancelled, revoked); ``plan`` is the engine's
-- canonical plan (public scaling, no data), ``result`` the final model and metrics (JSON, completed jobs only).
-- ``server_id`` is the server process running it; that process refreshes ``heartbeat_at_ms`` while the job is
-- open, so another server can tell a job whose server stopped (sandbox/fl_records.py). ``epsilon_spent`` is the
-- accountant's report for display; what the grant was charged is the integer pair beside it.
CREATE TABLE IF NOT EXISTS training_jobs (
    id                   TEXT PRIMARY KEY,
    owner_id             TEXT NOT NULL,
    grant_id             TEXT NOT NULL REFERENCES grants (id),
    plan_hash            TEXT NOT NULL,
    dataset              TEXT NOT NULL,
    settings             TEXT NOT NULL,
    plan                 TEXT NOT NULL,
    state                TEXT NOT NULL CHECK (state IN ('starting', 'running', 'completed', 'failed', 'cancelled',
                                                        'revoked')),
    round                INTEGER NOT NULL DEFAULT 0,
    rounds               INTEGER NOT NULL,
    epsilon_spent        REAL NOT NULL DEFAULT 0,
    charged_epsilon_nano INTEGER NOT NULL,
    charged_delta_atto   INTEGER NOT NULL,
    started_at_ms        INTEGER NOT NULL,
    heartbeat_at_ms      INTEGER NOT NULL,
    server_id            TEXT NOT NULL,
    message              TEXT NOT NULL DEFAULT '',
    result               TEXT
);
CREATE INDEX IF NOT EXISTS training_jobs_owner ON training_jobs (owner_id, started_at_ms);
CREATE INDEX IF NOT EXISTS training_jobs_started ON training_jobs (started_at_ms);
CREATE TRIGGER IF NOT EXISTS training_jobs_final BEFORE UPDATE ON training_jobs
WHEN OLD.state NOT IN ('starting', 'running')
BEGIN SELECT RAISE(ABORT, 'an ended training job is read-only'); END;
CREATE TRIGGER IF NOT EXISTS training_jobs_no_delete BEFORE DELETE ON training_jobs
BEGIN SELECT RAISE(ABORT, 'training jobs cannot be deleted'); END;

-- Each job's progress reports (TrainingEvent as JSON), in the order they were published: append-only.
CREATE TABLE IF NOT EXISTS training_events (
    job_id TEXT NOT NULL REFERENCES training_jobs (id),
    seq    INTEGER NOT NULL,
    event  TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS training_events_no_update BEFORE UPDATE ON training_events
BEGIN SELECT RAISE(ABORT, 'training events are append-only'); END;
CREATE TRIGGER IF NOT EXISTS training_events_no_delete BEFORE DELETE ON training_events
BEGIN SELECT RAISE(ABORT, 'training events are append-only'); END;
