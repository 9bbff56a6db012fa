//! The daemon's values as its API shows them: deploys, their states, stages and per-host times, tokens and
//! audit entries. Shared by the store (which reads and writes them) and the API (which serialises them).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::engine::output::DeployStage;

/// Where a deploy is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeployState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    /// A newer request for the same service and destination replaced it while it was queued (`queue: latest`).
    Superseded,
    /// It ran past `deploy_timeout` or a stage past `stage_timeout`, and was stopped and rolled back.
    TimedOut,
    /// The daemon stopped (crash, restart) while it ran; hosts kept serving, the lock was released.
    Interrupted,
}

impl DeployState {
    pub const ALL: [DeployState; 8] = [
        DeployState::Queued,
        DeployState::Running,
        DeployState::Succeeded,
        DeployState::Failed,
        DeployState::Cancelled,
        DeployState::Superseded,
        DeployState::TimedOut,
        DeployState::Interrupted,
    ];

    pub fn name(self) -> &'static str {
        match self {
            DeployState::Queued => "queued",
            DeployState::Running => "running",
            DeployState::Succeeded => "succeeded",
            DeployState::Failed => "failed",
            DeployState::Cancelled => "cancelled",
            DeployState::Superseded => "superseded",
            DeployState::TimedOut => "timed_out",
            DeployState::Interrupted => "interrupted",
        }
    }

    pub fn parse(text: &str) -> Option<DeployState> {
        DeployState::ALL.into_iter().find(|state| state.name() == text)
    }

    /// Nothing more will happen to it.
    pub fn is_final(self) -> bool {
        !matches!(self, DeployState::Queued | DeployState::Running)
    }
}

/// How a stage went, as a whole or on one host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StageState {
    Pending,
    Running,
    Succeeded,
    Failed,
    Skipped,
}

impl StageState {
    pub fn name(self) -> &'static str {
        match self {
            StageState::Pending => "pending",
            StageState::Running => "running",
            StageState::Succeeded => "succeeded",
            StageState::Failed => "failed",
            StageState::Skipped => "skipped",
        }
    }

    pub fn parse(text: &str) -> StageState {
        match text {
            "running" => StageState::Running,
            "succeeded" => StageState::Succeeded,
            "failed" => StageState::Failed,
            "skipped" => StageState::Skipped,
            _ => StageState::Pending,
        }
    }
}

/// The stages every deploy reports, in order.
pub fn stage_names() -> impl Iterator<Item = &'static str> {
    DeployStage::ALL.into_iter().map(DeployStage::name)
}

/// A deploy: what was asked, where it is, and its timeline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Deploy {
    pub id: i64,
    pub service: String,
    pub destination: Option<String>,
    /// `deploy` or `rollback`.
    pub kind: String,
    /// The image tag deployed: the one asked for, or the commit built.
    pub version: Option<String>,
    /// The branch, tag or commit asked for.
    #[serde(rename = "ref")]
    pub git_ref: Option<String>,
    /// The commit the configuration (and the image, when built) came from.
    pub commit: Option<String>,
    pub state: DeployState,
    /// The stage running now, or the last one that ran.
    pub stage: Option<String>,
    pub reason: Option<String>,
    /// The token that asked for it (its name).
    pub requested_by: Option<String>,
    /// RFC 3339, UTC.
    pub created_at: String,
    pub started_at: Option<String>,
    pub ended_at: Option<String>,
    /// Why it failed, was cancelled or interrupted.
    pub error: Option<String>,
    /// The daemon instance that runs (or ran) it (`instance:` in berth.yml; default host name and port).
    pub runner: Option<String>,
    /// `build`, `push`, `pull`, `boot`, `healthcheck`, `cutover`, `prune`, in order (empty in lists).
    pub stages: Vec<Stage>,
}

/// One stage of a deploy, with its times on each host.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Stage {
    pub name: String,
    pub state: StageState,
    pub started_at: Option<String>,
    pub ended_at: Option<String>,
    pub hosts: Vec<HostTiming>,
}

/// A stage on one host.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HostTiming {
    pub host: String,
    pub state: StageState,
    pub started_at: Option<String>,
    pub ended_at: Option<String>,
}

/// What a token may do. Each scope includes the ones before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// See services, deploys, logs.
    Read,
    /// Also start, cancel and roll back deploys, toggle maintenance.
    Deploy,
    /// Also read the audit log.
    Admin,
}

impl Scope {
    pub fn name(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Deploy => "deploy",
            Scope::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Scope> {
        match text {
            "read" => Some(Scope::Read),
            "deploy" => Some(Scope::Deploy),
            "admin" => Some(Scope::Admin),
            _ => None,
        }
    }
}

/// An API token as listed (never the token itself).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TokenInfo {
    pub id: i64,
    pub name: String,
    pub scope: Scope,
    /// Limited to this service.
    pub service: Option<String>,
    pub created_at: String,
    pub revoked_at: Option<String>,
    pub last_used_at: Option<String>,
}

/// Who asked for what, when, from where.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AuditEntry {
    pub id: i64,
    pub at: String,
    /// The token's name, or `anonymous`.
    pub actor: String,
    /// `METHOD /path`.
    pub action: String,
    /// The service or deploy concerned.
    pub target: Option<String>,
    /// The HTTP status answered.
    pub status: u16,
    pub remote_addr: Option<String>,
}
