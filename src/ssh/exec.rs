//! Running one command on a session channel: the script, its stdin (bytes or a stream, then EOF), its output
//! split into lines as it arrives, its exit status, and the per-command time limit.

use std::time::Duration;

use bytes::Bytes;
use russh::client::Msg;
use russh::{Channel, ChannelMsg, Sig};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::error::SshError;
use super::{CommandOutput, LineSink, OutputStream};

/// What the command reads on its standard input.
pub(crate) enum Stdin<'a> {
    Bytes(&'a [u8]),
    Stream(&'a mut (dyn AsyncRead + Unpin + Send)),
}

/// Why feeding stdin stopped early.
enum StdinProblem {
    /// Reading the local stream failed: the command must not see a truncated input as complete.
    LocalRead(std::io::Error),
    /// The channel closed (the command exited without reading everything): not an error by itself.
    ChannelClosed,
}

/// How much of a command is shown in error messages.
const COMMAND_SHOWN: usize = 200;

pub(crate) fn shown_command(script: &str) -> String {
    match script.char_indices().nth(COMMAND_SHOWN) {
        Some((cut, _)) => format!("{}…", &script[..cut]),
        None => script.to_string(),
    }
}

/// Where the command's standard output goes.
pub(crate) enum Stdout<'a> {
    /// Split into lines for the sink and collected into the [`CommandOutput`].
    Lines,
    /// Written as is (binary, any size, e.g. `docker save`); the output's `stdout` stays empty.
    Writer(&'a mut (dyn AsyncWrite + Unpin + Send)),
}

/// Runs `script` on `channel` and waits for its exit status.
pub(crate) async fn run(
    channel: Channel<Msg>,
    host: &str,
    script: &str,
    stdin: Stdin<'_>,
    stdout_to: Stdout<'_>,
    lines: &dyn LineSink,
    time_limit: Option<Duration>,
) -> Result<CommandOutput, SshError> {
    let disconnected = |cause: String| SshError::Disconnected {
        host: host.to_string(),
        during: format!("while running `{}`", shown_command(script)),
        cause,
    };
    channel.exec(true, script).await.map_err(|e| disconnected(e.to_string()))?;
    let (mut reader, writer) = channel.split();

    let feed_stdin = async {
        match stdin {
            Stdin::Bytes(bytes) if !bytes.is_empty() => {
                writer.data_bytes(Bytes::copy_from_slice(bytes)).await.map_err(|_| StdinProblem::ChannelClosed)?
            }
            Stdin::Bytes(_) => {}
            Stdin::Stream(stream) => {
                let mut buffer = vec![0u8; 64 * 1024];
                loop {
                    let n = stream.read(&mut buffer).await.map_err(StdinProblem::LocalRead)?;
                    if n == 0 {
                        break;
                    }
                    let chunk = Bytes::copy_from_slice(&buffer[..n]);
                    writer.data_bytes(chunk).await.map_err(|_| StdinProblem::ChannelClosed)?;
                }
            }
        }
        writer.eof().await.map_err(|_| StdinProblem::ChannelClosed)
    };

    let collect_output = async {
        let mut stdout = LineSplitter::new(OutputStream::Stdout);
        let mut stderr = LineSplitter::new(OutputStream::Stderr);
        let mut exit_status = None;
        let mut exec_refused = false;
        let mut stdout_to = stdout_to;
        let mut write_failure = None;
        while let Some(message) = reader.wait().await {
            match message {
                ChannelMsg::Data { data } => match &mut stdout_to {
                    Stdout::Lines => stdout.push(&data, host, lines),
                    Stdout::Writer(writer) => {
                        if write_failure.is_none()
                            && let Err(error) = writer.write_all(&data).await
                        {
                            write_failure = Some(error);
                        }
                    }
                },
                ChannelMsg::ExtendedData { data, ext: 1 } => stderr.push(&data, host, lines),
                ChannelMsg::ExitStatus { exit_status: status } => exit_status = Some(status),
                ChannelMsg::ExitSignal { signal_name, error_message, .. } => {
                    let text = format!("killed by signal {signal_name:?} {error_message}");
                    stderr.push(text.trim_end().as_bytes(), host, lines);
                    exit_status.get_or_insert(128 + signal_number(&signal_name));
                }
                ChannelMsg::Failure => exec_refused = true,
                ChannelMsg::Close => break,
                _ => {}
            }
        }
        stdout.finish(host, lines);
        stderr.finish(host, lines);
        if let (Stdout::Writer(writer), None) = (&mut stdout_to, &write_failure)
            && let Err(error) = writer.flush().await
        {
            write_failure = Some(error);
        }
        (exit_status, exec_refused, stdout.collected, stderr.collected, write_failure)
    };

    let give_up = async {
        match time_limit {
            Some(limit) => tokio::time::sleep(limit).await,
            None => std::future::pending().await,
        }
    };

    tokio::pin!(feed_stdin, collect_output, give_up);
    let mut feeding = true;
    let (exit_status, exec_refused, stdout, stderr, write_failure) = loop {
        tokio::select! {
            fed = &mut feed_stdin, if feeding => {
                feeding = false;
                if let Err(StdinProblem::LocalRead(source)) = fed {
                    stop(&writer).await;
                    return Err(SshError::StdinRead { host: host.into(), command: shown_command(script), source });
                }
            }
            collected = &mut collect_output => break collected,
            () = &mut give_up => {
                stop(&writer).await;
                return Err(SshError::CommandTimeout {
                    host: host.into(),
                    command: shown_command(script),
                    after: time_limit.unwrap_or_default(),
                });
            }
        }
    };
    if let Some(source) = write_failure {
        return Err(SshError::StdoutWrite { host: host.into(), command: shown_command(script), source });
    }
    match exit_status {
        Some(exit_status) => Ok(CommandOutput {
            exit_status,
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        }),
        None if exec_refused => Err(SshError::Channel {
            host: host.into(),
            kind: "exec",
            cause: "the host refused to run the command".into(),
        }),
        None => Err(disconnected("the channel closed before the command reported an exit status".into())),
    }
}

/// Asks the host to end the command (sshd delivers the signal to the command's shell) and closes the channel.
async fn stop(writer: &russh::ChannelWriteHalf<Msg>) {
    let _ = writer.signal(Sig::TERM).await;
    let _ = writer.close().await;
}

fn signal_number(signal: &Sig) -> u32 {
    match signal {
        Sig::HUP => 1,
        Sig::INT => 2,
        Sig::QUIT => 3,
        Sig::ILL => 4,
        Sig::ABRT => 6,
        Sig::FPE => 8,
        Sig::KILL => 9,
        Sig::USR1 => 10,
        Sig::SEGV => 11,
        Sig::PIPE => 13,
        Sig::ALRM => 14,
        Sig::TERM => 15,
        Sig::Custom(_) => 0,
    }
}

/// Splits one output stream into lines as bytes arrive (a line may span chunks; a multi-byte character too), and
/// keeps everything for the final [`CommandOutput`].
struct LineSplitter {
    stream: OutputStream,
    partial: Vec<u8>,
    collected: Vec<u8>,
}

impl LineSplitter {
    fn new(stream: OutputStream) -> Self {
        LineSplitter { stream, partial: Vec::new(), collected: Vec::new() }
    }

    fn push(&mut self, data: &[u8], host: &str, lines: &dyn LineSink) {
        self.collected.extend_from_slice(data);
        let mut rest = data;
        while let Some(newline) = rest.iter().position(|&b| b == b'\n') {
            self.partial.extend_from_slice(&rest[..newline]);
            self.emit(host, lines);
            rest = &rest[newline + 1..];
        }
        self.partial.extend_from_slice(rest);
    }

    /// The last line, if the output did not end with a newline.
    fn finish(&mut self, host: &str, lines: &dyn LineSink) {
        if !self.partial.is_empty() {
            self.emit(host, lines);
        }
    }

    fn emit(&mut self, host: &str, lines: &dyn LineSink) {
        let line = self.partial.strip_suffix(b"\r").unwrap_or(&self.partial);
        lines.line(host, self.stream, &String::from_utf8_lossy(line));
        self.partial.clear();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[derive(Default)]
    struct Recorded(Mutex<Vec<(OutputStream, String)>>);

    impl LineSink for Recorded {
        fn line(&self, _host: &str, stream: OutputStream, line: &str) {
            self.0.lock().unwrap().push((stream, line.to_string()));
        }
    }

    #[test]
    fn lines_span_chunks_and_the_last_unterminated_line_is_kept() {
        let sink = Recorded::default();
        let mut splitter = LineSplitter::new(OutputStream::Stdout);
        for chunk in [&b"one\ntw"[..], b"o\r\n", b"\xc3", b"\xa9t\xc3\xa9\n\nlast"] {
            splitter.push(chunk, "h", &sink);
        }
        splitter.finish("h", &sink);
        let lines: Vec<String> = sink.0.into_inner().unwrap().into_iter().map(|(_, l)| l).collect();
        assert_eq!(lines, ["one", "two", "été", "", "last"]);
        assert_eq!(splitter.collected, b"one\ntwo\r\n\xc3\xa9t\xc3\xa9\n\nlast");
    }

    #[test]
    fn long_commands_are_shortened_in_messages() {
        assert_eq!(shown_command("echo hi"), "echo hi");
        let long = "x".repeat(500);
        assert_eq!(shown_command(&long).chars().count(), COMMAND_SHOWN + 1);
    }
}
