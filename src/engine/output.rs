//! What a running command reports: stage changes, one line per step per host, and raw output lines — as
//! `Event`s sent to a `Sink`. The CLI prints them (`ConsoleSink`); the daemon will persist and stream them.
//!
//! Every text passes through the sink's redaction before it is printed or stored, so a secret value that a
//! command happened to echo never leaves the process.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::secrets::Secrets;

/// One thing that happened while running a command.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A stage (pull, lock, boot, …) started on `hosts` hosts.
    StageStarted {
        stage: String,
        hosts: usize,
    },
    /// A stage ended; `ok` is false when it failed.
    StageFinished {
        stage: String,
        elapsed: Duration,
        ok: bool,
    },
    /// One step on one host (or on the deployer when `host` is None) finished.
    Step {
        host: Option<String>,
        text: String,
        elapsed: Duration,
        ok: bool,
    },
    /// A command about to run on a host (shown with -v).
    Command {
        host: Option<String>,
        text: String,
    },
    /// A line a command printed (shown with -v, or always when `always`).
    Line {
        host: Option<String>,
        stderr: bool,
        text: String,
        always: bool,
    },
    /// Where a deploy is, for the daemon's stage timeline (the console shows steps and stages instead).
    Progress {
        stage: DeployStage,
        /// The host, or None for a deploy-wide stage (build, push).
        host: Option<String>,
        state: ProgressState,
    },
    /// What the user asked to see (versions, details, logs, exec output): printed as is, even with -q.
    Output(String),
    /// Something the user should read.
    Info(String),
    Warning(String),
}

/// The stages of a deploy, in order, as the daemon's API names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeployStage {
    Build,
    Push,
    Pull,
    Boot,
    Healthcheck,
    Cutover,
    Prune,
}

impl DeployStage {
    pub const ALL: [DeployStage; 7] = [
        DeployStage::Build,
        DeployStage::Push,
        DeployStage::Pull,
        DeployStage::Boot,
        DeployStage::Healthcheck,
        DeployStage::Cutover,
        DeployStage::Prune,
    ];

    pub fn name(self) -> &'static str {
        match self {
            DeployStage::Build => "build",
            DeployStage::Push => "push",
            DeployStage::Pull => "pull",
            DeployStage::Boot => "boot",
            DeployStage::Healthcheck => "healthcheck",
            DeployStage::Cutover => "cutover",
            DeployStage::Prune => "prune",
        }
    }
}

/// How a deploy stage went, on one host or as a whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressState {
    Started,
    Succeeded,
    Failed,
    Skipped,
}

/// Where events go. Implementations must be cheap and never block for long: hosts run in parallel.
pub trait Sink: Send + Sync {
    fn emit(&self, event: Event);
}

/// How much the console shows: Kamal's `-q` / default / `-v`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verbosity {
    Quiet,
    Normal,
    Verbose,
}

/// Removes secret values from text. Shared by the engine (which fills it once it has read the secrets) and the
/// sinks (which redact every text before it leaves the process).
#[derive(Clone, Default)]
pub struct Redactor(Arc<OnceLock<Arc<Secrets>>>);

impl Redactor {
    /// From now on, redact these secrets' values.
    pub fn set(&self, secrets: Arc<Secrets>) {
        let _ = self.0.set(secrets);
    }

    pub fn redact(&self, text: &str) -> String {
        match self.0.get() {
            Some(secrets) => secrets.redact(text),
            None => text.to_string(),
        }
    }
}

/// Prints events for a person at a terminal: `  [host] step (0.42s)`.
pub struct ConsoleSink {
    verbosity: Verbosity,
    redact: Redactor,
    out: Mutex<Box<dyn Write + Send>>,
    started: Instant,
}

impl ConsoleSink {
    pub fn new(verbosity: Verbosity, redact: Redactor, out: Box<dyn Write + Send>) -> ConsoleSink {
        ConsoleSink { verbosity, redact, out: Mutex::new(out), started: Instant::now() }
    }

    /// Renders an event as the console shows it, or None when this verbosity hides it.
    pub fn render(&self, event: &Event) -> Option<String> {
        let quiet = self.verbosity == Verbosity::Quiet;
        let verbose = self.verbosity == Verbosity::Verbose;
        let text = match event {
            Event::StageStarted { stage, hosts } if !quiet => match hosts {
                0 => stage.to_string(),
                1 => format!("{stage} (1 host)"),
                n => format!("{stage} ({n} hosts)"),
            },
            Event::StageFinished { stage, elapsed, ok: false } => {
                format!("{stage} failed after {}", seconds(*elapsed))
            }
            Event::StageFinished { stage, elapsed, ok: true } if verbose => {
                format!("{stage} done in {}", seconds(*elapsed))
            }
            Event::Step { host, text, elapsed, ok } if !quiet || !ok => {
                let mark = if *ok { "" } else { "FAILED: " };
                format!("  {}{mark}{text} ({})", prefix(host), seconds(*elapsed))
            }
            Event::Command { host, text } if verbose => format!("  {}$ {text}", prefix(host)),
            Event::Line { host, stderr, text, always } if verbose || (*always && !quiet) => {
                let stream = if *stderr { "! " } else { "" };
                format!("  {}{stream}{text}", prefix(host))
            }
            Event::Output(text) => text.clone(),
            Event::Info(text) if !quiet => text.clone(),
            Event::Warning(text) => format!("warning: {text}"),
            _ => return None,
        };
        Some(self.redact.redact(&text))
    }

    /// Kamal's closing line: `Finished all in 3.2 seconds`.
    pub fn finished(&self) {
        if self.verbosity != Verbosity::Quiet {
            let elapsed = self.started.elapsed().as_secs_f64();
            let mut out = self.out.lock().unwrap_or_else(|poison| poison.into_inner());
            let _ = writeln!(out, "Finished all in {elapsed:.1} seconds");
        }
    }
}

impl Sink for ConsoleSink {
    fn emit(&self, event: Event) {
        if let Some(line) = self.render(&event) {
            let mut out = self.out.lock().unwrap_or_else(|poison| poison.into_inner());
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
        }
    }
}

/// Keeps every event (tests, and the daemon's in-memory buffer before it persists).
#[derive(Default)]
pub struct RecordingSink {
    events: Mutex<Vec<Event>>,
}

impl RecordingSink {
    pub fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap_or_else(|poison| poison.into_inner()).clone()
    }
}

impl Sink for RecordingSink {
    fn emit(&self, event: Event) {
        self.events.lock().unwrap_or_else(|poison| poison.into_inner()).push(event);
    }
}

fn prefix(host: &Option<String>) -> String {
    match host {
        Some(host) => format!("[{host}] "),
        None => String::new(),
    }
}

fn seconds(elapsed: Duration) -> String {
    format!("{:.2}s", elapsed.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn console(verbosity: Verbosity) -> ConsoleSink {
        let redactor = Redactor::default();
        redactor.set(Arc::new(Secrets::from_pairs([("TOKEN", "hunter2")])));
        ConsoleSink::new(verbosity, redactor, Box::new(std::io::sink()))
    }

    fn step(ok: bool) -> Event {
        let host = Some("10.0.0.1".to_string());
        Event::Step { host, text: "Pulled app:v1".into(), elapsed: Duration::from_millis(420), ok }
    }

    #[test]
    fn steps_show_host_and_timing_and_quiet_shows_only_failures() {
        assert_eq!(console(Verbosity::Normal).render(&step(true)).unwrap(), "  [10.0.0.1] Pulled app:v1 (0.42s)");
        assert_eq!(console(Verbosity::Quiet).render(&step(true)), None);
        assert_eq!(
            console(Verbosity::Quiet).render(&step(false)).unwrap(),
            "  [10.0.0.1] FAILED: Pulled app:v1 (0.42s)"
        );
    }

    #[test]
    fn commands_and_output_lines_only_when_verbose() {
        let line = Event::Line { host: None, stderr: false, text: "x".into(), always: false };
        assert_eq!(console(Verbosity::Normal).render(&line), None);
        assert_eq!(console(Verbosity::Verbose).render(&line).unwrap(), "  x");
    }

    #[test]
    fn secrets_are_redacted_from_everything_printed() {
        let line = Event::Line { host: None, stderr: true, text: "token hunter2".into(), always: true };
        assert_eq!(console(Verbosity::Normal).render(&line).unwrap(), "  ! token [REDACTED]");
    }
}
