-- The deploy daemon's store (SQLite): deploy requests and their states, the stage timeline per host, every
-- log line with its sequence number, API tokens (hashed) and the audit trail.

CREATE TABLE deploys (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    service         TEXT NOT NULL,
    destination     TEXT,
    -- 'deploy' or 'rollback'
    kind            TEXT NOT NULL,
    -- The image tag to deploy: given (no build), or the commit built.
    version         TEXT,
    git_ref         TEXT,
    git_commit      TEXT,
    reason          TEXT,
    state           TEXT NOT NULL,
    stage           TEXT,
    error           TEXT,
    requested_by    TEXT,
    idempotency_key TEXT UNIQUE,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    created_at      TEXT NOT NULL,
    started_at      TEXT,
    ended_at        TEXT
);
CREATE INDEX deploys_by_state ON deploys (state, id);
CREATE INDEX deploys_by_service ON deploys (service, destination, id);

CREATE TABLE deploy_stages (
    deploy_id   INTEGER NOT NULL REFERENCES deploys (id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    position    INTEGER NOT NULL,
    state       TEXT NOT NULL,
    started_at  TEXT,
    ended_at    TEXT,
    PRIMARY KEY (deploy_id, name)
);

CREATE TABLE deploy_stage_hosts (
    deploy_id   INTEGER NOT NULL REFERENCES deploys (id) ON DELETE CASCADE,
    stage       TEXT NOT NULL,
    host        TEXT NOT NULL,
    state       TEXT NOT NULL,
    started_at  TEXT,
    ended_at    TEXT,
    PRIMARY KEY (deploy_id, stage, host)
);

CREATE TABLE deploy_log_lines (
    deploy_id   INTEGER NOT NULL REFERENCES deploys (id) ON DELETE CASCADE,
    seq         INTEGER NOT NULL,
    at          TEXT NOT NULL,
    line        TEXT NOT NULL,
    PRIMARY KEY (deploy_id, seq)
) WITHOUT ROWID;

CREATE TABLE api_tokens (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT NOT NULL,
    -- SHA-256 of the token, hex: the token itself is shown once and never stored.
    token_hash  TEXT NOT NULL UNIQUE,
    scope       TEXT NOT NULL,
    service     TEXT,
    created_at  TEXT NOT NULL,
    revoked_at  TEXT,
    last_used_at TEXT
);

CREATE TABLE audit_log (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at          TEXT NOT NULL,
    token_id    INTEGER,
    actor       TEXT NOT NULL,
    action      TEXT NOT NULL,
    target      TEXT,
    status      INTEGER NOT NULL,
    remote_addr TEXT
);
