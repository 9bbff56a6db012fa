//! The store on PostgreSQL (`database_url: postgres://…`): the same operations as the SQLite store, in
//! PostgreSQL's dialect, for several daemons sharing one database. Nothing is cached in memory here (another
//! daemon may change any row); the one-running-per-service rule is the database's own unique index.

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{PgConnection, Row};

use super::{
    DeployAudit, DeployFilter, HostRow, NewAudit, NewDeploy, StageChange, StageRow, StoreError, now, queued_deploy,
    sql, with_timeline,
};
use crate::daemon::config::QueuePolicy;
use crate::daemon::model::{AuditEntry, Deploy, DeployState, Scope, TokenInfo, stage_names};
use crate::daemon::store::{Delivery, DeliveryOutcome, DeployEvent, DeployLink, NewDelivery};

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

const DEPLOY_COLUMNS: &str = "id, service, destination, kind, version, git_ref, git_commit, state, stage, reason, \
                              requested_by, created_at, started_at, ended_at, error, runner";
const TOKEN_COLUMNS: &str = "id, name, scope, service, created_at, revoked_at, last_used_at";
const DELIVERY_COLUMNS: &str =
    "id, deploy_id, event_id, state_event, target, status, attempts, next_attempt_at, last_error, done_at";

/// SQL put together from this module's own constants, never from input.
fn audited(sql: String) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(sql)
}

/// How long a claim holds without renewal: a daemon that stops renewing (dead, frozen, cut off) loses its
/// running deploys to `interrupted` this long after its last renewal.
pub const LEASE: std::time::Duration = std::time::Duration::from_secs(15);

#[derive(Clone)]
pub(super) struct PgStore {
    pool: PgPool,
    /// This daemon (`instance`) and its process as a Kamal lock names it: what its claims record and its
    /// writes to running deploys are fenced by.
    instance: String,
    holder: String,
}

fn lease_deadline() -> String {
    crate::utc::millis_at(std::time::SystemTime::now() + LEASE)
}

/// Only while the deploy runs here: a daemon whose lease was taken (it was frozen or cut off, and another
/// daemon marked the deploy `interrupted`) changes nothing when it wakes.
const FENCE: &str = "EXISTS (SELECT 1 FROM deploys f WHERE f.id = $1 AND f.state = 'running' AND f.runner = $2)";

impl PgStore {
    /// Connects (a pool of 16) and runs the migrations (PostgreSQL serializes concurrent runs with an
    /// advisory lock, so daemons starting together migrate once).
    pub(super) async fn connect(url: &str, instance: &str, holder: &str) -> Result<PgStore, StoreError> {
        let options: PgConnectOptions = url.parse().map_err(sql("parse the database URL"))?;
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(std::time::Duration::from_secs(10))
            .connect_with(options)
            .await
            .map_err(sql("be reached"))?;
        MIGRATIONS.run(&pool).await?;
        Ok(PgStore { pool, instance: instance.to_string(), holder: holder.to_string() })
    }

    pub(super) async fn close(&self) {
        self.pool.close().await;
    }

    // -----------------------------------------------------------------------------------------------------
    // Deploy requests

    pub(super) async fn record_deploy(
        &self,
        new: &NewDeploy,
        policy: QueuePolicy,
        audit: Option<&DeployAudit<'_>>,
    ) -> Result<(Deploy, bool), StoreError> {
        let now = now();
        let mut tx = self.pool.begin().await.map_err(sql("start a transaction"))?;
        let inserted: Option<i64> = sqlx::query_scalar(
            "INSERT INTO deploys (service, destination, kind, version, git_ref, reason, state, requested_by, \
             idempotency_key, created_at) VALUES ($1, $2, $3, $4, $5, $6, 'queued', $7, $8, $9) \
             ON CONFLICT (idempotency_key) DO NOTHING RETURNING id",
        )
        .bind(&new.service)
        .bind(&new.destination)
        .bind(&new.kind)
        .bind(&new.version)
        .bind(&new.git_ref)
        .bind(&new.reason)
        .bind(&new.requested_by)
        .bind(&new.idempotency_key)
        .bind(&now)
        .fetch_optional(&mut *tx)
        .await
        .map_err(sql("record the deploy"))?;
        let Some(id) = inserted else {
            let existing: i64 = sqlx::query_scalar("SELECT id FROM deploys WHERE idempotency_key = $1")
                .bind(&new.idempotency_key)
                .fetch_one(&mut *tx)
                .await
                .map_err(sql("look up the idempotency key"))?;
            let deploy = read_deploy(&mut tx, existing).await?.expect("a deploy found by its key exists");
            if let Some(audit) = audit {
                insert_audit(&mut tx, &now, audit, &(audit.target)(&deploy)).await?;
            }
            tx.commit().await.map_err(sql("commit the audit entry"))?;
            return Ok((deploy, false));
        };
        if policy == QueuePolicy::Latest {
            sqlx::query(
                "UPDATE deploys SET state = 'superseded', ended_at = $1, error = $2 \
                 WHERE service = $3 AND destination IS NOT DISTINCT FROM $4 AND state = 'queued' AND id <> $5 \
                 AND (EXISTS (SELECT 1 FROM deploys r WHERE r.service = $3 \
                              AND r.destination IS NOT DISTINCT FROM $4 AND r.state = 'running') \
                      OR id <> (SELECT MIN(q.id) FROM deploys q WHERE q.service = $3 \
                                AND q.destination IS NOT DISTINCT FROM $4 AND q.state = 'queued'))",
            )
            .bind(&now)
            .bind(format!("superseded by deploy {id}"))
            .bind(&new.service)
            .bind(&new.destination)
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(sql("supersede queued deploys"))?;
        }
        let deploy = queued_deploy(id, new, now);
        if let Some(audit) = audit {
            insert_audit(&mut tx, &deploy.created_at, audit, &(audit.target)(&deploy)).await?;
        }
        if let Some(url) = &new.slack_response_url {
            sqlx::query("INSERT INTO deploy_links (deploy_id, slack_response_url) VALUES ($1, $2)")
                .bind(id)
                .bind(url)
                .execute(&mut *tx)
                .await
                .map_err(sql("record where to reply"))?;
        }
        tx.commit().await.map_err(sql("commit the deploy"))?;
        Ok((deploy, true))
    }

    pub(super) async fn deploy(&self, id: i64) -> Result<Option<Deploy>, StoreError> {
        let mut connection = self.pool.acquire().await.map_err(sql("read a deploy"))?;
        read_deploy(&mut connection, id).await
    }

    pub(super) async fn list_deploys(&self, filter: &DeployFilter) -> Result<Vec<Deploy>, StoreError> {
        let rows = sqlx::query(audited(format!(
            "SELECT {DEPLOY_COLUMNS} FROM deploys WHERE ($1::TEXT IS NULL OR service = $1) \
             AND ($2::TEXT IS NULL OR state = $2) AND ($3::BIGINT IS NULL OR id < $3) ORDER BY id DESC LIMIT $4"
        )))
        .bind(&filter.service)
        .bind(filter.state.map(DeployState::name))
        .bind(filter.before)
        .bind(filter.limit)
        .fetch_all(&self.pool)
        .await
        .map_err(sql("list deploys"))?;
        Ok(rows.iter().map(deploy_from_row).collect())
    }

    // -----------------------------------------------------------------------------------------------------
    // The queue

    pub(super) async fn runnable(&self, limit: i64) -> Result<Vec<Deploy>, StoreError> {
        let rows = sqlx::query(audited(format!(
            "SELECT {DEPLOY_COLUMNS} FROM deploys d WHERE state = 'queued' AND NOT EXISTS (\
             SELECT 1 FROM deploys r WHERE r.state = 'running' AND r.service = d.service \
             AND r.destination IS NOT DISTINCT FROM d.destination) ORDER BY id LIMIT $1"
        )))
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(sql("find runnable deploys"))?;
        Ok(rows.iter().map(deploy_from_row).collect())
    }

    /// Claims a queued deploy. Another daemon claiming one of the same service at the same moment loses on
    /// the unique index of running deploys: that is "not claimed", not an error.
    pub(super) async fn claim(&self, id: i64, runner: &str) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE deploys SET state = 'running', started_at = $1, runner = $2, lease_expires_at = $4, \
             holder = $5 WHERE id = $3 AND state = 'queued' AND NOT cancel_requested",
        )
        .bind(now())
        .bind(runner)
        .bind(id)
        .bind(lease_deadline())
        .bind(&self.holder)
        .execute(&self.pool)
        .await;
        match done {
            Ok(done) => Ok(done.rows_affected() == 1),
            Err(sqlx::Error::Database(error)) if error.code().as_deref() == Some("23505") => Ok(false),
            Err(error) => Err(StoreError::Sql { action: "claim a deploy", source: error }),
        }
    }

    pub(super) async fn running_count(&self) -> Result<i64, StoreError> {
        sqlx::query_scalar("SELECT COUNT(*) FROM deploys WHERE state = 'running'")
            .fetch_one(&self.pool)
            .await
            .map_err(sql("count running deploys"))
    }

    pub(super) async fn set_resolved(&self, id: i64, version: &str, commit: Option<&str>) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE deploys SET version = $3, git_commit = COALESCE($4, git_commit) \
             WHERE id = $1 AND state = 'running' AND runner = $2",
        )
        .bind(id)
        .bind(&self.instance)
        .bind(version)
        .bind(commit)
        .execute(&self.pool)
        .await
        .map_err(sql("record the deploy's version"))?;
        Ok(())
    }

    pub(super) async fn finish(&self, id: i64, state: DeployState, error: Option<&str>) -> Result<(), StoreError> {
        let now = now();
        let mut tx = self.pool.begin().await.map_err(sql("start a transaction"))?;
        let ended = sqlx::query(
            "UPDATE deploys SET state = $3, error = $4, ended_at = $5 WHERE id = $1 AND state = 'running' \
             AND runner = $2",
        )
        .bind(id)
        .bind(&self.instance)
        .bind(state.name())
        .bind(error)
        .bind(&now)
        .execute(&mut *tx)
        .await
        .map_err(sql("end a deploy"))?;
        if ended.rows_affected() == 0 {
            // Not running here (any more): nothing of it is this daemon's to change.
            return tx.commit().await.map_err(sql("commit the deploy's end"));
        }
        if state != DeployState::Succeeded {
            fail_running_stages(&mut tx, &now, &[id]).await?;
        }
        tx.commit().await.map_err(sql("commit the deploy's end"))
    }

    pub(super) async fn stage_changed(
        &self,
        id: i64,
        stage: &str,
        host: Option<&str>,
        change: StageChange,
    ) -> Result<(), StoreError> {
        let now = now();
        let position = stage_names().position(|name| name == stage).unwrap_or(99) as i32;
        let state = match change {
            StageChange::Started => "running",
            StageChange::Succeeded => "succeeded",
            StageChange::Failed => "failed",
            StageChange::Skipped => "skipped",
        };
        let started = (change == StageChange::Started).then_some(now.as_str());
        let ended = matches!(change, StageChange::Succeeded | StageChange::Failed).then_some(now.as_str());
        let mut tx = self.pool.begin().await.map_err(sql("start a transaction"))?;
        let runs_here: bool = sqlx::query_scalar(audited(format!("SELECT {FENCE}")))
            .bind(id)
            .bind(&self.instance)
            .fetch_one(&mut *tx)
            .await
            .map_err(sql("check the deploy runs here"))?;
        if !runs_here {
            return Ok(());
        }
        match host {
            Some(host) => {
                sqlx::query(
                    "INSERT INTO deploy_stage_hosts AS h (deploy_id, stage, host, state, started_at, ended_at) \
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (deploy_id, stage, host) DO UPDATE SET \
                     state = CASE WHEN h.state = 'failed' THEN h.state ELSE $4 END, \
                     started_at = COALESCE(h.started_at, $5), ended_at = COALESCE($6, h.ended_at)",
                )
                .bind(id)
                .bind(stage)
                .bind(host)
                .bind(state)
                .bind(started.or(ended))
                .bind(ended)
                .execute(&mut *tx)
                .await
                .map_err(sql("record a host's stage"))?;
                sqlx::query(
                    "INSERT INTO deploy_stages (deploy_id, name, position, state, started_at, ended_at) \
                     SELECT $1, $2, $3, \
                       CASE WHEN bool_or(state = 'running') THEN 'running' \
                            WHEN bool_or(state = 'failed') THEN 'failed' \
                            WHEN bool_or(state = 'succeeded') THEN 'succeeded' ELSE 'skipped' END, \
                       MIN(started_at), CASE WHEN bool_or(state = 'running') THEN NULL ELSE MAX(ended_at) END \
                     FROM deploy_stage_hosts WHERE deploy_id = $1 AND stage = $2 \
                     ON CONFLICT (deploy_id, name) DO UPDATE SET state = excluded.state, \
                     started_at = excluded.started_at, ended_at = excluded.ended_at",
                )
                .bind(id)
                .bind(stage)
                .bind(position)
                .execute(&mut *tx)
                .await
                .map_err(sql("record a stage"))?;
            }
            None => {
                sqlx::query(
                    "INSERT INTO deploy_stages AS s (deploy_id, name, position, state, started_at, ended_at) \
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (deploy_id, name) DO UPDATE SET state = $4, \
                     started_at = COALESCE(s.started_at, $5), ended_at = COALESCE($6, s.ended_at)",
                )
                .bind(id)
                .bind(stage)
                .bind(position)
                .bind(state)
                .bind(started.or(ended))
                .bind(ended)
                .execute(&mut *tx)
                .await
                .map_err(sql("record a stage"))?;
            }
        }
        if change == StageChange::Started {
            sqlx::query("UPDATE deploys SET stage = $1 WHERE id = $2")
                .bind(stage)
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(sql("record the current stage"))?;
        }
        tx.commit().await.map_err(sql("commit a stage change"))
    }

    pub(super) async fn cancel_queued(&self, id: i64) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE deploys SET state = 'cancelled', cancel_requested = TRUE, ended_at = $1, \
             error = 'cancelled before it started' WHERE id = $2 AND state = 'queued'",
        )
        .bind(now())
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(sql("cancel a deploy"))?;
        Ok(done.rows_affected() == 1)
    }

    pub(super) async fn request_cancel(&self, id: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE deploys SET cancel_requested = TRUE WHERE id = $1 AND state = 'running'")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(sql("record a cancel request"))?;
        Ok(())
    }

    /// Deploys left `running` by `runner` (this daemon, started again) become `interrupted`; other daemons'
    /// deploys are theirs.
    pub(super) async fn interrupt_running(&self, runner: &str, error: &str) -> Result<Vec<Deploy>, StoreError> {
        let now = now();
        let mut tx = self.pool.begin().await.map_err(sql("start a transaction"))?;
        let rows = sqlx::query(audited(format!(
            "UPDATE deploys SET state = 'interrupted', ended_at = $1, error = $2 WHERE state = 'running' \
             AND runner IS NOT DISTINCT FROM $3 RETURNING {DEPLOY_COLUMNS}"
        )))
        .bind(&now)
        .bind(error)
        .bind(runner)
        .fetch_all(&mut *tx)
        .await
        .map_err(sql("mark interrupted deploys"))?;
        let ids: Vec<i64> = rows.iter().map(|row| row.get("id")).collect();
        fail_running_stages(&mut tx, &now, &ids).await?;
        tx.commit().await.map_err(sql("commit interrupted deploys"))?;
        Ok(rows.iter().map(deploy_from_row).collect())
    }

    /// Extends the leases of the deploys this daemon runs; returns the ids it still holds.
    pub(super) async fn renew_leases(&self) -> Result<Vec<i64>, StoreError> {
        sqlx::query_scalar(
            "UPDATE deploys SET lease_expires_at = $1 WHERE state = 'running' AND runner = $2 RETURNING id",
        )
        .bind(lease_deadline())
        .bind(&self.instance)
        .fetch_all(&self.pool)
        .await
        .map_err(sql("renew leases"))
    }

    /// Running deploys whose lease expired (their daemon stopped renewing) become `interrupted`; returns them
    /// with the lock holder each recorded. Each is taken by exactly one daemon (the update is atomic).
    pub(super) async fn expire_leases(&self, error: &str) -> Result<Vec<(Deploy, Option<String>)>, StoreError> {
        let now = now();
        let mut tx = self.pool.begin().await.map_err(sql("start a transaction"))?;
        let rows = sqlx::query(audited(format!(
            "UPDATE deploys SET state = 'interrupted', ended_at = $1, error = $2 \
             WHERE state = 'running' AND lease_expires_at < $1 RETURNING {DEPLOY_COLUMNS}, holder"
        )))
        .bind(&now)
        .bind(error)
        .fetch_all(&mut *tx)
        .await
        .map_err(sql("expire leases"))?;
        let ids: Vec<i64> = rows.iter().map(|row| row.get("id")).collect();
        fail_running_stages(&mut tx, &now, &ids).await?;
        tx.commit().await.map_err(sql("commit expired leases"))?;
        Ok(rows.iter().map(|row| (deploy_from_row(row), row.get("holder"))).collect())
    }

    /// Appends a line after a deploy's last one, whatever its state (the daemon's own notes).
    pub(super) async fn append_note(&self, id: i64, line: &str) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO deploy_log_lines (deploy_id, seq, at, line) \
             SELECT $1, COALESCE(MAX(seq), 0) + 1, $2, $3 FROM deploy_log_lines WHERE deploy_id = $1",
        )
        .bind(id)
        .bind(now())
        .bind(line)
        .execute(&self.pool)
        .await
        .map_err(sql("note a line"))?;
        Ok(())
    }

    // -----------------------------------------------------------------------------------------------------
    // Log lines

    pub(super) async fn append_lines(&self, id: i64, lines: &[(i64, String)]) -> Result<(), StoreError> {
        let now = now();
        let seqs: Vec<i64> = lines.iter().map(|(seq, _)| *seq).collect();
        let texts: Vec<&str> = lines.iter().map(|(_, line)| line.as_str()).collect();
        sqlx::query(audited(format!(
            "INSERT INTO deploy_log_lines (deploy_id, seq, at, line) \
             SELECT $1, seq, $3, line FROM UNNEST($4::BIGINT[], $5::TEXT[]) AS l (seq, line) WHERE {FENCE}"
        )))
        .bind(id)
        .bind(&self.instance)
        .bind(&now)
        .bind(&seqs)
        .bind(&texts)
        .execute(&self.pool)
        .await
        .map_err(sql("store log lines"))?;
        Ok(())
    }

    pub(super) async fn lines_after(&self, id: i64, after: i64, limit: i64) -> Result<Vec<(i64, String)>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, line FROM deploy_log_lines WHERE deploy_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(id)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(sql("read log lines"))?;
        Ok(rows.iter().map(|row| (row.get("seq"), row.get("line"))).collect())
    }

    pub(super) async fn prune_logs(&self, cutoff: &str) -> Result<u64, StoreError> {
        let done =
            sqlx::query("DELETE FROM deploy_log_lines WHERE deploy_id IN (SELECT id FROM deploys WHERE ended_at < $1)")
                .bind(cutoff)
                .execute(&self.pool)
                .await
                .map_err(sql("delete old log lines"))?;
        Ok(done.rows_affected())
    }

    // -----------------------------------------------------------------------------------------------------
    // Tokens and audit

    pub(super) async fn insert_token(
        &self,
        name: &str,
        hash: &str,
        scope: Scope,
        service: Option<&str>,
    ) -> Result<i64, StoreError> {
        sqlx::query_scalar(
            "INSERT INTO api_tokens (name, token_hash, scope, service, created_at) VALUES ($1, $2, $3, $4, $5) \
             RETURNING id",
        )
        .bind(name)
        .bind(hash)
        .bind(scope.name())
        .bind(service)
        .bind(now())
        .fetch_one(&self.pool)
        .await
        .map_err(sql("store a token"))
    }

    pub(super) async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenInfo>, StoreError> {
        let row = sqlx::query(audited(format!(
            "SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE token_hash = $1 AND revoked_at IS NULL"
        )))
        .bind(hash)
        .fetch_optional(&self.pool)
        .await
        .map_err(sql("look up a token"))?;
        Ok(row.as_ref().map(token_from_row))
    }

    pub(super) async fn list_tokens(&self) -> Result<Vec<TokenInfo>, StoreError> {
        let rows = sqlx::query(audited(format!("SELECT {TOKEN_COLUMNS} FROM api_tokens ORDER BY id")))
            .fetch_all(&self.pool)
            .await
            .map_err(sql("list tokens"))?;
        Ok(rows.iter().map(token_from_row).collect())
    }

    pub(super) async fn revoke_token(&self, id: i64) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE api_tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
            .bind(now())
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(sql("revoke a token"))?;
        Ok(done.rows_affected() == 1)
    }

    pub(super) async fn audit(&self, entry: &NewAudit<'_>) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO audit_log (at, token_id, actor, action, target, status, remote_addr) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(now())
        .bind(entry.token_id)
        .bind(entry.actor)
        .bind(entry.action)
        .bind(entry.target)
        .bind(i32::from(entry.status))
        .bind(entry.remote_addr)
        .execute(&self.pool)
        .await
        .map_err(sql("record an audit entry"))?;
        Ok(())
    }

    pub(super) async fn list_audit(&self, before: Option<i64>, limit: i64) -> Result<Vec<AuditEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, at, actor, action, target, status, remote_addr FROM audit_log \
             WHERE ($1::BIGINT IS NULL OR id < $1) ORDER BY id DESC LIMIT $2",
        )
        .bind(before)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(sql("read the audit log"))?;
        Ok(rows
            .iter()
            .map(|row| AuditEntry {
                id: row.get("id"),
                at: row.get("at"),
                actor: row.get("actor"),
                action: row.get("action"),
                target: row.get("target"),
                status: row.get::<i32, _>("status") as u16,
                remote_addr: row.get("remote_addr"),
            })
            .collect())
    }

    // -----------------------------------------------------------------------------------------------------
    // Metrics

    pub(super) async fn deploys_by_state(&self) -> Result<Vec<(DeployState, i64)>, StoreError> {
        let rows = sqlx::query("SELECT state, COUNT(*) AS count FROM deploys GROUP BY state")
            .fetch_all(&self.pool)
            .await
            .map_err(sql("count deploys"))?;
        Ok(rows.iter().filter_map(|row| Some((DeployState::parse(row.get("state"))?, row.get("count")))).collect())
    }

    pub(super) async fn stage_durations(&self) -> Result<Vec<(String, i64, f64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT name, COUNT(*) AS count, \
             SUM(EXTRACT(EPOCH FROM (ended_at::TIMESTAMPTZ - started_at::TIMESTAMPTZ)))::FLOAT8 AS seconds \
             FROM deploy_stages WHERE started_at IS NOT NULL AND ended_at IS NOT NULL GROUP BY name",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(sql("sum stage durations"))?;
        Ok(rows
            .iter()
            .map(|row| (row.get("name"), row.get("count"), row.get::<Option<f64>, _>("seconds").unwrap_or(0.0)))
            .collect())
    }

    // -----------------------------------------------------------------------------------------------------
    // Deliveries (see store/deliveries.rs)

    pub(super) async fn notifier_cursor(&self) -> Result<i64, StoreError> {
        sqlx::query_scalar("SELECT last_event_id FROM notifier_cursor WHERE id = 1")
            .fetch_one(&self.pool)
            .await
            .map_err(sql("read the notifier's cursor"))
    }

    pub(super) async fn events_after(&self, after: i64, limit: i64) -> Result<Vec<DeployEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, deploy_id, service, state, at FROM deploy_events WHERE id > $1 ORDER BY id LIMIT $2",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(sql("read deploy events"))?;
        Ok(rows
            .iter()
            .filter_map(|row| {
                Some(DeployEvent {
                    id: row.get("id"),
                    deploy_id: row.get("deploy_id"),
                    service: row.get("service"),
                    state: DeployState::parse(row.get("state"))?,
                    at: row.get("at"),
                })
            })
            .collect())
    }

    pub(super) async fn plan_deliveries(
        &self,
        last_event_id: i64,
        deliveries: &[NewDelivery],
    ) -> Result<(), StoreError> {
        let now = now();
        let mut tx = self.pool.begin().await.map_err(sql("start a transaction"))?;
        for delivery in deliveries {
            sqlx::query(
                "INSERT INTO deliveries (deploy_id, event_id, state_event, target, next_attempt_at) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (event_id, target) DO NOTHING",
            )
            .bind(delivery.deploy_id)
            .bind(delivery.event_id)
            .bind(delivery.state.name())
            .bind(&delivery.target)
            .bind(&now)
            .execute(&mut *tx)
            .await
            .map_err(sql("plan a delivery"))?;
        }
        sqlx::query("UPDATE notifier_cursor SET last_event_id = $1 WHERE id = 1 AND last_event_id < $1")
            .bind(last_event_id)
            .execute(&mut *tx)
            .await
            .map_err(sql("move the notifier's cursor"))?;
        tx.commit().await.map_err(sql("commit planned deliveries"))
    }

    /// Due deliveries, each leased to this daemon for a minute (its `next_attempt_at` moved on) so that the
    /// other daemons skip it; a daemon that dies mid-attempt leaves it due again when the lease ends.
    pub(super) async fn due_deliveries(&self, limit: i64) -> Result<Vec<Delivery>, StoreError> {
        let now = now();
        let lease = crate::utc::millis_at(std::time::SystemTime::now() + std::time::Duration::from_secs(60));
        let rows = sqlx::query(audited(format!(
            "UPDATE deliveries SET next_attempt_at = $3 WHERE id IN (\
               SELECT id FROM deliveries d WHERE status = 'pending' AND next_attempt_at <= $1 \
               AND NOT EXISTS (SELECT 1 FROM deliveries e WHERE e.deploy_id = d.deploy_id AND e.target = d.target \
                               AND e.status = 'pending' AND e.id < d.id) \
               ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED) RETURNING {DELIVERY_COLUMNS}"
        )))
        .bind(&now)
        .bind(limit)
        .bind(&lease)
        .fetch_all(&self.pool)
        .await
        .map_err(sql("find due deliveries"))?;
        let mut deliveries: Vec<Delivery> = rows.iter().map(delivery_from_row).collect();
        deliveries.sort_by_key(|delivery| delivery.id);
        Ok(deliveries)
    }

    pub(super) async fn next_delivery_at(&self) -> Result<Option<String>, StoreError> {
        sqlx::query_scalar("SELECT MIN(next_attempt_at) FROM deliveries WHERE status = 'pending'")
            .fetch_one(&self.pool)
            .await
            .map_err(sql("find the next delivery"))
    }

    pub(super) async fn record_attempt(&self, id: i64, outcome: &DeliveryOutcome) -> Result<(), StoreError> {
        let (status, next, error) = super::deliveries::attempt_columns(outcome);
        let counts = !matches!(outcome, DeliveryOutcome::Skipped(_));
        sqlx::query(
            "UPDATE deliveries SET status = $1, attempts = attempts + $2, \
             next_attempt_at = COALESCE($3, next_attempt_at), last_error = COALESCE($4, last_error), \
             done_at = CASE WHEN $1 = 'pending' THEN NULL ELSE $5 END WHERE id = $6",
        )
        .bind(status)
        .bind(i64::from(counts))
        .bind(next)
        .bind(error)
        .bind(now())
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(sql("record a delivery attempt"))?;
        Ok(())
    }

    pub(super) async fn deliveries_of(&self, deploy_id: i64) -> Result<Vec<Delivery>, StoreError> {
        let rows =
            sqlx::query(audited(format!("SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE deploy_id = $1 ORDER BY id")))
                .bind(deploy_id)
                .fetch_all(&self.pool)
                .await
                .map_err(sql("list a deploy's deliveries"))?;
        Ok(rows.iter().map(delivery_from_row).collect())
    }

    pub(super) async fn deploy_link(&self, deploy_id: i64) -> Result<DeployLink, StoreError> {
        let row = sqlx::query("SELECT slack_response_url, github_deployment_id FROM deploy_links WHERE deploy_id = $1")
            .bind(deploy_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(sql("read a deploy's links"))?;
        Ok(row.map_or_else(DeployLink::default, |row| DeployLink {
            slack_response_url: row.get("slack_response_url"),
            github_deployment_id: row.get("github_deployment_id"),
        }))
    }

    pub(super) async fn set_github_deployment(&self, deploy_id: i64, deployment_id: i64) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO deploy_links (deploy_id, github_deployment_id) VALUES ($1, $2) \
             ON CONFLICT (deploy_id) DO UPDATE SET github_deployment_id = excluded.github_deployment_id",
        )
        .bind(deploy_id)
        .bind(deployment_id)
        .execute(&self.pool)
        .await
        .map_err(sql("record a GitHub deployment"))?;
        Ok(())
    }
}

#[cfg(test)]
impl PgStore {
    pub(super) async fn backdate_end_for_test(&self, id: i64, ended_at: &str) {
        sqlx::query("UPDATE deploys SET ended_at = $1 WHERE id = $2")
            .bind(ended_at)
            .bind(id)
            .execute(&self.pool)
            .await
            .unwrap();
    }
}

/// Creates a database with a new name on the server at `server_url` and returns its URL (tests).
#[cfg(test)]
pub(super) async fn create_test_database(server_url: &str) -> String {
    use sqlx::Connection;
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).unwrap();
    let name = format!("berth_test_{}", bytes.iter().map(|b| format!("{b:02x}")).collect::<String>());
    let mut connection = sqlx::PgConnection::connect(server_url).await.expect("the test PostgreSQL answers");
    sqlx::query(audited(format!("CREATE DATABASE {name}"))).execute(&mut connection).await.unwrap();
    let (base, _) = server_url.rsplit_once('/').expect("a URL with a database name");
    format!("{base}/{name}")
}

fn deploy_from_row(row: &PgRow) -> Deploy {
    Deploy {
        id: row.get("id"),
        service: row.get("service"),
        destination: row.get("destination"),
        kind: row.get("kind"),
        version: row.get("version"),
        git_ref: row.get("git_ref"),
        commit: row.get("git_commit"),
        state: DeployState::parse(row.get("state")).unwrap_or(DeployState::Failed),
        stage: row.get("stage"),
        reason: row.get("reason"),
        requested_by: row.get("requested_by"),
        created_at: row.get("created_at"),
        started_at: row.get("started_at"),
        ended_at: row.get("ended_at"),
        error: row.get("error"),
        runner: row.get("runner"),
        stages: Vec::new(),
    }
}

/// A deploy with its timeline, in one query: the stages and the per-host times come as JSON arrays.
async fn read_deploy(connection: &mut PgConnection, id: i64) -> Result<Option<Deploy>, StoreError> {
    let row = sqlx::query(audited(format!(
        "SELECT {DEPLOY_COLUMNS}, \
         (SELECT COALESCE(json_agg(json_build_array(name, state, started_at, ended_at)), '[]')::TEXT \
          FROM deploy_stages WHERE deploy_id = $1) AS stage_rows, \
         (SELECT COALESCE(json_agg(json_build_array(stage, host, state, started_at, ended_at)), '[]')::TEXT \
          FROM deploy_stage_hosts WHERE deploy_id = $1) AS host_rows \
         FROM deploys WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(&mut *connection)
    .await
    .map_err(sql("read a deploy"))?;
    let Some(row) = row else { return Ok(None) };
    // Written by PostgreSQL's json functions just above: they parse.
    let stages: Vec<StageRow> = serde_json::from_str(row.get("stage_rows")).unwrap_or_default();
    let hosts: Vec<HostRow> = serde_json::from_str(row.get("host_rows")).unwrap_or_default();
    Ok(Some(with_timeline(deploy_from_row(&row), stages, hosts)))
}

/// The stages (and hosts' parts in them) of `ids` that were still running end `failed` at `now`: the deploy
/// ended (failed, interrupted, its lease expired) before they did.
async fn fail_running_stages(connection: &mut PgConnection, now: &str, ids: &[i64]) -> Result<(), StoreError> {
    for table in ["deploy_stages", "deploy_stage_hosts"] {
        sqlx::query(audited(format!(
            "UPDATE {table} SET state = 'failed', ended_at = $1 WHERE state = 'running' AND deploy_id = ANY($2)"
        )))
        .bind(now)
        .bind(ids)
        .execute(&mut *connection)
        .await
        .map_err(sql("end running stages"))?;
    }
    Ok(())
}

async fn insert_audit(
    connection: &mut PgConnection,
    at: &str,
    entry: &DeployAudit<'_>,
    target: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO audit_log (at, token_id, actor, action, target, status, remote_addr) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(at)
    .bind(entry.token_id)
    .bind(entry.actor)
    .bind(entry.action)
    .bind(target)
    .bind(i32::from(entry.status))
    .bind(entry.remote_addr)
    .execute(connection)
    .await
    .map_err(sql("record an audit entry"))?;
    Ok(())
}

fn token_from_row(row: &PgRow) -> TokenInfo {
    TokenInfo {
        id: row.get("id"),
        name: row.get("name"),
        scope: Scope::parse(row.get("scope")).unwrap_or(Scope::Read),
        service: row.get("service"),
        created_at: row.get("created_at"),
        revoked_at: row.get("revoked_at"),
        last_used_at: row.get("last_used_at"),
    }
}

fn delivery_from_row(row: &PgRow) -> Delivery {
    Delivery {
        id: row.get("id"),
        deploy_id: row.get("deploy_id"),
        event_id: row.get("event_id"),
        state: row.get("state_event"),
        target: row.get("target"),
        status: row.get("status"),
        attempts: row.get("attempts"),
        next_attempt_at: row.get("next_attempt_at"),
        last_error: row.get("last_error"),
        done_at: row.get("done_at"),
    }
}
