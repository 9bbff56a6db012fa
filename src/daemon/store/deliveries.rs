//! The store's side of what the daemon tells others: deploy events (written by triggers with each state
//! change), the deliveries planned from them, and what each deploy's deliveries share (deploy links).

use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use super::{Db, Store, StoreError, now, sql};
use crate::daemon::model::DeployState;

/// A change of a deploy's state.
#[derive(Clone, Debug, PartialEq)]
pub struct DeployEvent {
    pub id: i64,
    pub deploy_id: i64,
    pub service: String,
    pub state: DeployState,
    pub at: String,
}

/// A delivery to plan: event `event_id` of deploy `deploy_id`, to `target`.
#[derive(Clone, Debug)]
pub struct NewDelivery {
    pub deploy_id: i64,
    pub event_id: i64,
    pub state: DeployState,
    pub target: String,
}

/// An outgoing call, as stored.
#[derive(Clone, Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Delivery {
    pub id: i64,
    pub deploy_id: i64,
    pub event_id: i64,
    /// The deploy's state the event is about.
    pub state: String,
    /// Where it goes: `notify/N` (the service's Nth `notify` entry), `github`, `slack-reply`.
    pub target: String,
    /// `pending`, `delivered`, `failed` (given up), `skipped`.
    pub status: String,
    pub attempts: i64,
    pub next_attempt_at: String,
    /// Why the last attempt failed, or why it was skipped.
    pub last_error: Option<String>,
    pub done_at: Option<String>,
}

/// How an attempt ended.
#[derive(Clone, Debug)]
pub enum DeliveryOutcome {
    Delivered,
    /// Try again at `at` (RFC 3339).
    Retry {
        at: String,
        error: String,
    },
    Failed(String),
    Skipped(String),
}

/// What a deploy's deliveries share.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DeployLink {
    pub slack_response_url: Option<String>,
    pub github_deployment_id: Option<i64>,
}

const DELIVERY_COLUMNS: &str =
    "id, deploy_id, event_id, state_event, target, status, attempts, next_attempt_at, last_error, done_at";

// The notifier's reads go through the writer connection: it must see its own last writes (a reader
// connection's snapshot can be older, and a delivery just recorded as sent would be sent again).
impl Store {
    /// Waits until some deploy changed (or returns at once when one did since the last wait). On PostgreSQL
    /// other daemons change deploys unseen: then it waits half a second (the notifier polls).
    pub async fn wait_for_change(&self) {
        match &self.db {
            Db::Sqlite { .. } => self.deploys.changes.notified().await,
            Db::Postgres(_) => tokio::time::sleep(std::time::Duration::from_millis(500)).await,
        }
    }

    /// The last event the notifier has planned deliveries for.
    pub async fn notifier_cursor(&self) -> Result<i64, StoreError> {
        if let Db::Postgres(pg) = &self.db {
            return pg.notifier_cursor().await;
        }
        sqlx::query_scalar("SELECT last_event_id FROM notifier_cursor WHERE id = 1")
            .fetch_one(self.writer())
            .await
            .map_err(sql("read the notifier's cursor"))
    }

    /// Deploy events after `after`, oldest first.
    pub async fn events_after(&self, after: i64, limit: i64) -> Result<Vec<DeployEvent>, StoreError> {
        if let Db::Postgres(pg) = &self.db {
            return pg.events_after(after, limit).await;
        }
        let rows =
            sqlx::query("SELECT id, deploy_id, service, state, at FROM deploy_events WHERE id > ? ORDER BY id LIMIT ?")
                .bind(after)
                .bind(limit)
                .fetch_all(self.writer())
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

    /// Stores the deliveries planned for the events up to `last_event_id`, and moves the cursor there, at
    /// once: an event is planned exactly once, even across a crash.
    pub async fn plan_deliveries(&self, last_event_id: i64, deliveries: &[NewDelivery]) -> Result<(), StoreError> {
        if let Db::Postgres(pg) = &self.db {
            return pg.plan_deliveries(last_event_id, deliveries).await;
        }
        let now = now();
        let mut tx = self.writer().begin().await.map_err(sql("start a transaction"))?;
        for delivery in deliveries {
            sqlx::query(
                "INSERT INTO deliveries (deploy_id, event_id, state_event, target, next_attempt_at) \
                 VALUES (?, ?, ?, ?, ?) ON CONFLICT (event_id, target) DO NOTHING",
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
        sqlx::query("UPDATE notifier_cursor SET last_event_id = ? WHERE id = 1 AND last_event_id < ?")
            .bind(last_event_id)
            .bind(last_event_id)
            .execute(&mut *tx)
            .await
            .map_err(sql("move the notifier's cursor"))?;
        tx.commit().await.map_err(sql("commit planned deliveries"))
    }

    /// Pending deliveries due by now, oldest first — only the first pending one per deploy and target, so
    /// that each target hears of a deploy's events in order.
    pub async fn due_deliveries(&self, limit: i64) -> Result<Vec<Delivery>, StoreError> {
        if let Db::Postgres(pg) = &self.db {
            return pg.due_deliveries(limit).await;
        }
        let rows = sqlx::query(crate::daemon::store::audited(format!(
            "SELECT {DELIVERY_COLUMNS} FROM deliveries d WHERE status = 'pending' AND next_attempt_at <= ? \
             AND NOT EXISTS (SELECT 1 FROM deliveries e WHERE e.deploy_id = d.deploy_id AND e.target = d.target \
                             AND e.status = 'pending' AND e.id < d.id) ORDER BY id LIMIT ?"
        )))
        .bind(now())
        .bind(limit)
        .fetch_all(self.writer())
        .await
        .map_err(sql("find due deliveries"))?;
        Ok(rows.iter().map(delivery_from_row).collect())
    }

    /// When the next pending delivery is due (RFC 3339), if any.
    pub async fn next_delivery_at(&self) -> Result<Option<String>, StoreError> {
        if let Db::Postgres(pg) = &self.db {
            return pg.next_delivery_at().await;
        }
        sqlx::query_scalar("SELECT MIN(next_attempt_at) FROM deliveries WHERE status = 'pending'")
            .fetch_one(self.writer())
            .await
            .map_err(sql("find the next delivery"))
    }

    /// Records an attempt.
    pub async fn record_attempt(&self, id: i64, outcome: &DeliveryOutcome) -> Result<(), StoreError> {
        if let Db::Postgres(pg) = &self.db {
            return pg.record_attempt(id, outcome).await;
        }
        let now = now();
        let (status, next, error) = attempt_columns(outcome);
        let counts = !matches!(outcome, DeliveryOutcome::Skipped(_));
        sqlx::query(
            "UPDATE deliveries SET status = ?, attempts = attempts + ?, next_attempt_at = COALESCE(?, next_attempt_at), \
             last_error = COALESCE(?, last_error), done_at = CASE WHEN ? = 'pending' THEN NULL ELSE ? END WHERE id = ?",
        )
        .bind(status)
        .bind(i64::from(counts))
        .bind(next)
        .bind(error)
        .bind(status)
        .bind(&now)
        .bind(id)
        .execute(self.writer())
        .await
        .map_err(sql("record a delivery attempt"))?;
        Ok(())
    }

    /// A deploy's deliveries, in order.
    pub async fn deliveries_of(&self, deploy_id: i64) -> Result<Vec<Delivery>, StoreError> {
        if let Db::Postgres(pg) = &self.db {
            return pg.deliveries_of(deploy_id).await;
        }
        let rows = sqlx::query(crate::daemon::store::audited(format!(
            "SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE deploy_id = ? ORDER BY id"
        )))
        .bind(deploy_id)
        .fetch_all(self.reader())
        .await
        .map_err(sql("list a deploy's deliveries"))?;
        Ok(rows.iter().map(delivery_from_row).collect())
    }

    /// What a deploy's deliveries share.
    pub async fn deploy_link(&self, deploy_id: i64) -> Result<DeployLink, StoreError> {
        if let Db::Postgres(pg) = &self.db {
            return pg.deploy_link(deploy_id).await;
        }
        let row = sqlx::query("SELECT slack_response_url, github_deployment_id FROM deploy_links WHERE deploy_id = ?")
            .bind(deploy_id)
            .fetch_optional(self.writer())
            .await
            .map_err(sql("read a deploy's links"))?;
        Ok(row.map_or_else(DeployLink::default, |row| DeployLink {
            slack_response_url: row.get("slack_response_url"),
            github_deployment_id: row.get("github_deployment_id"),
        }))
    }

    /// Records the GitHub deployment made for a deploy.
    pub async fn set_github_deployment(&self, deploy_id: i64, deployment_id: i64) -> Result<(), StoreError> {
        if let Db::Postgres(pg) = &self.db {
            return pg.set_github_deployment(deploy_id, deployment_id).await;
        }
        sqlx::query(
            "INSERT INTO deploy_links (deploy_id, github_deployment_id) VALUES (?, ?) \
             ON CONFLICT (deploy_id) DO UPDATE SET github_deployment_id = excluded.github_deployment_id",
        )
        .bind(deploy_id)
        .bind(deployment_id)
        .execute(self.writer())
        .await
        .map_err(sql("record a GitHub deployment"))?;
        Ok(())
    }
}

/// An attempt's outcome as the columns it sets: status, next attempt, error.
pub(super) fn attempt_columns(outcome: &DeliveryOutcome) -> (&'static str, Option<&str>, Option<&str>) {
    match outcome {
        DeliveryOutcome::Delivered => ("delivered", None, None),
        DeliveryOutcome::Retry { at, error } => ("pending", Some(at.as_str()), Some(error.as_str())),
        DeliveryOutcome::Failed(error) => ("failed", None, Some(error.as_str())),
        DeliveryOutcome::Skipped(why) => ("skipped", None, Some(why.as_str())),
    }
}

fn delivery_from_row(row: &SqliteRow) -> Delivery {
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
