//! Running `Cmd`s on hosts for the engine: each step reported to the sink with its host and timing, output
//! lines forwarded (redacted), failures turned into `EngineError`s that say what failed where, and fan-out over
//! hosts in parallel that waits for all of them and reports every failure (Kamal's "Exceptions on N hosts").

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use tokio::io::AsyncRead;

use super::EngineError;
use super::output::{Event, Sink};
use crate::command::Cmd;
use crate::ssh::{CommandOutput, LineSink, OutputStream, SshPool};

/// The engine's handle on the hosts.
#[derive(Clone)]
pub struct Remote {
    ssh: SshPool,
    sink: Arc<dyn Sink>,
}

/// Forwards a command's output lines to the sink as verbose `Line` events.
struct SinkLines<'a> {
    sink: &'a dyn Sink,
}

impl LineSink for SinkLines<'_> {
    fn line(&self, host: &str, stream: OutputStream, line: &str) {
        let stderr = matches!(stream, OutputStream::Stderr);
        self.sink.emit(Event::Line { host: Some(host.to_string()), stderr, text: line.to_string(), always: false });
    }
}

/// Streams a command's output lines to the sink as `Output` (shown as is): `logs --follow`.
pub struct OutputLines<'a> {
    pub sink: &'a dyn Sink,
}

impl LineSink for OutputLines<'_> {
    fn line(&self, host: &str, _stream: OutputStream, line: &str) {
        self.sink.emit(Event::Output(format!("{host}: {line}")));
    }
}

pub use crate::ssh::DiscardLines;

impl Remote {
    pub fn new(ssh: SshPool, sink: Arc<dyn Sink>) -> Remote {
        Remote { ssh, sink }
    }

    pub fn sink(&self) -> &dyn Sink {
        self.sink.as_ref()
    }

    pub fn ssh(&self) -> &SshPool {
        &self.ssh
    }

    /// Runs `cmd` on `host`; a non-zero exit is an error naming the host, the command and its stderr.
    pub async fn run(&self, host: &str, cmd: &Cmd) -> Result<CommandOutput, EngineError> {
        let output = self.run_unchecked(host, cmd).await?;
        succeeded(host, cmd, output)
    }

    /// Runs `cmd` on `host` and returns its output whatever its exit status.
    pub async fn run_unchecked(&self, host: &str, cmd: &Cmd) -> Result<CommandOutput, EngineError> {
        self.sink.emit(Event::Command { host: Some(host.to_string()), text: cmd.to_string() });
        let lines = SinkLines { sink: self.sink.as_ref() };
        Ok(self.ssh.run(host, cmd, &lines).await?)
    }

    /// Runs `cmd` on `host` where Kamal passes `raise_on_non_zero_exit: false`: a non-zero exit is tolerated
    /// (noted in the verbose output, as SSHKit logs it at debug level), an SSH failure is still an error. Every
    /// such spot in Kamal 2.12's `lib/kamal/cli/`, each tolerating only its own command:
    ///
    /// | Kamal 2.12                                                 | berth builder                       | where (engine) |
    /// |------------------------------------------------------------|-------------------------------------|----------------|
    /// | `app stop`: `app.stop` (`… \| xargs docker stop`, 123 when nothing runs) | `app::stop`          | `stop_app` |
    /// | `app stop`: `app.remove` (`kamal-proxy remove`)            | `proxy::remove`                     | `stop_app` |
    /// | `app start`: `app.start` (`docker start`)                  | `app::start`                        | `start_app` |
    /// | `app stale_containers --stop`: `app.stop(version:)`        | `app::stop`                         | `stale_containers` |
    /// | `app/boot.rb` `stop_old_version`                           | `app::stop_containers`              | `boot_app`, joined by `;` |
    /// | `app/boot.rb` `stop_new_version`                           | `app::stop`, `docker stop <id>`     | `boot_role`, `roll_back` |
    /// | `app remove_app_directories`: `rm -r .kamal/apps/SVC`      | `app::remove_app_directory`         | `remove_app` |
    /// | … and `rm -r .kamal/proxy/apps-config/SVC`                 | `app::remove_proxy_app_directory`   | `remove_app` |
    /// | `build pull`: `builder.clean` (`docker image rm --force`)  | `builder::remove_image_before_pull` | `pull_image` |
    /// | `proxy stop`, `reboot`, `upgrade`, `remove`: `proxy.stop`  | `proxy::stop_container`             | `proxy_action`, `reboot_proxy`, `remove_proxy` |
    /// | `proxy remove_proxy_directory`: `rm -r .kamal/proxy`       | `proxy::remove_proxy_directory`     | `remove_proxy` |
    /// | `accessory stop` (so `reboot`, `remove`): `accessory.stop` | `accessory::stop`                   | `accessory_action`, `reboot_accessory`, `remove_accessories` |
    /// | `server bootstrap`: `docker.installed?`                    | `server::docker_installed`          | `bootstrap_servers` (its status is the answer) |
    /// | `current_running_version`, `list_versions`, `container_id_for_version` captures | `app::current_running_version`, … | strict: they end in `while read`/`docker ls`, which exit 0 |
    /// | `server bootstrap`: `superuser?`, `root?`, `in_docker_group?` | —                                | berth does not install Docker |
    /// | `proxy boot_config reset`: `rm` of the option files        | —                                   | not a berth command |
    /// | `registry remove` on the deployer (`docker logout`)        | —                                   | berth logs out on hosts only |
    pub async fn run_tolerating_exit(&self, host: &str, cmd: &Cmd) -> Result<CommandOutput, EngineError> {
        let output = self.run_unchecked(host, cmd).await?;
        if output.exit_status != 0 {
            let text = format!("exit status {} tolerated (as Kamal does)", output.exit_status);
            self.sink.emit(Event::Line { host: Some(host.to_string()), stderr: false, text, always: false });
        }
        Ok(output)
    }

    /// [`Remote::run_tolerating_exit`] reported as one step, which is done whatever the exit status.
    pub async fn step_tolerating_exit(&self, host: &str, text: &str, cmd: &Cmd) -> Result<CommandOutput, EngineError> {
        let started = Instant::now();
        let output = self.run_tolerating_exit(host, cmd).await?;
        self.report(host, text, started, true);
        Ok(output)
    }

    /// Runs `cmd` on `host` with `stdin` streamed to it until its end (e.g. a build context as a tar); a
    /// non-zero exit is an error as with [`Remote::run`].
    pub async fn run_with_stdin_stream(
        &self,
        host: &str,
        cmd: &Cmd,
        stdin: impl AsyncRead + Unpin + Send,
    ) -> Result<CommandOutput, EngineError> {
        self.sink.emit(Event::Command { host: Some(host.to_string()), text: cmd.to_string() });
        let lines = SinkLines { sink: self.sink.as_ref() };
        let output = self.ssh.run_with_stdin_stream(host, cmd, stdin, &lines).await?;
        succeeded(host, cmd, output)
    }

    /// Runs `cmd` on `host` with its standard output written to `stdout` (binary, e.g. `docker save`); a
    /// non-zero exit is an error as with [`Remote::run`].
    pub async fn run_with_stdout_to(
        &self,
        host: &str,
        cmd: &Cmd,
        stdout: &mut (dyn tokio::io::AsyncWrite + Unpin + Send),
    ) -> Result<CommandOutput, EngineError> {
        self.sink.emit(Event::Command { host: Some(host.to_string()), text: cmd.to_string() });
        let lines = SinkLines { sink: self.sink.as_ref() };
        let output = self.ssh.run_with_stdout_to(host, cmd, stdout, &lines).await?;
        succeeded(host, cmd, output)
    }

    /// Runs `cmd` and reports it as one step (`[host] text (0.12s)`), failed or not.
    pub async fn step(&self, host: &str, text: &str, cmd: &Cmd) -> Result<CommandOutput, EngineError> {
        let started = Instant::now();
        let result = self.run(host, cmd).await;
        self.report(host, text, started, result.is_ok());
        result
    }

    /// Writes a file on `host` over the SSH channel, created with `mode` (its contents never reach argv).
    pub async fn write_file(&self, host: &str, path: &str, contents: &[u8], mode: u32) -> Result<(), EngineError> {
        self.sink.emit(Event::Command { host: Some(host.to_string()), text: format!("upload {path} (mode {mode:o})") });
        Ok(self.ssh.write_file(host, path, contents, mode).await?)
    }

    /// Reports a step that finished.
    pub fn report(&self, host: &str, text: &str, started: Instant, ok: bool) {
        self.sink.emit(Event::Step {
            host: Some(host.to_string()),
            text: text.to_string(),
            elapsed: started.elapsed(),
            ok,
        });
    }
}

/// Runs `work` for every host at once and waits for all; every failure is reported, none is lost.
pub async fn on_hosts<T, F, Fut>(hosts: &[String], work: F) -> Result<Vec<T>, EngineError>
where
    F: Fn(String) -> Fut,
    Fut: Future<Output = Result<T, EngineError>>,
{
    let results = futures_util::future::join_all(hosts.iter().map(|host| work(host.clone()))).await;
    let mut values = Vec::with_capacity(results.len());
    let mut failures = Vec::new();
    for (host, result) in hosts.iter().zip(results) {
        match result {
            Ok(value) => values.push(value),
            Err(err) => failures.push((host.clone(), err)),
        }
    }
    match failures.len() {
        0 => Ok(values),
        1 => Err(failures.pop().expect("one failure").1),
        _ => Err(EngineError::OnHosts(failures)),
    }
}

/// `output` if its command exited 0, else an error naming the host, the command and its last output lines.
fn succeeded(host: &str, cmd: &Cmd, output: CommandOutput) -> Result<CommandOutput, EngineError> {
    if output.exit_status != 0 {
        return Err(EngineError::CommandFailed {
            host: host.to_string(),
            command: cmd.to_string(),
            status: output.exit_status,
            output: last_lines(if output.stderr.trim().is_empty() { &output.stdout } else { &output.stderr }),
        });
    }
    Ok(output)
}

/// The last lines of a command's output, for an error message.
fn last_lines(text: &str) -> String {
    let lines: Vec<&str> = text.trim_end().lines().collect();
    lines[lines.len().saturating_sub(12)..].join("\n")
}
