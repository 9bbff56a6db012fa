//! A deploy's log and timeline on their way from the engine to the store and to everyone following it.
//!
//! The engine emits events synchronously, from many host tasks at once. [`DeploySink`] renders each one as
//! the console would (secrets redacted) and queues it, in order, for one writer task per deploy, which
//! stores every batch of lines with their sequence numbers *first* and only then publishes them on the
//! deploy's live channel ([`LogHub`]). So a follower that reads the store up to sequence N and then takes
//! the live channel from N+1 on sees every line exactly once, whenever it connects or reconnects.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{broadcast, mpsc};

use super::model::DeployState;
use super::store::{StageChange, Store};
use crate::engine::output::{ConsoleSink, DeployStage, Event, ProgressState, Redactor, Sink, Verbosity};

/// Events a live follower receives.
#[derive(Clone, Debug)]
pub enum LiveEvent {
    Line {
        seq: i64,
        text: Arc<str>,
    },
    /// The deploy ended in this state; no more lines follow.
    End(DeployState),
}

/// How many live events a slow follower may fall behind before it re-reads from the store.
const LIVE_CAPACITY: usize = 4096;

/// The live channels of deploys being followed or run.
#[derive(Default)]
pub struct LogHub {
    channels: Mutex<HashMap<i64, broadcast::Sender<LiveEvent>>>,
}

impl LogHub {
    /// Follows deploy `id` from now on.
    pub fn subscribe(&self, id: i64) -> broadcast::Receiver<LiveEvent> {
        let mut channels = self.channels.lock().unwrap_or_else(|poison| poison.into_inner());
        channels.entry(id).or_insert_with(|| broadcast::channel(LIVE_CAPACITY).0).subscribe()
    }

    fn publish(&self, id: i64, event: LiveEvent) {
        let channels = self.channels.lock().unwrap_or_else(|poison| poison.into_inner());
        if let Some(sender) = channels.get(&id) {
            let _ = sender.send(event);
        }
    }

    /// Tells followers the deploy ended, and drops its channel (late followers read the store).
    pub fn end(&self, id: i64, state: DeployState) {
        let mut channels = self.channels.lock().unwrap_or_else(|poison| poison.into_inner());
        if let Some(sender) = channels.remove(&id) {
            let _ = sender.send(LiveEvent::End(state));
        }
    }
}

/// What the sink queues for the writer.
#[derive(Debug)]
enum Message {
    Line(String),
    Stage { stage: DeployStage, host: Option<String>, change: StageChange },
    Resolved { version: String, commit: Option<String> },
}

/// The engine's sink for one deploy run by the daemon.
pub struct DeploySink {
    renderer: ConsoleSink,
    queue: mpsc::UnboundedSender<Message>,
    /// The stage running now and since when (for the stage timeout).
    current: Mutex<Option<(DeployStage, Instant)>>,
}

impl DeploySink {
    /// A sink for deploy `id`, and the writer task that stores and publishes what it receives (it ends once
    /// the sink is dropped, with the number of lines and the first store error, if any).
    pub fn start(
        id: i64,
        store: Store,
        hub: Arc<LogHub>,
        redactor: Redactor,
    ) -> (Arc<DeploySink>, tokio::task::JoinHandle<Written>) {
        let (queue, received) = mpsc::unbounded_channel();
        let sink = DeploySink {
            renderer: ConsoleSink::new(Verbosity::Normal, redactor, Box::new(std::io::sink())),
            queue,
            current: Mutex::new(None),
        };
        let writer = tokio::spawn(write_log(id, store, hub, received));
        (Arc::new(sink), writer)
    }

    /// A line of the daemon's own (it goes through the same redaction as the engine's).
    pub fn line(&self, text: impl Into<String>) {
        self.emit(Event::Info(text.into()));
    }

    /// Records the version and commit the deploy resolved to.
    pub fn resolved(&self, version: &str, commit: Option<&str>) {
        let _ = self.queue.send(Message::Resolved { version: version.to_string(), commit: commit.map(str::to_string) });
    }

    /// The stage running now and how long it has run.
    pub fn current_stage(&self) -> Option<(DeployStage, std::time::Duration)> {
        let current = self.current.lock().unwrap_or_else(|poison| poison.into_inner());
        current.map(|(stage, since)| (stage, since.elapsed()))
    }
}

impl Sink for DeploySink {
    fn emit(&self, event: Event) {
        if let Event::Progress { stage, host, state } = event {
            let change = match state {
                ProgressState::Started => StageChange::Started,
                ProgressState::Succeeded => StageChange::Succeeded,
                ProgressState::Failed => StageChange::Failed,
                ProgressState::Skipped => StageChange::Skipped,
            };
            if change == StageChange::Started {
                let mut current = self.current.lock().unwrap_or_else(|poison| poison.into_inner());
                if current.is_none_or(|(running, _)| running != stage) {
                    *current = Some((stage, Instant::now()));
                }
            }
            let _ = self.queue.send(Message::Stage { stage, host, change });
            return;
        }
        if let Some(text) = self.renderer.render(&event) {
            for line in text.lines() {
                let _ = self.queue.send(Message::Line(line.to_string()));
            }
        }
    }
}

/// Most lines stored in one transaction.
const BATCH: usize = 256;

/// What the writer did.
#[derive(Debug, Default)]
pub struct Written {
    pub lines: i64,
    /// The first error storing something (the deploy goes on: hosts matter more than the log).
    pub error: Option<String>,
}

/// Stores what the sink queued, in order, lines in batches; publishes lines once stored.
async fn write_log(id: i64, store: Store, hub: Arc<LogHub>, mut received: mpsc::UnboundedReceiver<Message>) -> Written {
    let mut seq = 0;
    let mut first_error: Option<String> = None;
    let mut batch: Vec<(i64, String)> = Vec::new();
    while let Some(first) = received.recv().await {
        let mut next = Some(first);
        while let Some(message) = next.take() {
            match message {
                Message::Line(text) => {
                    seq += 1;
                    batch.push((seq, text));
                }
                other => {
                    // Lines before a stage change are stored before it.
                    flush(id, &store, &hub, &mut batch, &mut first_error).await;
                    let result = match other {
                        Message::Stage { stage, host, change } => {
                            store.stage_changed(id, stage.name(), host.as_deref(), change).await
                        }
                        Message::Resolved { version, commit } => {
                            store.set_resolved(id, &version, commit.as_deref()).await
                        }
                        Message::Line(_) => unreachable!("lines are batched above"),
                    };
                    if let Err(error) = result {
                        first_error.get_or_insert(error.to_string());
                    }
                }
            }
            if batch.len() < BATCH {
                next = received.try_recv().ok();
            }
        }
        flush(id, &store, &hub, &mut batch, &mut first_error).await;
    }
    Written { lines: seq, error: first_error }
}

async fn flush(id: i64, store: &Store, hub: &LogHub, batch: &mut Vec<(i64, String)>, error: &mut Option<String>) {
    if batch.is_empty() {
        return;
    }
    if let Err(failed) = store.append_lines(id, batch).await {
        error.get_or_insert(failed.to_string());
    }
    for (seq, text) in batch.drain(..) {
        hub.publish(id, LiveEvent::Line { seq, text: Arc::from(text) });
    }
}
