-- Issue 11: what the daemon tells others about its deploys (GitHub statuses, notifications, Slack replies).

-- Every change of a deploy's state, in order, written by the same statement that changes it (triggers:
-- nothing the queue or the API does can change a state without its event). Notifications are sent from here.
CREATE TABLE deploy_events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    deploy_id   INTEGER NOT NULL REFERENCES deploys (id) ON DELETE CASCADE,
    service     TEXT NOT NULL,
    state       TEXT NOT NULL,
    at          TEXT NOT NULL
);

CREATE TRIGGER deploy_queued_event AFTER INSERT ON deploys
BEGIN
    INSERT INTO deploy_events (deploy_id, service, state, at)
    VALUES (NEW.id, NEW.service, NEW.state, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'));
END;

CREATE TRIGGER deploy_state_event AFTER UPDATE OF state ON deploys WHEN NEW.state <> OLD.state
BEGIN
    INSERT INTO deploy_events (deploy_id, service, state, at)
    VALUES (NEW.id, NEW.service, NEW.state, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'));
END;

-- The events the notifier has turned into deliveries (one row: the last event id).
CREATE TABLE notifier_cursor (
    id              INTEGER PRIMARY KEY CHECK (id = 1),
    last_event_id   INTEGER NOT NULL
);
INSERT INTO notifier_cursor (id, last_event_id) VALUES (1, 0);

-- One outgoing call per event and target, sent in order per deploy and target, retried with backoff.
-- `target` names where it goes (`notify/0`, `github`, `slack-reply`), never a secret; the request is built
-- when it is sent, from the configuration and the deploy as it is then.
CREATE TABLE deliveries (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    deploy_id       INTEGER NOT NULL REFERENCES deploys (id) ON DELETE CASCADE,
    event_id        INTEGER NOT NULL,
    state_event     TEXT NOT NULL,
    target          TEXT NOT NULL,
    -- pending, delivered, failed (gave up), skipped
    status          TEXT NOT NULL DEFAULT 'pending',
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT NOT NULL,
    last_error      TEXT,
    done_at         TEXT,
    UNIQUE (event_id, target)
);
CREATE INDEX deliveries_pending ON deliveries (status, next_attempt_at);
CREATE INDEX deliveries_by_deploy ON deliveries (deploy_id, target, id);

-- What a deploy's deliveries share: the Slack `response_url` of the command that asked for it (a
-- short-lived reply address, not a credential of the user's), the GitHub deployment created for it.
CREATE TABLE deploy_links (
    deploy_id               INTEGER PRIMARY KEY REFERENCES deploys (id) ON DELETE CASCADE,
    slack_response_url      TEXT,
    github_deployment_id    INTEGER
);
