-- The sandbox's PostgreSQL schema: the same tables, keys and rules as schema_sqlite.sql (budgets are integers:
-- nano-epsilon, atto-delta). Append-only and read-only tables are enforced by triggers, TRUNCATE included.
CREATE OR REPLACE FUNCTION sandbox_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '%', TG_ARGV[0] USING ERRCODE = 'integrity_constraint_violation';
END $$;

CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS principals (
    id              TEXT PRIMARY KEY,
    name            TEXT NOT NULL,
    organisation    TEXT NOT NULL,
    roles           TEXT NOT NULL,
    public_key      BYTEA NOT NULL UNIQUE,
    status          TEXT NOT NULL CHECK (status IN ('active', 'pending', 'suspended')),
    created_at_ms   BIGINT NOT NULL,
    enrolled_by     TEXT,
    active_since_ms BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE IF NOT EXISTS nonces (
    principal_id TEXT NOT NULL,
    nonce        TEXT NOT NULL,
    ts_ms        BIGINT NOT NULL,
    PRIMARY KEY (principal_id, nonce)
);
CREATE INDEX IF NOT EXISTS nonces_ts ON nonces (ts_ms);

CREATE TABLE IF NOT EXISTS datasets (
    import_seq     BIGSERIAL UNIQUE,
    name           TEXT NOT NULL,
    version        TEXT NOT NULL,
    schema_json    TEXT NOT NULL,
    row_count      BIGINT NOT NULL,
    imported_at_ms BIGINT NOT NULL,
    imported_by    TEXT NOT NULL,
    content_sha256 TEXT NOT NULL,
    public_rows    BIGINT NOT NULL CHECK (public_rows >= 0),
    PRIMARY KEY (name, version)
);
CREATE OR REPLACE TRIGGER datasets_read_only BEFORE UPDATE OR DELETE ON datasets
    FOR EACH ROW EXECUTE FUNCTION sandbox_refuse('datasets are read-only');

CREATE TABLE IF NOT EXISTS scenarios (
    id              TEXT PRIMARY KEY,
    applicant_id    TEXT NOT NULL REFERENCES principals (id),
    application     BYTEA NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('pending', 'approved', 'rejected', 'revoked')),
    decision_reason TEXT NOT NULL DEFAULT '',
    decided_by      TEXT,
    created_at_ms   BIGINT NOT NULL,
    decided_at_ms   BIGINT
);
CREATE INDEX IF NOT EXISTS scenarios_status ON scenarios (status);

CREATE TABLE IF NOT EXISTS grants (
    id            TEXT PRIMARY KEY,
    scenario_id   TEXT NOT NULL UNIQUE REFERENCES scenarios (id),
    terms         BYTEA NOT NULL,
    signature     BYTEA NOT NULL,
    approver_id   TEXT NOT NULL REFERENCES principals (id),
    issued_at_ms  BIGINT NOT NULL,
    revoked_at_ms BIGINT,
    revoke_reason TEXT NOT NULL DEFAULT ''
);
CREATE OR REPLACE TRIGGER grants_terms_immutable
    BEFORE UPDATE OF id, scenario_id, terms, signature, approver_id, issued_at_ms ON grants
    FOR EACH ROW EXECUTE FUNCTION sandbox_refuse('grant terms are immutable');
CREATE OR REPLACE TRIGGER grants_no_delete BEFORE DELETE ON grants
    FOR EACH ROW EXECUTE FUNCTION sandbox_refuse('grants cannot be deleted');

CREATE TABLE IF NOT EXISTS budgets (
    grant_id           TEXT PRIMARY KEY REFERENCES grants (id),
    epsilon_cap_nano   BIGINT NOT NULL CHECK (epsilon_cap_nano >= 0),
    epsilon_spent_nano BIGINT NOT NULL DEFAULT 0,
    delta_cap_atto     BIGINT NOT NULL CHECK (delta_cap_atto >= 0),
    delta_spent_atto   BIGINT NOT NULL DEFAULT 0,
    quota_cap          BIGINT NOT NULL CHECK (quota_cap >= 0),
    quota_used         BIGINT NOT NULL DEFAULT 0,
    CHECK (epsilon_spent_nano BETWEEN 0 AND epsilon_cap_nano),
    CHECK (delta_spent_atto BETWEEN 0 AND delta_cap_atto),
    CHECK (quota_used BETWEEN 0 AND quota_cap)
);
CREATE OR REPLACE TRIGGER budgets_never_refund BEFORE UPDATE ON budgets FOR EACH ROW
    WHEN (NEW.epsilon_spent_nano < OLD.epsilon_spent_nano OR NEW.delta_spent_atto < OLD.delta_spent_atto
          OR NEW.quota_used < OLD.quota_used OR NEW.epsilon_cap_nano <> OLD.epsilon_cap_nano
          OR NEW.delta_cap_atto <> OLD.delta_cap_atto OR NEW.quota_cap <> OLD.quota_cap
          OR NEW.grant_id <> OLD.grant_id)
    EXECUTE FUNCTION sandbox_refuse('budgets only grow their spend');
CREATE OR REPLACE TRIGGER budgets_no_delete BEFORE DELETE ON budgets
    FOR EACH ROW EXECUTE FUNCTION sandbox_refuse('budgets cannot be deleted');

CREATE TABLE IF NOT EXISTS audit_log (
    seq             BIGINT PRIMARY KEY,
    time_ms         BIGINT NOT NULL,
    principal_id    TEXT NOT NULL,
    method          TEXT NOT NULL,
    scenario_id     TEXT NOT NULL,
    grant_id        TEXT NOT NULL,
    status          TEXT NOT NULL,
    error_code      TEXT NOT NULL,
    epsilon_nano    BIGINT NOT NULL,
    delta_atto      BIGINT NOT NULL,
    request_sha256  TEXT NOT NULL,
    response_sha256 TEXT NOT NULL,
    prev_hash       TEXT NOT NULL,
    entry_hash      TEXT NOT NULL,
    request         TEXT NOT NULL DEFAULT '',  -- canonical description of what was asked (covered by entry_hash)
    signature       BYTEA
);
CREATE INDEX IF NOT EXISTS audit_log_request ON audit_log (request_sha256);
CREATE OR REPLACE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION sandbox_refuse('audit log is append-only');

CREATE TABLE IF NOT EXISTS tree_heads (
    size         BIGINT PRIMARY KEY,
    root_hash    TEXT NOT NULL,
    signed_at_ms BIGINT NOT NULL,
    signature    BYTEA NOT NULL
);
CREATE OR REPLACE TRIGGER tree_heads_append_only BEFORE UPDATE OR DELETE ON tree_heads
    FOR EACH ROW EXECUTE FUNCTION sandbox_refuse('tree heads are append-only');

CREATE TABLE IF NOT EXISTS head_cosignatures (
    size              BIGINT NOT NULL REFERENCES tree_heads (size),
    witness_id        TEXT NOT NULL,
    witness_key       BYTEA NOT NULL,
    head_signed_at_ms BIGINT NOT NULL,
    signature         BYTEA NOT NULL,
    received_at_ms    BIGINT NOT NULL,
    PRIMARY KEY (size, witness_id)
);
CREATE OR REPLACE TRIGGER head_cosignatures_append_only BEFORE UPDATE OR DELETE ON head_cosignatures
    FOR EACH ROW EXECUTE FUNCTION sandbox_refuse('cosignatures are append-only');

CREATE TABLE IF NOT EXISTS releases (
    grant_id        TEXT NOT NULL REFERENCES grants (id),
    idempotency_key TEXT NOT NULL,
    request_sha256  TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('pending', 'done', 'failed', 'lost')),
    response        BYTEA,
    created_at_ms   BIGINT NOT NULL,
    PRIMARY KEY (grant_id, idempotency_key)
);

CREATE TABLE IF NOT EXISTS models (
    model_hash    TEXT PRIMARY KEY,
    canonical     TEXT NOT NULL,
    submitted_by  TEXT NOT NULL REFERENCES principals (id),
    created_at_ms BIGINT NOT NULL
);
CREATE OR REPLACE TRIGGER models_read_only BEFORE UPDATE OR DELETE ON models
    FOR EACH ROW EXECUTE FUNCTION sandbox_refuse('models are immutable');

CREATE TABLE IF NOT EXISTS plans (
    plan_hash     TEXT PRIMARY KEY,
    canonical     TEXT NOT NULL,
    submitted_by  TEXT NOT NULL REFERENCES principals (id),
    created_at_ms BIGINT NOT NULL
);
CREATE OR REPLACE TRIGGER plans_read_only BEFORE UPDATE OR DELETE ON plans
    FOR EACH ROW EXECUTE FUNCTION sandbox_refuse('plans are immutable');

CREATE TABLE IF NOT EXISTS he_scored (
    batch      BIGINT PRIMARY KEY,
    grant_id   TEXT NOT NULL REFERENCES grants (id),
    pseudonyms BYTEA NOT NULL
);
CREATE INDEX IF NOT EXISTS he_scored_grant ON he_scored (grant_id, batch);

-- TRUNCATE skips row triggers: refuse it on every table that is never emptied.
CREATE OR REPLACE TRIGGER no_truncate_audit_log BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION sandbox_refuse('audit log is append-only');
CREATE OR REPLACE TRIGGER no_truncate_tree_heads BEFORE TRUNCATE ON tree_heads
    FOR EACH STATEMENT EXECUTE FUNCTION sandbox_refuse('tree heads are append-only');
CREATE OR REPLACE TRIGGER no_truncate_cosignatures BEFORE TRUNCATE ON head_cosignatures
    FOR EACH STATEMENT EXECUTE FUNCTION sandbox_refuse('cosignatures are append-only');
CREATE OR REPLACE TRIGGER no_truncate_budgets BEFORE TRUNCATE ON budgets
    FOR EACH STATEMENT EXECUTE FUNCTION sandbox_refuse('budgets cannot be deleted');
CREATE OR REPLACE TRIGGER no_truncate_grants BEFORE TRUNCATE ON grants
    FOR EACH STATEMENT EXECUTE FUNCTION sandbox_refuse('grants cannot be deleted');

-- Who holds each dataset (every version): its department, its stewards, when they must co-sign (谁持有谁负责).
CREATE TABLE IF NOT EXISTS stewardship (
    dataset       TEXT PRIMARY KEY,
    owner         TEXT NOT NULL,
    steward_ids   TEXT NOT NULL,
    policy        TEXT NOT NULL CHECK (policy IN ('never', 'sensitive', 'always')),
    updated_at_ms BIGINT NOT NULL,
    updated_by    TEXT NOT NULL
);

-- Stewards' co-signatures of grant terms: append-only; a grant that needs one is inactive until it is here.
CREATE TABLE IF NOT EXISTS grant_cosignatures (
    grant_id     TEXT NOT NULL REFERENCES grants (id),
    dataset      TEXT NOT NULL,
    steward_id   TEXT NOT NULL,
    steward_key  BYTEA NOT NULL,
    signature    BYTEA NOT NULL,
    signed_at_ms BIGINT NOT NULL,
    PRIMARY KEY (grant_id, dataset)
);
CREATE OR REPLACE TRIGGER grant_cosignatures_append_only BEFORE UPDATE OR DELETE ON grant_cosignatures
    FOR EACH ROW EXECUTE FUNCTION sandbox_refuse('co-signatures are append-only');
CREATE OR REPLACE TRIGGER no_truncate_grant_cosignatures BEFORE TRUNCATE ON grant_cosignatures
    FOR EACH STATEMENT EXECUTE FUNCTION sandbox_refuse('co-signatures are append-only');

-- Schema version 3: what was asked, on the record.
ALTER TABLE audit_log ADD COLUMN IF NOT EXISTS request TEXT NOT NULL DEFAULT '';

-- Schema version 4: federated-training jobs and their progress reports (see schema_sqlite.sql).
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
    round                BIGINT NOT NULL DEFAULT 0,
    rounds               BIGINT NOT NULL,
    epsilon_spent        DOUBLE PRECISION NOT NULL DEFAULT 0,
    charged_epsilon_nano BIGINT NOT NULL,
    charged_delta_atto   BIGINT NOT NULL,
    started_at_ms        BIGINT NOT NULL,
    heartbeat_at_ms      BIGINT NOT NULL,
    server_id            TEXT NOT NULL,
    message              TEXT NOT NULL DEFAULT '',
    result               TEXT
);
CREATE INDEX IF NOT EXISTS training_jobs_owner ON training_jobs (owner_id, started_at_ms);
CREATE INDEX IF NOT EXISTS training_jobs_started ON training_jobs (started_at_ms);
CREATE OR REPLACE TRIGGER training_jobs_final BEFORE UPDATE ON training_jobs FOR EACH ROW
    WHEN (OLD.state NOT IN ('starting', 'running'))
    EXECUTE FUNCTION sandbox_refuse('an ended training job is read-only');
CREATE OR REPLACE TRIGGER training_jobs_no_delete BEFORE DELETE ON training_jobs
    FOR EACH ROW EXECUTE FUNCTION sandbox_refuse('training jobs cannot be deleted');
CREATE OR REPLACE TRIGGER no_truncate_training_jobs BEFORE TRUNCATE ON training_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION sandbox_refuse('training jobs cannot be deleted');

CREATE TABLE IF NOT EXISTS training_events (
    job_id TEXT NOT NULL REFERENCES training_jobs (id),
    seq    BIGINT NOT NULL,
    event  TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
);
CREATE OR REPLACE TRIGGER training_events_append_only BEFORE UPDATE OR DELETE ON training_events
    FOR EACH ROW EXECUTE FUNCTION sandbox_refuse('training events are append-only');
CREATE OR REPLACE TRIGGER no_truncate_training_events BEFORE TRUNCATE ON training_events
    FOR EACH STATEMENT EXECUTE FUNCTION sandbox_refuse('training events are append-only');
