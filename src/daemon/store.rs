//! The daemon's store: every SQL statement the daemon runs, behind one type, [`Store`]. SQLite in WAL mode
//! (the embedded default); a later store for several daemons implements the same methods on PostgreSQL.
//!
//! Writes go through one connection (SQLite has one writer; queueing them here avoids `SQLITE_BUSY`), reads
//! through a pool of read-only connections, so status reads never wait behind log writes. Each statement is a
//! round trip to the connection's own thread, so the hot paths make few: a deploy request and its audit entry
//! are one transaction, a deploy and its timeline one query. Tokens are looked up through a short-lived cache
//! ([`TokenCache`]); deploys as last read are kept by id (`deploy_cache`), and every write that changes a
//! deploy tells that cache once committed — so only this store may change deploys (one daemon per database).

mod deliveries;
mod deploy_cache;
mod postgres;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous};
use sqlx::{Row, SqliteConnection, SqlitePool};

use super::auth::TokenCache;
use super::config::QueuePolicy;
use super::model::{AuditEntry, Deploy, DeployState, HostTiming, Scope, Stage, StageState, TokenInfo, stage_names};
pub use deliveries::{Delivery, DeliveryOutcome, DeployEvent, DeployLink, NewDelivery};
use deploy_cache::DeployCache;
pub use postgres::LEASE;

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// What went wrong in the store, with what it was doing.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the database could not {action}: {source}")]
    Sql { action: &'static str, source: sqlx::Error },
    #[error("the database could not be migrated: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

fn sql(action: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Sql { action, source }
}

/// A deploy request to record.
#[derive(Clone, Debug, Default)]
pub struct NewDeploy {
    pub service: String,
    pub destination: Option<String>,
    /// `deploy` or `rollback`.
    pub kind: String,
    pub version: Option<String>,
    pub git_ref: Option<String>,
    pub reason: Option<String>,
    pub requested_by: Option<String>,
    pub idempotency_key: Option<String>,
    /// Where progress is posted back (the Slack command that asked for it).
    pub slack_response_url: Option<String>,
}

/// Which deploys to list.
#[derive(Clone, Debug, Default)]
pub struct DeployFilter {
    pub service: Option<String>,
    pub state: Option<DeployState>,
    /// Only deploys with a smaller id (the cursor of the previous page).
    pub before: Option<i64>,
    pub limit: i64,
}

/// A token as stored (its hash only).
#[derive(Clone, Debug)]
pub struct TokenRecord {
    pub info: TokenInfo,
}

/// One audit entry to record.
#[derive(Clone, Debug)]
pub struct NewAudit<'a> {
    pub token_id: Option<i64>,
    pub actor: &'a str,
    pub action: &'a str,
    pub target: Option<&'a str>,
    pub status: u16,
    pub remote_addr: Option<&'a str>,
}

/// The audit entry of a deploy request, stored in the request's own transaction.
#[derive(Clone, Debug)]
pub struct DeployAudit<'a> {
    pub token_id: Option<i64>,
    pub actor: &'a str,
    pub action: &'a str,
    pub status: u16,
    pub remote_addr: Option<&'a str>,
    /// The entry's target, from the deploy recorded (or the one its idempotency key found).
    pub target: fn(&Deploy) -> String,
}

/// How a stage changed (from the engine's progress), on one host or as a whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StageChange {
    Started,
    Succeeded,
    Failed,
    Skipped,
}

/// The daemon's database: SQLite (embedded, one daemon) or PostgreSQL (shared by several daemons).
#[derive(Clone)]
pub struct Store {
    db: Db,
    tokens: Arc<TokenCache>,
    deploys: Arc<DeployCache>,
}

/// Which database. Every operation of [`Store`] starts by handing PostgreSQL's to [`postgres::PgStore`];
/// the SQLite code below that line runs for SQLite only (hence [`Store::writer`]'s `unreachable!`).
#[derive(Clone)]
enum Db {
    /// One writer connection (SQLite has one writer anyway) and a pool of read-only ones.
    Sqlite {
        writer: SqlitePool,
        reader: SqlitePool,
    },
    Postgres(postgres::PgStore),
}

/// Read connections: enough for the API's handlers on a small machine (each has a thread).
const READERS: u32 = 4;

impl Store {
    /// Opens (creating if needed) the database at `path`, in WAL mode, and runs the migrations.
    pub async fn open(path: &Path) -> Result<Store, StoreError> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10))
            // Sorts and temporary tables in memory. A larger page cache or `mmap_size` made no difference the
            // daemon benchmark could see, and a mapped database counts in the daemon's RSS.
            .pragma("temp_store", "memory");
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await
            .map_err(sql("be opened"))?;
        MIGRATIONS.run(&writer).await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(READERS)
            .connect_with(options.read_only(true))
            .await
            .map_err(sql("be opened for reading"))?;
        Ok(Store { db: Db::Sqlite { writer, reader }, tokens: Arc::default(), deploys: Arc::default() })
    }

    /// Connects to PostgreSQL at `url` (`postgres://…`) and runs its migrations, as daemon `instance` whose
    /// process a Kamal lock names `holder` (its `Holder:` line).
    pub async fn connect(url: &str, instance: &str, holder: &str) -> Result<Store, StoreError> {
        let pg = postgres::PgStore::connect(url, instance, holder).await?;
        Ok(Store { db: Db::Postgres(pg), tokens: Arc::default(), deploys: Arc::default() })
    }

    /// Whether other daemons may share this database (PostgreSQL): then nothing read may be trusted to stay
    /// as it was without reading it again.
    pub fn is_shared(&self) -> bool {
        matches!(self.db, Db::Postgres(_))
    }

    pub async fn close(&self) {
        match &self.db {
            Db::Sqlite { writer, reader } => {
                reader.close().await;
                writer.close().await;
            }
            Db::Postgres(pg) => pg.close().await,
        }
    }

    fn writer(&self) -> &SqlitePool {
        match &self.db {
            Db::Sqlite { writer, .. } => writer,
            Db::Postgres(_) => unreachable!("PostgreSQL's operations return before SQLite's code"),
        }
    }

    fn reader(&self) -> &SqlitePool {
        match &self.db {
            Db::Sqlite { reader, .. } => reader,
            Db::Postgres(_) => unreachable!("PostgreSQL's operations return before SQLite's code"),
        }
    }

    // -----------------------------------------------------------------------------------------------------
    // Deploy requests

    /// Records a deploy request, queued. With an idempotency key already used, returns that deploy instead
    /// (and false). With `queue: latest`, the service's other queued deploys become `superseded` — except
    /// the one that runs next when none of the service runs now (it is as good as started).
    pub async fn insert_deploy(&self, new: &NewDeploy, policy: QueuePolicy) -> Result<(Deploy, bool), StoreError> {
        self.record_deploy(new, policy, None).await
    }

    /// [`Store::insert_deploy`] with its audit entry, in the same transaction (also when the idempotency key
    /// finds an earlier deploy: the request is audited either way).
    pub async fn insert_deploy_audited(
        &self,
        new: &NewDeploy,
        policy: QueuePolicy,
        audit: &DeployAudit<'_>,
    ) -> Result<(Deploy, bool), StoreError> {
        self.record_deploy(new, policy, Some(audit)).await
    }

    async fn record_deploy(
        &self,
        new: &NewDeploy,
        policy: QueuePolicy,
        audit: Option<&DeployAudit<'_>>,
    ) -> Result<(Deploy, bool), StoreError> {
        if let Db::Postgres(pg) = &self.db {
            return pg.record_deploy(new, policy, audit).await;
        }
        let now = now();
        let mut tx = self.writer().begin().await.map_err(sql("start a transaction"))?;
        // A repeated idempotency key inserts nothing (and returns no id): the deploy it made is answered.
        let inserted: Option<i64> = sqlx::query_scalar(
            "INSERT INTO deploys (service, destination, kind, version, git_ref, reason, state, requested_by, \
             idempotency_key, created_at) VALUES (?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?) \
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
            let existing: i64 = sqlx::query_scalar("SELECT id FROM deploys WHERE idempotency_key = ?")
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
        let mut superseded: Vec<i64> = Vec::new();
        if policy == QueuePolicy::Latest {
            superseded = sqlx::query_scalar(
                "UPDATE deploys SET state = 'superseded', ended_at = ?1, error = ?2 \
                 WHERE service = ?3 AND destination IS ?4 AND state = 'queued' AND id <> ?5 \
                 AND (EXISTS (SELECT 1 FROM deploys r WHERE r.service = ?3 AND r.destination IS ?4 \
                              AND r.state = 'running') \
                      OR id <> (SELECT MIN(q.id) FROM deploys q WHERE q.service = ?3 AND q.destination IS ?4 \
                                AND q.state = 'queued')) RETURNING id",
            )
            .bind(&now)
            .bind(format!("superseded by deploy {id}"))
            .bind(&new.service)
            .bind(&new.destination)
            .bind(id)
            .fetch_all(&mut *tx)
            .await
            .map_err(sql("supersede queued deploys"))?;
        }
        let deploy = queued_deploy(id, new, now);
        if let Some(audit) = audit {
            insert_audit(&mut tx, &deploy.created_at, audit, &(audit.target)(&deploy)).await?;
        }
        if let Some(url) = &new.slack_response_url {
            sqlx::query("INSERT INTO deploy_links (deploy_id, slack_response_url) VALUES (?, ?)")
                .bind(id)
                .bind(url)
                .execute(&mut *tx)
                .await
                .map_err(sql("record where to reply"))?;
        }
        let committed = tx.commit().await;
        for id in superseded {
            self.deploys.changed(id);
        }
        committed.map_err(sql("commit the deploy"))?;
        Ok((deploy, true))
    }

    /// A deploy with its stage timeline, or None.
    pub async fn deploy(&self, id: i64) -> Result<Option<Deploy>, StoreError> {
        if let Db::Postgres(pg) = &self.db {
            return pg.deploy(id).await;
        }
        if let Some(deploy) = self.deploys.get(id) {
            return Ok(Some(deploy));
        }
        let generation = self.deploys.generation();
        let mut connection = self.reader().acquire().await.map_err(sql("read a deploy"))?;
        let deploy = read_deploy(&mut connection, id).await?;
        if let Some(deploy) = &deploy {
            self.deploys.put(deploy, generation);
        }
        Ok(deploy)
    }

    /// Deploys, newest first (without their stages).
    pub async fn list_deploys(&self, filter: &DeployFilter) -> Result<Vec<Deploy>, StoreError> {
        if let Db::Postgres(pg) = &self.db {
            return pg.list_deploys(filter).await;
        }
        let rows = sqlx::query(audited(format!(
            "SELECT {DEPLOY_COLUMNS} FROM deploys WHERE (?1 IS NULL OR service = ?1) AND (?2 IS NULL OR state = ?2) \
             AND (?3 IS NULL OR id < ?3) ORDER BY id DESC LIMIT ?4"
        )))
        .bind(&filter.service)
        .bind(filter.state.map(DeployState::name))
        .bind(filter.before)
        .bind(filter.limit)
        .fetch_all(self.reader())
        .await
        .map_err(sql("list deploys"))?;
        Ok(rows.iter().map(deploy_from_row).collect())
    }

    /// The most recent deploy of a service (any destination), for its summary.
    pub async fn last_deploy(&self, service: &str) -> Result<Option<Deploy>, StoreError> {
        let filter = DeployFilter { service: Some(service.to_string()), limit: 1, ..DeployFilter::default() };
        Ok(self.list_deploys(&filter).await?.into_iter().next())
    }

    // -----------------------------------------------------------------------------------------------------
    // The queue (only the queue and the runner change states)

    /// Queued deploys whose service and destination have no deploy running, oldest first.
    ///
    /// The (service, destination) pairs running are found once, from the state index; checking each queued
    /// deploy against the `deploys_by_service` index instead walked the whole history of its service per
    /// queued deploy (0.3 s with 10,000 queued). This still reads every queued deploy of a running service
    /// ahead of the first runnable one (≈0.4 µs each); it runs on a read connection, so log lines and new
    /// requests never wait for it (what it reads was committed: claims are, before the next pass).
    pub async fn runnable(&self, limit: i64) -> Result<Vec<Deploy>, StoreError> {
        if let Db::Postgres(pg) = &self.db {
            return pg.runnable(limit).await;
        }
        let rows = sqlx::query(audited(format!(
            "WITH running AS MATERIALIZED (SELECT DISTINCT service, destination FROM deploys \
             WHERE state = 'running') \
             SELECT {DEPLOY_COLUMNS} FROM deploys d WHERE state = 'queued' AND NOT EXISTS (\
             SELECT 1 FROM running r WHERE r.service = d.service AND r.destination IS d.destination) \
             ORDER BY id LIMIT ?"
        )))
        .bind(limit)
        .fetch_all(self.reader())
        .await
        .map_err(sql("find runnable deploys"))?;
        Ok(rows.iter().map(deploy_from_row).collect())
    }

    /// Makes a queued deploy `running` by `runner` (the daemon instance); false when it is no longer queued
    /// (cancelled or superseded meanwhile).
    pub async fn claim(&self, id: i64, runner: &str) -> Result<bool, StoreError> {
        if let Db::Postgres(pg) = &self.db {
            return pg.claim(id, runner).await;
        }
        let done = sqlx::query(
            "UPDATE deploys SET state = 'running', started_at = ?, runner = ? WHERE id = ? AND state = 'queued' \
             AND cancel_requested = 0",
        )
        .bind(now())
        .bind(runner)
        .bind(id)
        .execute(self.writer())
        .await;
        self.deploys.changed(id);
        match done {
            Ok(done) => Ok(done.rows_affected() == 1),
            // Another deploy of the service runs: the unique index of running deploys refuses this one.
            Err(sqlx::Error::Database(error)) if error.is_unique_violation() => Ok(false),
            Err(error) => Err(StoreError::Sql { action: "claim a deploy", source: error }),
        }
    }

    pub async fn running_count(&self) -> Result<i64, StoreError> {
        if let Db::Postgres(pg) = &self.db {
            return pg.running_count().await;
        }
        sqlx::query_scalar("SELECT COUNT(*) FROM deploys WHERE state = 'running'")
            .fetch_one(self.reader())
            .await
            .map_err(sql("count running deploys"))
    }

    /// Records what the runner resolved: the version deployed and the commit it came from.
    pub async fn set_resolved(&self, id: i64, version: &str, commit: Option<&str>) -> Result<(), StoreError> {
        if let Db::Postgres(pg) = &self.db {
            return pg.set_resolved(id, version, commit).await;
        }
        let done = sqlx::query("UPDATE deploys SET version = ?, git_commit = COALESCE(?, git_commit) WHERE id = ?")
            .bind(version)
            .bind(commit)
            .bind(id)
            .execute(self.writer())
            .await;
        self.deploys.changed(id);
        done.map_err(sql("record the deploy's version"))?;
        Ok(())
    }

    /// Ends a running deploy. Stages still running end `failed` (unless it succeeded).
    pub async fn finish(&self, id: i64, state: DeployState, error: Option<&str>) -> Result<(), StoreError> {
        if let Db::Postgres(pg) = &self.db {
            return pg.finish(id, state, error).await;
        }
        let now = now();
        let mut tx = self.writer().begin().await.map_err(sql("start a transaction"))?;
        sqlx::query("UPDATE deploys SET state = ?, error = ?, ended_at = ? WHERE id = ? AND state = 'running'")
            .bind(state.name())
            .bind(error)
            .bind(&now)
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(sql("end a deploy"))?;
        if state != DeployState::Succeeded {
            for table in ["deploy_stages", "deploy_stage_hosts"] {
                sqlx::query(audited(format!(
                    "UPDATE {table} SET state = 'failed', ended_at = ? WHERE deploy_id = ? AND state = 'running'"
                )))
                .bind(&now)
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(sql("end a deploy's stages"))?;
            }
        }
        let committed = tx.commit().await;
        self.deploys.changed(id);
        committed.map_err(sql("commit the deploy's end"))?;
        Ok(())
    }

    /// Records a stage change of a running deploy, on one host or as a whole.
    pub async fn stage_changed(
        &self,
        id: i64,
        stage: &str,
        host: Option<&str>,
        change: StageChange,
    ) -> Result<(), StoreError> {
        if let Db::Postgres(pg) = &self.db {
            return pg.stage_changed(id, stage, host, change).await;
        }
        let now = now();
        let position = stage_names().position(|name| name == stage).unwrap_or(99) as i64;
        let mut tx = self.writer().begin().await.map_err(sql("start a transaction"))?;
        let state = match change {
            StageChange::Started => "running",
            StageChange::Succeeded => "succeeded",
            StageChange::Failed => "failed",
            StageChange::Skipped => "skipped",
        };
        let started = (change == StageChange::Started).then_some(now.as_str());
        let ended = matches!(change, StageChange::Succeeded | StageChange::Failed).then_some(now.as_str());
        match host {
            Some(host) => {
                sqlx::query(
                    "INSERT INTO deploy_stage_hosts (deploy_id, stage, host, state, started_at, ended_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (deploy_id, stage, host) DO UPDATE SET \
                     state = CASE WHEN state = 'failed' THEN state ELSE ?4 END, \
                     started_at = COALESCE(started_at, ?5), ended_at = COALESCE(?6, ended_at)",
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
                // The stage as a whole: running while any host runs it, failed if any failed, else succeeded.
                sqlx::query(
                    "INSERT INTO deploy_stages (deploy_id, name, position, state, started_at, ended_at) \
                     SELECT ?1, ?2, ?3, \
                       CASE WHEN SUM(state = 'running') > 0 THEN 'running' \
                            WHEN SUM(state = 'failed') > 0 THEN 'failed' \
                            WHEN SUM(state = 'succeeded') > 0 THEN 'succeeded' ELSE 'skipped' END, \
                       MIN(started_at), CASE WHEN SUM(state = 'running') > 0 THEN NULL ELSE MAX(ended_at) END \
                     FROM deploy_stage_hosts WHERE deploy_id = ?1 AND stage = ?2 \
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
                    "INSERT INTO deploy_stages (deploy_id, name, position, state, started_at, ended_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (deploy_id, name) DO UPDATE SET state = ?4, \
                     started_at = COALESCE(started_at, ?5), ended_at = COALESCE(?6, ended_at)",
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
            sqlx::query("UPDATE deploys SET stage = ? WHERE id = ?")
                .bind(stage)
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(sql("record the current stage"))?;
        }
        let committed = tx.commit().await;
        self.deploys.changed(id);
        committed.map_err(sql("commit a stage change"))?;
        Ok(())
    }

    /// Cancels a queued deploy at once; false when it was not queued.
    pub async fn cancel_queued(&self, id: i64) -> Result<bool, StoreError> {
        if let Db::Postgres(pg) = &self.db {
            return pg.cancel_queued(id).await;
        }
        let done = sqlx::query(
            "UPDATE deploys SET state = 'cancelled', cancel_requested = 1, ended_at = ?, \
             error = 'cancelled before it started' WHERE id = ? AND state = 'queued'",
        )
        .bind(now())
        .bind(id)
        .execute(self.writer())
        .await;
        self.deploys.changed(id);
        Ok(done.map_err(sql("cancel a deploy"))?.rows_affected() == 1)
    }

    /// Records that a running deploy was asked to stop (`cancel_requested` is not part of a deploy as read,
    /// so the deploy cache is unaffected).
    pub async fn request_cancel(&self, id: i64) -> Result<(), StoreError> {
        if let Db::Postgres(pg) = &self.db {
            return pg.request_cancel(id).await;
        }
        sqlx::query("UPDATE deploys SET cancel_requested = 1 WHERE id = ? AND state = 'running'")
            .bind(id)
            .execute(self.writer())
            .await
            .map_err(sql("record a cancel request"))?;
        Ok(())
    }

    /// At start: deploys left `running` by this daemon (`runner`; on SQLite, by any: one daemon per database)
    /// become `interrupted`. Returns them.
    pub async fn interrupt_running(&self, runner: &str, error: &str) -> Result<Vec<Deploy>, StoreError> {
        if let Db::Postgres(pg) = &self.db {
            return pg.interrupt_running(runner, error).await;
        }
        let result = self.mark_interrupted(error).await;
        self.deploys.changed_all();
        result
    }

    async fn mark_interrupted(&self, error: &str) -> Result<Vec<Deploy>, StoreError> {
        let rows = sqlx::query(audited(format!(
            "UPDATE deploys SET state = 'interrupted', ended_at = ?, error = ? WHERE state = 'running' \
             RETURNING {DEPLOY_COLUMNS}"
        )))
        .bind(now())
        .bind(error)
        .fetch_all(self.writer())
        .await
        .map_err(sql("mark interrupted deploys"))?;
        let now = now();
        for table in ["deploy_stages", "deploy_stage_hosts"] {
            sqlx::query(audited(format!("UPDATE {table} SET state = 'failed', ended_at = ? WHERE state = 'running'")))
                .bind(&now)
                .execute(self.writer())
                .await
                .map_err(sql("end interrupted stages"))?;
        }
        Ok(rows.iter().map(deploy_from_row).collect())
    }

    // -----------------------------------------------------------------------------------------------------
    // Leases (PostgreSQL: several daemons; on SQLite one daemon holds the file, and these do nothing)

    /// Extends the leases of the deploys this daemon runs; returns the ids it still holds (None on SQLite,
    /// where nothing is leased).
    pub async fn renew_leases(&self) -> Result<Option<Vec<i64>>, StoreError> {
        match &self.db {
            Db::Postgres(pg) => pg.renew_leases().await.map(Some),
            Db::Sqlite { .. } => Ok(None),
        }
    }

    /// Running deploys whose daemon stopped renewing its lease become `interrupted`; returns each with the
    /// `Holder:` line of the Kamal lock its daemon took.
    pub async fn expire_leases(&self, error: &str) -> Result<Vec<(Deploy, Option<String>)>, StoreError> {
        match &self.db {
            Db::Postgres(pg) => pg.expire_leases(error).await,
            Db::Sqlite { .. } => Ok(Vec::new()),
        }
    }

    // -----------------------------------------------------------------------------------------------------
    // Log lines

    /// Appends a line after a deploy's last one, whatever its state (the daemon's own notes: a lock released
    /// at restart, a lease found expired).
    pub async fn append_note(&self, id: i64, line: &str) -> Result<(), StoreError> {
        if let Db::Postgres(pg) = &self.db {
            return pg.append_note(id, line).await;
        }
        sqlx::query(
            "INSERT INTO deploy_log_lines (deploy_id, seq, at, line) \
             SELECT ?1, COALESCE(MAX(seq), 0) + 1, ?2, ?3 FROM deploy_log_lines WHERE deploy_id = ?1",
        )
        .bind(id)
        .bind(now())
        .bind(line)
        .execute(self.writer())
        .await
        .map_err(sql("note a line"))?;
        Ok(())
    }

    /// Stores log lines (already redacted) with their sequence numbers, in one transaction.
    pub async fn append_lines(&self, id: i64, lines: &[(i64, String)]) -> Result<(), StoreError> {
        if let Db::Postgres(pg) = &self.db {
            return pg.append_lines(id, lines).await;
        }
        if lines.is_empty() {
            return Ok(());
        }
        let now = now();
        let mut tx = self.writer().begin().await.map_err(sql("start a transaction"))?;
        for (seq, line) in lines {
            sqlx::query("INSERT INTO deploy_log_lines (deploy_id, seq, at, line) VALUES (?, ?, ?, ?)")
                .bind(id)
                .bind(seq)
                .bind(&now)
                .bind(line)
                .execute(&mut *tx)
                .await
                .map_err(sql("store log lines"))?;
        }
        tx.commit().await.map_err(sql("commit log lines"))?;
        Ok(())
    }

    /// Log lines after sequence number `after`, in order, at most `limit`.
    pub async fn lines_after(&self, id: i64, after: i64, limit: i64) -> Result<Vec<(i64, String)>, StoreError> {
        if let Db::Postgres(pg) = &self.db {
            return pg.lines_after(id, after, limit).await;
        }
        let rows =
            sqlx::query("SELECT seq, line FROM deploy_log_lines WHERE deploy_id = ? AND seq > ? ORDER BY seq LIMIT ?")
                .bind(id)
                .bind(after)
                .bind(limit)
                .fetch_all(self.reader())
                .await
                .map_err(sql("read log lines"))?;
        Ok(rows.iter().map(|row| (row.get("seq"), row.get("line"))).collect())
    }

    /// Deletes the log lines of deploys that ended before `cutoff` (RFC 3339); returns how many.
    pub async fn prune_logs(&self, cutoff: &str) -> Result<u64, StoreError> {
        if let Db::Postgres(pg) = &self.db {
            return pg.prune_logs(cutoff).await;
        }
        let done =
            sqlx::query("DELETE FROM deploy_log_lines WHERE deploy_id IN (SELECT id FROM deploys WHERE ended_at < ?)")
                .bind(cutoff)
                .execute(self.writer())
                .await
                .map_err(sql("delete old log lines"))?;
        Ok(done.rows_affected())
    }

    // -----------------------------------------------------------------------------------------------------
    // Tokens and audit

    pub async fn insert_token(
        &self,
        name: &str,
        hash: &str,
        scope: Scope,
        service: Option<&str>,
    ) -> Result<i64, StoreError> {
        if let Db::Postgres(pg) = &self.db {
            return pg.insert_token(name, hash, scope, service).await;
        }
        sqlx::query_scalar(
            "INSERT INTO api_tokens (name, token_hash, scope, service, created_at) VALUES (?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(name)
        .bind(hash)
        .bind(scope.name())
        .bind(service)
        .bind(now())
        .fetch_one(self.writer())
        .await
        .map_err(sql("store a token"))
    }

    /// The token with this hash, unless revoked. A valid token is cached for [`TOKEN_CACHE_TTL`]: a token
    /// revoked by another process (`berth token revoke`) is refused within that time, not at once.
    ///
    /// [`TOKEN_CACHE_TTL`]: super::auth::TOKEN_CACHE_TTL
    pub async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenInfo>, StoreError> {
        if let Db::Postgres(pg) = &self.db {
            return pg.token_by_hash(hash).await;
        }
        if let Some(token) = self.tokens.get(hash) {
            return Ok(Some(token));
        }
        let row = sqlx::query(audited(format!(
            "SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE token_hash = ? AND revoked_at IS NULL"
        )))
        .bind(hash)
        .fetch_optional(self.reader())
        .await
        .map_err(sql("look up a token"))?;
        let token = row.as_ref().map(token_from_row);
        if let Some(token) = &token {
            self.tokens.put(hash, token);
        }
        Ok(token)
    }

    pub async fn list_tokens(&self) -> Result<Vec<TokenInfo>, StoreError> {
        if let Db::Postgres(pg) = &self.db {
            return pg.list_tokens().await;
        }
        let rows = sqlx::query(audited(format!("SELECT {TOKEN_COLUMNS} FROM api_tokens ORDER BY id")))
            .fetch_all(self.reader())
            .await
            .map_err(sql("list tokens"))?;
        Ok(rows.iter().map(token_from_row).collect())
    }

    /// Revokes a token; false when there is no such token (or it was revoked already).
    pub async fn revoke_token(&self, id: i64) -> Result<bool, StoreError> {
        if let Db::Postgres(pg) = &self.db {
            return pg.revoke_token(id).await;
        }
        let done = sqlx::query("UPDATE api_tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL")
            .bind(now())
            .bind(id)
            .execute(self.writer())
            .await
            .map_err(sql("revoke a token"))?;
        self.tokens.forget(id);
        Ok(done.rows_affected() == 1)
    }

    pub async fn audit(&self, entry: &NewAudit<'_>) -> Result<(), StoreError> {
        if let Db::Postgres(pg) = &self.db {
            return pg.audit(entry).await;
        }
        // One statement, committed on its own.
        sqlx::query(
            "INSERT INTO audit_log (at, token_id, actor, action, target, status, remote_addr) VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(now())
        .bind(entry.token_id)
        .bind(entry.actor)
        .bind(entry.action)
        .bind(entry.target)
        .bind(entry.status as i64)
        .bind(entry.remote_addr)
        .execute(self.writer())
        .await
        .map_err(sql("record an audit entry"))?;
        Ok(())
    }

    /// Audit entries, newest first.
    pub async fn list_audit(&self, before: Option<i64>, limit: i64) -> Result<Vec<AuditEntry>, StoreError> {
        if let Db::Postgres(pg) = &self.db {
            return pg.list_audit(before, limit).await;
        }
        let rows = sqlx::query(
            "SELECT id, at, actor, action, target, status, remote_addr FROM audit_log \
             WHERE (?1 IS NULL OR id < ?1) ORDER BY id DESC LIMIT ?2",
        )
        .bind(before)
        .bind(limit)
        .fetch_all(self.reader())
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
                status: row.get::<i64, _>("status") as u16,
                remote_addr: row.get("remote_addr"),
            })
            .collect())
    }

    // -----------------------------------------------------------------------------------------------------
    // Metrics

    /// How many deploys are in each state.
    pub async fn deploys_by_state(&self) -> Result<Vec<(DeployState, i64)>, StoreError> {
        if let Db::Postgres(pg) = &self.db {
            return pg.deploys_by_state().await;
        }
        let rows = sqlx::query("SELECT state, COUNT(*) AS count FROM deploys GROUP BY state")
            .fetch_all(self.reader())
            .await
            .map_err(sql("count deploys"))?;
        Ok(rows.iter().filter_map(|row| Some((DeployState::parse(row.get("state"))?, row.get("count")))).collect())
    }

    /// Per stage: how many ended, and their total duration in seconds.
    pub async fn stage_durations(&self) -> Result<Vec<(String, i64, f64)>, StoreError> {
        if let Db::Postgres(pg) = &self.db {
            return pg.stage_durations().await;
        }
        let rows = sqlx::query(
            "SELECT name, COUNT(*) AS count, \
             SUM((julianday(ended_at) - julianday(started_at)) * 86400.0) AS seconds \
             FROM deploy_stages WHERE started_at IS NOT NULL AND ended_at IS NOT NULL GROUP BY name",
        )
        .fetch_all(self.reader())
        .await
        .map_err(sql("sum stage durations"))?;
        Ok(rows
            .iter()
            .map(|row| (row.get("name"), row.get("count"), row.get::<Option<f64>, _>("seconds").unwrap_or(0.0)))
            .collect())
    }
}

const DEPLOY_COLUMNS: &str = "id, service, destination, kind, version, git_ref, git_commit, state, stage, reason, \
                              requested_by, created_at, started_at, ended_at, error, runner";

fn deploy_from_row(row: &SqliteRow) -> Deploy {
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

/// A deploy with its stage timeline, in one query: the stages and the per-host times come as JSON arrays.
async fn read_deploy(connection: &mut SqliteConnection, id: i64) -> Result<Option<Deploy>, StoreError> {
    let row = sqlx::query(audited(format!(
        "SELECT {DEPLOY_COLUMNS}, \
         (SELECT json_group_array(json_array(name, state, started_at, ended_at)) \
          FROM deploy_stages WHERE deploy_id = ?1) AS stage_rows, \
         (SELECT json_group_array(json_array(stage, host, state, started_at, ended_at)) \
          FROM deploy_stage_hosts WHERE deploy_id = ?1) AS host_rows \
         FROM deploys WHERE id = ?1"
    )))
    .bind(id)
    .fetch_optional(&mut *connection)
    .await
    .map_err(sql("read a deploy"))?;
    let Some(row) = row else { return Ok(None) };
    // Written by SQLite's json functions just above: they parse.
    let stages: Vec<StageRow> = serde_json::from_str(row.get("stage_rows")).unwrap_or_default();
    let hosts: Vec<HostRow> = serde_json::from_str(row.get("host_rows")).unwrap_or_default();
    Ok(Some(with_timeline(deploy_from_row(&row), stages, hosts)))
}

/// A stage as stored: name, state, started, ended.
type StageRow = (String, String, Option<String>, Option<String>);
/// A host's part in a stage as stored: stage, host, state, started, ended.
type HostRow = (String, String, String, Option<String>, Option<String>);

/// A deploy with its stage timeline put together from the stored rows (both stores).
fn with_timeline(mut deploy: Deploy, stages: Vec<StageRow>, mut hosts: Vec<HostRow>) -> Deploy {
    hosts.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    deploy.stages = pending_stages();
    for (name, state, started_at, ended_at) in stages {
        if let Some(stage) = deploy.stages.iter_mut().find(|stage| stage.name == name) {
            stage.state = StageState::parse(&state);
            stage.started_at = started_at;
            stage.ended_at = ended_at;
        }
    }
    for (name, host, state, started_at, ended_at) in hosts {
        if let Some(stage) = deploy.stages.iter_mut().find(|stage| stage.name == name) {
            stage.hosts.push(HostTiming { host, state: StageState::parse(&state), started_at, ended_at });
        }
    }
    if deploy.state.is_final() {
        // Stages a finished deploy never reached did not happen.
        for stage in &mut deploy.stages {
            if stage.state == StageState::Pending {
                stage.state = StageState::Skipped;
            }
        }
    }
    deploy
}

async fn insert_audit(
    connection: &mut SqliteConnection,
    at: &str,
    entry: &DeployAudit<'_>,
    target: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO audit_log (at, token_id, actor, action, target, status, remote_addr) VALUES (?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(at)
    .bind(entry.token_id)
    .bind(entry.actor)
    .bind(entry.action)
    .bind(target)
    .bind(entry.status as i64)
    .bind(entry.remote_addr)
    .execute(connection)
    .await
    .map_err(sql("record an audit entry"))?;
    Ok(())
}

const TOKEN_COLUMNS: &str = "id, name, scope, service, created_at, revoked_at, last_used_at";

fn token_from_row(row: &SqliteRow) -> TokenInfo {
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

/// A deploy just recorded from `new`: queued, nothing of it run yet.
fn queued_deploy(id: i64, new: &NewDeploy, created_at: String) -> Deploy {
    Deploy {
        id,
        service: new.service.clone(),
        destination: new.destination.clone(),
        kind: new.kind.clone(),
        version: new.version.clone(),
        git_ref: new.git_ref.clone(),
        commit: None,
        state: DeployState::Queued,
        stage: None,
        reason: new.reason.clone(),
        requested_by: new.requested_by.clone(),
        created_at,
        started_at: None,
        ended_at: None,
        error: None,
        runner: None,
        stages: pending_stages(),
    }
}

fn pending_stages() -> Vec<Stage> {
    stage_names()
        .map(|name| Stage {
            name: name.to_string(),
            state: StageState::Pending,
            started_at: None,
            ended_at: None,
            hosts: Vec::new(),
        })
        .collect()
}

/// SQL put together from this module's own constants (column lists, table names), never from input.
fn audited(sql: String) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(sql)
}

/// Now, RFC 3339 UTC with milliseconds (sorts as text).
pub fn now() -> String {
    crate::utc::now_millis()
}

/// A new, empty database on the test run's PostgreSQL (`BERTH_TEST_DATABASE_URL`, started by
/// scripts/test.sh), for the store's and the queue's tests.
#[cfg(test)]
pub(crate) async fn test_database() -> String {
    let server = std::env::var("BERTH_TEST_DATABASE_URL").expect(
        "BERTH_TEST_DATABASE_URL names the test run's PostgreSQL: run `bash scripts/test.sh`, which starts one \
         (tests/postgres/cluster.sh)",
    );
    postgres::create_test_database(&server).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh database of each kind: SQLite in a temporary directory, and a new database on the test run's
    /// PostgreSQL (`BERTH_TEST_DATABASE_URL`, started by scripts/test.sh). Every store test runs on both.
    async fn stores() -> Vec<TestStore> {
        let dir = tempfile::tempdir().unwrap();
        let sqlite = Store::open(&dir.path().join("berth.sqlite")).await.unwrap();
        let url = test_database().await;
        let postgres = Store::connect(&url, "test", "Holder: berth pid=1 host=test boot=x").await.unwrap();
        vec![
            TestStore { store: sqlite, reopen: Reopen::Sqlite(dir) },
            TestStore { store: postgres, reopen: Reopen::Postgres(url) },
        ]
    }

    struct TestStore {
        store: Store,
        reopen: Reopen,
    }

    enum Reopen {
        Sqlite(tempfile::TempDir),
        Postgres(String),
    }

    impl TestStore {
        /// The same database opened again, as a restarted daemon would.
        async fn reopened(&self) -> Store {
            self.store.close().await;
            match &self.reopen {
                Reopen::Sqlite(dir) => Store::open(&dir.path().join("berth.sqlite")).await.unwrap(),
                Reopen::Postgres(url) => {
                    Store::connect(url, "test", "Holder: berth pid=1 host=test boot=x").await.unwrap()
                }
            }
        }

        /// Sets when a deploy ended (tests of time-based rules).
        async fn backdate_end(&self, id: i64, ended_at: &str) {
            match &self.store.db {
                Db::Sqlite { writer, .. } => {
                    sqlx::query("UPDATE deploys SET ended_at = ? WHERE id = ?")
                        .bind(ended_at)
                        .bind(id)
                        .execute(writer)
                        .await
                        .unwrap();
                }
                Db::Postgres(pg) => pg.backdate_end_for_test(id, ended_at).await,
            }
            self.store.deploys.changed(id);
        }
    }

    fn request(service: &str) -> NewDeploy {
        NewDeploy { service: service.into(), kind: "deploy".into(), ..NewDeploy::default() }
    }

    #[tokio::test]
    async fn latest_supersedes_queued_and_fifo_keeps_them() {
        for test in stores().await {
            let store = &test.store;
            let (first, _) = store.insert_deploy(&request("app"), QueuePolicy::Latest).await.unwrap();
            assert!(store.claim(first.id, "test").await.unwrap());
            let (second, _) = store.insert_deploy(&request("app"), QueuePolicy::Latest).await.unwrap();
            let (third, _) = store.insert_deploy(&request("app"), QueuePolicy::Latest).await.unwrap();
            assert_eq!(store.deploy(second.id).await.unwrap().unwrap().state, DeployState::Superseded);
            assert_eq!(store.deploy(third.id).await.unwrap().unwrap().state, DeployState::Queued);
            assert!(store.runnable(10).await.unwrap().is_empty(), "app is running: nothing else of it runs");
            let (other, _) = store.insert_deploy(&request("web"), QueuePolicy::Fifo).await.unwrap();
            let (other2, _) = store.insert_deploy(&request("web"), QueuePolicy::Fifo).await.unwrap();
            let runnable: Vec<i64> = store.runnable(10).await.unwrap().iter().map(|d| d.id).collect();
            assert_eq!(runnable, [other.id, other2.id], "fifo keeps both, oldest first");
            store.finish(first.id, DeployState::Succeeded, None).await.unwrap();
            let runnable: Vec<i64> = store.runnable(10).await.unwrap().iter().map(|d| d.id).collect();
            assert_eq!(runnable, [third.id, other.id, other2.id]);
        }
    }

    #[tokio::test]
    async fn idempotency_keys_give_back_the_first_deploy() {
        for test in stores().await {
            let store = &test.store;
            let keyed = NewDeploy { idempotency_key: Some("k1".into()), ..request("app") };
            let (first, created) = store.insert_deploy(&keyed, QueuePolicy::Fifo).await.unwrap();
            assert!(created);
            let (again, created) = store.insert_deploy(&keyed, QueuePolicy::Fifo).await.unwrap();
            assert!(!created);
            assert_eq!(again.id, first.id);
            assert_eq!(store.list_deploys(&DeployFilter { limit: 10, ..Default::default() }).await.unwrap().len(), 1);
        }
    }

    #[tokio::test]
    async fn a_request_and_its_audit_entry_are_stored_together_also_when_its_key_was_used() {
        for test in stores().await {
            let store = &test.store;
            let audit = DeployAudit {
                token_id: Some(7),
                actor: "ci",
                action: "POST /deploys",
                status: 202,
                remote_addr: Some("10.0.0.1"),
                target: |deploy| format!("deploy {} of {}", deploy.id, deploy.service),
            };
            let keyed = NewDeploy { idempotency_key: Some("7:k1".into()), ..request("app") };
            let (first, created) = store.insert_deploy_audited(&keyed, QueuePolicy::Latest, &audit).await.unwrap();
            assert!(created);
            assert_eq!(first.state, DeployState::Queued);
            let (again, created) = store.insert_deploy_audited(&keyed, QueuePolicy::Latest, &audit).await.unwrap();
            assert!(!created);
            assert_eq!(again, store.deploy(first.id).await.unwrap().unwrap(), "the deploy as stored, with its stages");
            let (other, _) = store.insert_deploy_audited(&request("app"), QueuePolicy::Latest, &audit).await.unwrap();
            assert_eq!(store.deploy(other.id).await.unwrap().unwrap().state, DeployState::Queued);
            assert_eq!(store.deploy(first.id).await.unwrap().unwrap().state, DeployState::Queued, "it runs next");
            let entries = store.list_audit(None, 10).await.unwrap();
            let targets: Vec<&str> = entries.iter().filter_map(|entry| entry.target.as_deref()).collect();
            assert_eq!(
                targets,
                [
                    format!("deploy {} of app", other.id),
                    format!("deploy {} of app", first.id),
                    format!("deploy {} of app", first.id)
                ]
            );
            assert!(entries.iter().all(|entry| entry.actor == "ci" && entry.status == 202));
            assert_eq!(entries[0].remote_addr.as_deref(), Some("10.0.0.1"));
            assert_eq!(store.list_deploys(&DeployFilter { limit: 10, ..Default::default() }).await.unwrap().len(), 2);
        }
    }

    #[tokio::test]
    async fn runnable_skips_services_that_run_however_many_are_queued() {
        for test in stores().await {
            let store = &test.store;
            let (running, _) = store.insert_deploy(&request("app"), QueuePolicy::Fifo).await.unwrap();
            assert!(store.claim(running.id, "test").await.unwrap());
            let mut queued = Vec::new();
            for _ in 0..200 {
                queued.push(store.insert_deploy(&request("app"), QueuePolicy::Fifo).await.unwrap().0.id);
            }
            let web = NewDeploy { destination: Some("production".into()), ..request("web") };
            let (other, _) = store.insert_deploy(&web, QueuePolicy::Fifo).await.unwrap();
            let runnable: Vec<i64> = store.runnable(64).await.unwrap().iter().map(|d| d.id).collect();
            assert_eq!(runnable, [other.id]);
            store.finish(running.id, DeployState::Failed, Some("failed")).await.unwrap();
            let runnable: Vec<i64> = store.runnable(3).await.unwrap().iter().map(|d| d.id).collect();
            assert_eq!(runnable, queued[..3]);
        }
    }

    #[tokio::test]
    async fn a_deploy_read_again_after_each_change_shows_the_change() {
        for test in stores().await {
            let store = &test.store;
            let read = |id: i64| {
                let store = store.clone();
                async move { store.deploy(id).await.unwrap().unwrap() }
            };
            let (a, _) = store.insert_deploy(&request("app"), QueuePolicy::Latest).await.unwrap();
            assert_eq!(read(a.id).await.state, DeployState::Queued);
            store.claim(a.id, "test").await.unwrap();
            assert_eq!(read(a.id).await.state, DeployState::Running);
            store.set_resolved(a.id, "v2", Some("abc")).await.unwrap();
            assert_eq!(read(a.id).await.commit.as_deref(), Some("abc"));
            store.stage_changed(a.id, "pull", Some("h1"), StageChange::Started).await.unwrap();
            assert_eq!(read(a.id).await.stage.as_deref(), Some("pull"));
            let (b, _) = store.insert_deploy(&request("app"), QueuePolicy::Latest).await.unwrap();
            assert_eq!(read(b.id).await.state, DeployState::Queued);
            let (c, _) = store.insert_deploy(&request("app"), QueuePolicy::Latest).await.unwrap();
            assert_eq!(read(b.id).await.state, DeployState::Superseded, "superseded by c while a runs");
            assert!(store.cancel_queued(c.id).await.unwrap());
            assert_eq!(read(c.id).await.state, DeployState::Cancelled);
            store.finish(a.id, DeployState::Failed, Some("no")).await.unwrap();
            let ended = read(a.id).await;
            assert_eq!((ended.state, ended.stages[2].state), (DeployState::Failed, StageState::Failed));
            let (d, _) = store.insert_deploy(&request("web"), QueuePolicy::Fifo).await.unwrap();
            store.claim(d.id, "test").await.unwrap();
            assert_eq!(read(d.id).await.state, DeployState::Running);
            store.interrupt_running("test", "stopped").await.unwrap();
            assert_eq!(read(d.id).await.state, DeployState::Interrupted);
        }
    }

    #[tokio::test]
    async fn stages_per_host_roll_up() {
        for test in stores().await {
            let store = &test.store;
            let (deploy, _) = store.insert_deploy(&request("app"), QueuePolicy::Latest).await.unwrap();
            store.claim(deploy.id, "test").await.unwrap();
            store.stage_changed(deploy.id, "build", None, StageChange::Skipped).await.unwrap();
            for host in ["h1", "h2"] {
                store.stage_changed(deploy.id, "pull", Some(host), StageChange::Started).await.unwrap();
            }
            store.stage_changed(deploy.id, "pull", Some("h1"), StageChange::Succeeded).await.unwrap();
            let pull = |deploy: Deploy| deploy.stages.into_iter().find(|s| s.name == "pull").unwrap();
            let stage = pull(store.deploy(deploy.id).await.unwrap().unwrap());
            assert_eq!(stage.state, StageState::Running);
            assert!(stage.ended_at.is_none());
            store.stage_changed(deploy.id, "pull", Some("h2"), StageChange::Succeeded).await.unwrap();
            let read = store.deploy(deploy.id).await.unwrap().unwrap();
            assert_eq!(read.stage.as_deref(), Some("pull"));
            let names: Vec<&str> = read.stages.iter().map(|s| s.name.as_str()).collect();
            assert_eq!(names, ["build", "push", "pull", "boot", "healthcheck", "cutover", "prune"]);
            assert_eq!(read.stages[0].state, StageState::Skipped);
            let stage = pull(read);
            assert_eq!(stage.state, StageState::Succeeded);
            assert_eq!(stage.hosts.len(), 2);
            assert!(stage.hosts.iter().all(|h| h.started_at.is_some() && h.ended_at.is_some()));
            store.stage_changed(deploy.id, "boot", Some("h1"), StageChange::Started).await.unwrap();
            store.finish(deploy.id, DeployState::Cancelled, Some("cancelled")).await.unwrap();
            let read = store.deploy(deploy.id).await.unwrap().unwrap();
            assert_eq!(read.state, DeployState::Cancelled);
            let boot = read.stages.iter().find(|s| s.name == "boot").unwrap();
            assert_eq!((boot.state, boot.hosts[0].state), (StageState::Failed, StageState::Failed));
            assert_eq!(read.stages.iter().find(|s| s.name == "prune").unwrap().state, StageState::Skipped);
        }
    }

    #[tokio::test]
    async fn running_deploys_are_interrupted_at_start_and_logs_resume_by_sequence() {
        for test in stores().await {
            let store = &test.store;
            let (deploy, _) = store.insert_deploy(&request("app"), QueuePolicy::Latest).await.unwrap();
            store.claim(deploy.id, "test").await.unwrap();
            store.append_lines(deploy.id, &[(1, "one".into()), (2, "two".into()), (3, "three".into())]).await.unwrap();
            let store = test.reopened().await;
            let interrupted = store.interrupt_running("test", "the daemon stopped").await.unwrap();
            assert_eq!(interrupted.len(), 1);
            assert_eq!(store.deploy(deploy.id).await.unwrap().unwrap().state, DeployState::Interrupted);
            let lines = store.lines_after(deploy.id, 1, 100).await.unwrap();
            assert_eq!(lines, [(2, "two".to_string()), (3, "three".to_string())]);
        }
    }

    #[tokio::test]
    async fn retention_deletes_the_logs_of_deploys_ended_before_the_cutoff_and_keeps_the_deploys() {
        for test in stores().await {
            let store = &test.store;
            let mut ids = Vec::new();
            for _ in 0..3 {
                let (deploy, _) = store.insert_deploy(&request("app"), QueuePolicy::Fifo).await.unwrap();
                ids.push(deploy.id);
            }
            let (old, recent, running) = (ids[0], ids[1], ids[2]);
            for id in [old, recent] {
                store.claim(id, "test").await.unwrap();
                store.append_lines(id, &[(1, format!("line of {id}"))]).await.unwrap();
                store.finish(id, DeployState::Succeeded, None).await.unwrap();
            }
            store.claim(running, "test").await.unwrap();
            store.append_lines(running, &[(1, "still running".into())]).await.unwrap();
            // The first one ended long ago (as if years of deploys had passed since).
            test.backdate_end(old, "2020-01-01T00:00:00.000Z").await;
            assert_eq!(store.prune_logs("2021-01-01T00:00:00.000Z").await.unwrap(), 1);
            assert_eq!(store.lines_after(recent, 0, 10).await.unwrap().len(), 1, "a recent deploy keeps its log");
            assert!(store.lines_after(old, 0, 10).await.unwrap().is_empty());
            assert_eq!(store.lines_after(running, 0, 10).await.unwrap().len(), 1, "a running deploy keeps its log");
            assert_eq!(store.deploy(old).await.unwrap().unwrap().state, DeployState::Succeeded, "the deploy is kept");
            // Nothing ended before the epoch: nothing more goes.
            assert_eq!(store.prune_logs("1970-01-01T00:00:00Z").await.unwrap(), 0);
        }
    }
}
