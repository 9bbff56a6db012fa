-- The deploy daemon's store on PostgreSQL (several `berth serve` on one database): the same tables as the
-- SQLite store (migrations/sqlite/), in PostgreSQL's dialect. Times are RFC 3339 UTC text with milliseconds,
-- written by berth, as on SQLite (they sort as text).

CREATE TABLE deploys (
    id              BIGSERIAL PRIMARY KEY,
    service         TEXT NOT NULL,
    destination     TEXT,
    kind            TEXT NOT NULL,
    version         TEXT,
    git_ref         TEXT,
    git_commit      TEXT,
    reason          TEXT,
    state           TEXT NOT NULL,
    stage           TEXT,
    error           TEXT,
    requested_by    TEXT,
    idempotency_key TEXT UNIQUE,
    cancel_requested BOOLEAN NOT NULL DEFAULT FALSE,
    created_at      TEXT NOT NULL,
    started_at      TEXT,
    ended_at        TEXT,
    -- The daemon running it, and until when its lease holds: renewed every few seconds by that daemon; once
    -- expired, any daemon marks the deploy `interrupted` (its runner is gone). Writes of a running deploy are
    -- fenced by `state = 'running' AND runner = <writer>`, so a stale owner changes nothing.
    runner          TEXT,
    lease_expires_at TEXT,
    -- The runner's process as its Kamal deploy lock names it (`Holder: berth pid=… host=… boot=…`): the
    -- daemon that finds the lease expired releases that lock, and no other.
    holder          TEXT
);
CREATE INDEX deploys_by_state ON deploys (state, id);
CREATE INDEX deploys_by_service ON deploys (service, destination, id);
-- At most one running deploy per (service, destination), held by the database itself.
CREATE UNIQUE INDEX one_running_deploy ON deploys (service, COALESCE(destination, '')) WHERE state = 'running';

CREATE TABLE deploy_stages (
    deploy_id   BIGINT NOT NULL REFERENCES deploys (id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    position    INTEGER NOT NULL,
    state       TEXT NOT NULL,
    started_at  TEXT,
    ended_at    TEXT,
    PRIMARY KEY (deploy_id, name)
);

CREATE TABLE deploy_stage_hosts (
    deploy_id   BIGINT NOT NULL REFERENCES deploys (id) ON DELETE CASCADE,
    stage       TEXT NOT NULL,
    host        TEXT NOT NULL,
    state       TEXT NOT NULL,
    started_at  TEXT,
    ended_at    TEXT,
    PRIMARY KEY (deploy_id, stage, host)
);

CREATE TABLE deploy_log_lines (
    deploy_id   BIGINT NOT NULL REFERENCES deploys (id) ON DELETE CASCADE,
    seq         BIGINT NOT NULL,
    at          TEXT NOT NULL,
    line        TEXT NOT NULL,
    PRIMARY KEY (deploy_id, seq)
);

CREATE TABLE api_tokens (
    id          BIGSERIAL PRIMARY KEY,
    name        TEXT NOT NULL,
    token_hash  TEXT NOT NULL UNIQUE,
    scope       TEXT NOT NULL,
    service     TEXT,
    created_at  TEXT NOT NULL,
    revoked_at  TEXT,
    last_used_at TEXT
);

CREATE TABLE audit_log (
    id          BIGSERIAL PRIMARY KEY,
    at          TEXT NOT NULL,
    token_id    BIGINT,
    actor       TEXT NOT NULL,
    action      TEXT NOT NULL,
    target      TEXT,
    status      INTEGER NOT NULL,
    remote_addr TEXT
);

-- Every change of a deploy's state, written by the statement that changes it (see the SQLite migration).
CREATE TABLE deploy_events (
    id          BIGSERIAL PRIMARY KEY,
    deploy_id   BIGINT NOT NULL REFERENCES deploys (id) ON DELETE CASCADE,
    service     TEXT NOT NULL,
    state       TEXT NOT NULL,
    at          TEXT NOT NULL
);

CREATE FUNCTION record_deploy_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' OR NEW.state IS DISTINCT FROM OLD.state THEN
        INSERT INTO deploy_events (deploy_id, service, state, at)
        VALUES (NEW.id, NEW.service, NEW.state,
                to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'));
    END IF;
    RETURN NULL;
END;
$$;
CREATE TRIGGER deploy_queued_event AFTER INSERT ON deploys FOR EACH ROW EXECUTE FUNCTION record_deploy_event();
CREATE TRIGGER deploy_state_event AFTER UPDATE OF state ON deploys FOR EACH ROW EXECUTE FUNCTION record_deploy_event();

CREATE TABLE notifier_cursor (
    id              INTEGER PRIMARY KEY CHECK (id = 1),
    last_event_id   BIGINT NOT NULL
);
INSERT INTO notifier_cursor (id, last_event_id) VALUES (1, 0);

CREATE TABLE deliveries (
    id              BIGSERIAL PRIMARY KEY,
    deploy_id       BIGINT NOT NULL REFERENCES deploys (id) ON DELETE CASCADE,
    event_id        BIGINT NOT NULL,
    state_event     TEXT NOT NULL,
    target          TEXT NOT NULL,
    status          TEXT NOT NULL DEFAULT 'pending',
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_at TEXT NOT NULL,
    last_error      TEXT,
    done_at         TEXT,
    UNIQUE (event_id, target)
);
CREATE INDEX deliveries_pending ON deliveries (status, next_attempt_at);
CREATE INDEX deliveries_by_deploy ON deliveries (deploy_id, target, id);

CREATE TABLE deploy_links (
    deploy_id               BIGINT PRIMARY KEY REFERENCES deploys (id) ON DELETE CASCADE,
    slack_response_url      TEXT,
    github_deployment_id    BIGINT
);
