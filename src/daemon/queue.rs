//! The deploy queue: takes queued deploys in order and runs them — at most one per service and destination,
//! at most `max_concurrent_deploys` in all — each under its total and per-stage timeouts; cancels them.
//!
//! Only the queue and the runs it starts change a deploy's state (the API records requests and reads).
//! States: `queued` → `running` → `succeeded | failed | cancelled | timed_out | interrupted`; `queued` →
//! `cancelled | superseded`. A cancelled or timed-out run is stopped the way Ctrl-C stops the command line:
//! what changes no host is abandoned, a boot step finishes, what switched is switched back, the lock released.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use super::config::DaemonConfig;
use super::logs::{DeploySink, LogHub};
use super::model::{Deploy, DeployState};
use super::store::{Store, StoreError};
use crate::engine::Cancel;
use crate::engine::output::Redactor;

/// What a run came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Succeeded,
    Failed(String),
    /// Stopped by its cancel (asked for, timed out, or the daemon stopping).
    Cancelled,
}

/// One deploy to run, with what its run needs.
pub struct Job {
    pub deploy: Deploy,
    pub sink: Arc<DeploySink>,
    pub redactor: Redactor,
    pub cancel: Cancel,
}

/// Runs deploys: the engine over SSH in the daemon ([`super::runner::EngineRunner`]).
pub trait Runner: Send + Sync + 'static {
    fn run(&self, job: Job) -> Pin<Box<dyn Future<Output = Outcome> + Send + '_>>;
}

/// Why a run was stopped, when it was.
#[derive(Clone, Debug, PartialEq, Eq)]
enum StopReason {
    Requested,
    TimedOut(String),
    DaemonStopping,
}

struct Running {
    cancel: Cancel,
    reason: Arc<Mutex<Option<StopReason>>>,
}

/// The queue of one daemon.
pub struct Queue {
    store: Store,
    hub: Arc<LogHub>,
    config: Arc<DaemonConfig>,
    runner: Arc<dyn Runner>,
    wake: Notify,
    running: Mutex<HashMap<i64, Running>>,
    stopping: AtomicBool,
    idle: Notify,
}

/// What cancelling did.
#[derive(Debug, PartialEq, Eq)]
pub enum Cancelled {
    /// It was queued: cancelled at once.
    Now,
    /// It runs: it is being stopped and rolled back.
    Stopping,
    /// It had ended already, in this state.
    AlreadyEnded(DeployState),
    NotFound,
}

impl Queue {
    pub fn new(store: Store, hub: Arc<LogHub>, config: Arc<DaemonConfig>, runner: Arc<dyn Runner>) -> Arc<Queue> {
        Arc::new(Queue {
            store,
            hub,
            config,
            runner,
            wake: Notify::new(),
            running: Mutex::new(HashMap::new()),
            stopping: AtomicBool::new(false),
            idle: Notify::new(),
        })
    }

    /// A deploy was queued (or a run ended): look for work now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Deploys running in this daemon now.
    pub fn running_ids(&self) -> Vec<i64> {
        let running = self.running.lock().unwrap_or_else(|poison| poison.into_inner());
        running.keys().copied().collect()
    }

    /// Stops the runs of deploys this daemon no longer holds (its lease on them was lost: another daemon
    /// marked them `interrupted`): what switched is rolled back, and nothing more of them is recorded.
    pub fn abandon(&self, ids: &[i64]) {
        let running = self.running.lock().unwrap_or_else(|poison| poison.into_inner());
        for id in ids {
            if let Some(run) = running.get(id) {
                stop(&run.reason, &run.cancel, StopReason::DaemonStopping);
            }
        }
    }

    /// Starts runnable deploys whenever woken (and every second, so nothing waits on a lost wake-up), until
    /// [`Queue::stop`].
    pub async fn dispatch(self: Arc<Self>) {
        loop {
            if self.stopping.load(Ordering::SeqCst) {
                return;
            }
            if let Err(error) = self.start_runnable().await {
                // The store is unavailable for now: try again on the next tick.
                let _ = error;
            }
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    async fn start_runnable(self: &Arc<Self>) -> Result<(), StoreError> {
        let free = self.config.max_concurrent_deploys.saturating_sub(self.running_ids().len());
        if free == 0 {
            return Ok(());
        }
        let candidates = self.store.runnable(64).await?;
        let mut started = 0;
        let mut keys = HashSet::new();
        for deploy in candidates {
            // The oldest queued deploy of each service and destination, and only it.
            if !keys.insert((deploy.service.clone(), deploy.destination.clone())) || started == free {
                continue;
            }
            if self.stopping.load(Ordering::SeqCst) || !self.store.claim(deploy.id, &self.config.instance).await? {
                continue;
            }
            started += 1;
            // Counted as running before this pass ends, so the cap holds across passes.
            let cancel = Cancel::default();
            let reason = Arc::new(Mutex::new(None));
            {
                let mut running = self.running.lock().unwrap_or_else(|poison| poison.into_inner());
                running.insert(deploy.id, Running { cancel: cancel.clone(), reason: Arc::clone(&reason) });
            }
            let queue = Arc::clone(self);
            tokio::spawn(async move { queue.run(deploy, cancel, reason).await });
        }
        Ok(())
    }

    async fn run(self: Arc<Self>, mut deploy: Deploy, cancel: Cancel, reason: Arc<Mutex<Option<StopReason>>>) {
        let id = deploy.id;
        deploy.state = DeployState::Running;
        let redactor = Redactor::default();
        let (sink, writer) = DeploySink::start(id, self.store.clone(), Arc::clone(&self.hub), redactor.clone());
        let job = Job { deploy, sink: Arc::clone(&sink), redactor, cancel: cancel.clone() };

        // The total and per-stage timeouts stop the run the way a cancel does.
        let watchdog = {
            let (cancel, reason, sink) = (cancel.clone(), Arc::clone(&reason), Arc::clone(&sink));
            let (total, per_stage) = (self.config.deploy_timeout, self.config.stage_timeout);
            tokio::spawn(async move {
                let started = tokio::time::Instant::now();
                loop {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    let why = if started.elapsed() >= total {
                        Some(format!("the deploy ran past deploy_timeout ({}s)", total.as_secs()))
                    } else {
                        match sink.current_stage() {
                            Some((stage, ran)) if ran >= per_stage => Some(format!(
                                "stage {} ran past stage_timeout ({}s)",
                                stage.name(),
                                per_stage.as_secs()
                            )),
                            _ => None,
                        }
                    };
                    if let Some(why) = why {
                        stop(&reason, &cancel, StopReason::TimedOut(why));
                        return;
                    }
                }
            })
        };
        let outcome = self.runner.run(job).await;
        watchdog.abort();
        let stop_reason = reason.lock().unwrap_or_else(|poison| poison.into_inner()).clone();
        let (state, error) = match (outcome, stop_reason) {
            (Outcome::Succeeded, _) => (DeployState::Succeeded, None),
            (Outcome::Cancelled | Outcome::Failed(_), Some(StopReason::TimedOut(why))) => {
                (DeployState::TimedOut, Some(format!("{why}; stopped and rolled back")))
            }
            (Outcome::Cancelled | Outcome::Failed(_), Some(StopReason::DaemonStopping)) => (
                DeployState::Interrupted,
                Some("the daemon stopped while the deploy ran; it was stopped and rolled back".to_string()),
            ),
            (Outcome::Cancelled | Outcome::Failed(_), Some(StopReason::Requested)) => {
                (DeployState::Cancelled, Some("cancelled while running; what had switched was rolled back".into()))
            }
            (Outcome::Cancelled, None) => (DeployState::Cancelled, Some("cancelled".to_string())),
            (Outcome::Failed(error), None) => (DeployState::Failed, Some(error)),
        };
        sink.line(match &error {
            None => format!("Deploy {id} {}", state.name()),
            Some(error) => format!("Deploy {id} {}: {error}", state.name()),
        });
        drop(sink);
        let written = writer.await.unwrap_or_default();
        let error = match (error, written.error) {
            (Some(error), Some(log)) => Some(format!("{error} (and the log could not be stored in full: {log})")),
            (None, Some(log)) => Some(format!("the log could not be stored in full: {log}")),
            (error, None) => error,
        };
        // A store that is down now: the deploy stays `running` in it and becomes `interrupted` at the next start.
        let _ = self.store.finish(id, state, error.as_deref()).await;
        self.hub.end(id, state);
        {
            let mut running = self.running.lock().unwrap_or_else(|poison| poison.into_inner());
            running.remove(&id);
            if running.is_empty() {
                self.idle.notify_waiters();
            }
        }
        self.wake();
    }

    /// Cancels a deploy: a queued one at once, a running one by stopping it (then it ends `cancelled`).
    pub async fn cancel(&self, id: i64) -> Result<Cancelled, StoreError> {
        if self.store.cancel_queued(id).await? {
            self.hub.end(id, DeployState::Cancelled);
            return Ok(Cancelled::Now);
        }
        let handle = {
            let running = self.running.lock().unwrap_or_else(|poison| poison.into_inner());
            running.get(&id).map(|run| (run.cancel.clone(), Arc::clone(&run.reason)))
        };
        if let Some((cancel, reason)) = handle {
            self.store.request_cancel(id).await?;
            stop(&reason, &cancel, StopReason::Requested);
            return Ok(Cancelled::Stopping);
        }
        Ok(match self.store.deploy(id).await? {
            Some(deploy) => Cancelled::AlreadyEnded(deploy.state),
            None => Cancelled::NotFound,
        })
    }

    /// Stops taking work and stops the running deploys (rolled back, then `interrupted`); waits for them up
    /// to `grace`.
    pub async fn stop(&self, grace: Duration) {
        self.stopping.store(true, Ordering::SeqCst);
        self.wake.notify_one();
        let idle = self.idle.notified();
        tokio::pin!(idle);
        idle.as_mut().enable();
        {
            let running = self.running.lock().unwrap_or_else(|poison| poison.into_inner());
            if running.is_empty() {
                return;
            }
            for run in running.values() {
                stop(&run.reason, &run.cancel, StopReason::DaemonStopping);
            }
        }
        let _ = tokio::time::timeout(grace, idle).await;
    }
}

fn stop(reason: &Mutex<Option<StopReason>>, cancel: &Cancel, why: StopReason) {
    reason.lock().unwrap_or_else(|poison| poison.into_inner()).get_or_insert(why);
    cancel.cancel();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::config::QueuePolicy;
    use crate::daemon::store::NewDeploy;

    /// A runner whose deploys take `millis` (or until cancelled), and which records overlaps.
    struct Scripted {
        millis: u64,
        log: Mutex<Vec<(i64, &'static str)>>,
        active: Mutex<HashSet<String>>,
        overlaps: Mutex<u32>,
    }

    impl Runner for Scripted {
        fn run(&self, job: Job) -> Pin<Box<dyn Future<Output = Outcome> + Send + '_>> {
            Box::pin(async move {
                let key = job.deploy.service.clone();
                if !self.active.lock().unwrap().insert(key.clone()) {
                    *self.overlaps.lock().unwrap() += 1;
                }
                self.log.lock().unwrap().push((job.deploy.id, "start"));
                job.sink.line("working");
                let outcome = tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(self.millis)) => Outcome::Succeeded,
                    () = job.cancel.raised() => Outcome::Cancelled,
                };
                self.active.lock().unwrap().remove(&key);
                self.log.lock().unwrap().push((job.deploy.id, "end"));
                outcome
            })
        }
    }

    /// A queue on SQLite, or (`postgres`) on a new database of the test run's PostgreSQL.
    async fn queue(
        millis: u64,
        postgres: bool,
        configure: impl FnOnce(&mut DaemonConfig),
    ) -> (Arc<Queue>, Arc<Scripted>, Store, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let mut config = DaemonConfig::empty(dir.path());
        configure(&mut config);
        let store = if postgres {
            let url = crate::daemon::store::test_database().await;
            Store::connect(&url, &config.instance, "Holder: berth pid=1 host=test boot=x").await.unwrap()
        } else {
            Store::open(&dir.path().join("db.sqlite")).await.unwrap()
        };
        let runner =
            Arc::new(Scripted { millis, log: Mutex::default(), active: Mutex::default(), overlaps: Mutex::default() });
        let queue = Queue::new(store.clone(), Arc::new(LogHub::default()), Arc::new(config), runner.clone());
        tokio::spawn(Arc::clone(&queue).dispatch());
        (queue, runner, store, dir)
    }

    async fn submit(store: &Store, queue: &Queue, service: &str, policy: QueuePolicy) -> i64 {
        let new = NewDeploy { service: service.into(), kind: "deploy".into(), ..NewDeploy::default() };
        let id = store.insert_deploy(&new, policy).await.unwrap().0.id;
        queue.wake();
        id
    }

    async fn wait_final(store: &Store, id: i64) -> Deploy {
        for _ in 0..400 {
            let deploy = store.deploy(id).await.unwrap().unwrap();
            if deploy.state.is_final() {
                return deploy;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("deploy {id} did not end");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn latest_runs_the_first_and_the_last_fifo_runs_all_in_order_never_two_at_once() {
        // The same semantics on either store.
        for postgres in [false, true] {
            let (queue, runner, store, _dir) = queue(300, postgres, |_| {}).await;
            let ids = [
                submit(&store, &queue, "app", QueuePolicy::Latest).await,
                submit(&store, &queue, "app", QueuePolicy::Latest).await,
                submit(&store, &queue, "app", QueuePolicy::Latest).await,
            ];
            let states: Vec<DeployState> = futures_util::future::join_all(ids.iter().map(|id| wait_final(&store, *id)))
                .await
                .iter()
                .map(|d| d.state)
                .collect();
            assert_eq!(states, [DeployState::Succeeded, DeployState::Superseded, DeployState::Succeeded]);

            let fifo = [
                submit(&store, &queue, "web", QueuePolicy::Fifo).await,
                submit(&store, &queue, "web", QueuePolicy::Fifo).await,
                submit(&store, &queue, "web", QueuePolicy::Fifo).await,
            ];
            for id in fifo {
                assert_eq!(wait_final(&store, id).await.state, DeployState::Succeeded);
            }
            let log = runner.log.lock().unwrap().clone();
            let web: Vec<(i64, &str)> = log.into_iter().filter(|(id, _)| fifo.contains(id)).collect();
            assert_eq!(
                web,
                [
                    (fifo[0], "start"),
                    (fifo[0], "end"),
                    (fifo[1], "start"),
                    (fifo[1], "end"),
                    (fifo[2], "start"),
                    (fifo[2], "end")
                ]
            );
            assert_eq!(*runner.overlaps.lock().unwrap(), 0, "two deploys of one service never run at once");
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn cancel_queued_at_once_and_running_by_stopping_it() {
        // The same semantics on either store.
        for postgres in [false, true] {
            let (queue, _runner, store, _dir) = queue(60_000, postgres, |_| {}).await;
            let running = submit(&store, &queue, "app", QueuePolicy::Fifo).await;
            let queued = submit(&store, &queue, "app", QueuePolicy::Fifo).await;
            while store.deploy(running).await.unwrap().unwrap().state != DeployState::Running {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert_eq!(queue.cancel(queued).await.unwrap(), Cancelled::Now);
            assert_eq!(store.deploy(queued).await.unwrap().unwrap().state, DeployState::Cancelled);
            assert_eq!(queue.cancel(running).await.unwrap(), Cancelled::Stopping);
            assert_eq!(wait_final(&store, running).await.state, DeployState::Cancelled);
            assert_eq!(queue.cancel(running).await.unwrap(), Cancelled::AlreadyEnded(DeployState::Cancelled));
            assert_eq!(queue.cancel(9999).await.unwrap(), Cancelled::NotFound);
            let lines = store.lines_after(running, 0, 100).await.unwrap();
            assert_eq!(lines[0], (1, "working".to_string()));
            assert!(lines.last().unwrap().1.starts_with(&format!("Deploy {running} cancelled")), "{lines:?}");
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_deploy_past_its_timeout_is_stopped_as_timed_out_and_the_cap_holds() {
        // The same semantics on either store.
        for postgres in [false, true] {
            let (queue, runner, store, _dir) = queue(60_000, postgres, |config| {
                config.deploy_timeout = Duration::from_secs(1);
                config.max_concurrent_deploys = 1;
            })
            .await;
            let first = submit(&store, &queue, "a", QueuePolicy::Fifo).await;
            let second = submit(&store, &queue, "b", QueuePolicy::Fifo).await;
            let deploy = wait_final(&store, first).await;
            assert_eq!(deploy.state, DeployState::TimedOut);
            assert!(deploy.error.unwrap().contains("deploy_timeout"));
            assert_eq!(wait_final(&store, second).await.state, DeployState::TimedOut);
            let log = runner.log.lock().unwrap().clone();
            assert_eq!(log, [(first, "start"), (first, "end"), (second, "start"), (second, "end")], "one at a time");
        }
    }
}
