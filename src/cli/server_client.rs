//! `berth deploy|redeploy|rollback --server URL`: the command submitted to a `berth serve` daemon instead of
//! run here — the request posted (with an idempotency key, so a retry cannot deploy twice), its log followed
//! live over server-sent events (reconnecting from the last line seen), and the deploy's outcome as the exit
//! status. Ctrl-C asks the daemon to cancel the deploy, and the log is followed to its end.

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

/// `--server` and what goes with it, on `deploy`, `redeploy` and `rollback`.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ServerArgs {
    /// Submit to a `berth serve` daemon at this URL (http://HOST:PORT; token from $BERTH_TOKEN) and follow the
    /// deploy's log there; the exit status is the deploy's outcome
    #[arg(long, env = "BERTH_SERVER", value_name = "URL")]
    pub server: Option<String>,
    /// With --server: the service as the daemon names it (default: `service` of the configuration here)
    #[arg(long, value_name = "NAME", requires = "server")]
    pub service: Option<String>,
    /// With --server: the branch, tag or commit the daemon builds and deploys (default: its branch's head)
    #[arg(long = "ref", value_name = "REF", requires = "server")]
    pub git_ref: Option<String>,
    /// With --server: why (shown with the deploy)
    #[arg(long, requires = "server")]
    pub reason: Option<String>,
}

/// What to ask the daemon for.
pub struct Submission {
    pub server: String,
    pub token: String,
    /// `POST` path and JSON body.
    pub path: String,
    pub body: serde_json::Value,
}

/// Where the daemon is: `host:port`, from `http://host:port[/]`.
fn authority(server: &str) -> anyhow::Result<String> {
    let Some(rest) = server.strip_prefix("http://") else {
        if server.starts_with("https://") {
            bail!(
                "--server {server}: berth talks plain HTTP to the daemon (put it on a private network or an SSH tunnel); use http://HOST:PORT"
            );
        }
        bail!("--server {server}: expected http://HOST:PORT");
    };
    let authority = rest.trim_end_matches('/');
    if authority.is_empty() || authority.contains('/') {
        bail!("--server {server}: expected http://HOST:PORT (no path)");
    }
    Ok(if authority.contains(':') { authority.to_string() } else { format!("{authority}:80") })
}

/// Submits, follows, and returns Ok when the deploy succeeded.
pub fn run(submission: Submission, out: &mut dyn Write) -> anyhow::Result<()> {
    let authority = authority(&submission.server)?;
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
    runtime.block_on(async {
        let key = random_key();
        let body = serde_json::to_vec(&submission.body)?;
        let (status, answer) =
            send(&authority, &submission.token, "POST", &submission.path, Some((&body, &key))).await?;
        if status != StatusCode::ACCEPTED {
            bail!("the daemon refused the request ({status}): {}", problem_detail(&answer));
        }
        let deploy: serde_json::Value = serde_json::from_slice(&answer).context("the daemon's answer is not JSON")?;
        let id = deploy["id"].as_i64().context("the daemon's answer has no deploy id")?;
        writeln!(out, "Deploy {id} queued on {} (follow it at /deploys/{id})", submission.server)?;
        out.flush()?;

        let mut last = 0i64;
        let mut failures = 0;
        let mut cancelled = false;
        let final_state = loop {
            let followed = follow(&authority, &submission.token, id, &mut last, out);
            tokio::pin!(followed);
            let result = tokio::select! {
                result = &mut followed => result,
                _ = tokio::signal::ctrl_c(), if !cancelled => {
                    cancelled = true;
                    eprintln!("Cancelling deploy {id} on the daemon (what switched is rolled back)…");
                    let path = format!("/deploys/{id}/cancel");
                    let _ = send(&authority, &submission.token, "POST", &path, None).await;
                    followed.await
                }
            };
            match result {
                Ok(Some(state)) => break state,
                // The stream ended without an end event (the daemon restarted, the network dropped): resume.
                Ok(None) | Err(_) if failures < 30 => {
                    failures += 1;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Ok(None) => bail!("lost the daemon while following deploy {id}; see GET /deploys/{id}"),
                Err(error) => return Err(error.context(format!("following deploy {id}"))),
            }
        };
        if final_state == "succeeded" {
            return Ok(());
        }
        let (_, answer) = send(&authority, &submission.token, "GET", &format!("/deploys/{id}"), None).await?;
        let deploy: serde_json::Value = serde_json::from_slice(&answer).unwrap_or_default();
        let error = deploy["error"].as_str().unwrap_or("");
        bail!("deploy {id} {final_state}{}", if error.is_empty() { String::new() } else { format!(": {error}") })
    })
}

/// Follows the log from after `last`, printing lines; Some(state) at the end event, None if the stream ended
/// without one.
async fn follow(
    authority: &str,
    token: &str,
    id: i64,
    last: &mut i64,
    out: &mut dyn Write,
) -> anyhow::Result<Option<String>> {
    let stream =
        tokio::net::TcpStream::connect(authority).await.with_context(|| format!("connecting to {authority}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = Request::builder()
        .uri(format!("/deploys/{id}/logs"))
        .header("host", authority)
        .header("authorization", format!("Bearer {token}"))
        .header("accept", "text/event-stream")
        .header("last-event-id", last.to_string())
        .body(Full::new(Bytes::new()))?;
    let response = sender.send_request(request).await?;
    if response.status() != StatusCode::OK {
        let status = response.status();
        let body = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        bail!("the daemon answered {status}: {}", problem_detail(&body));
    }
    let mut body: Incoming = response.into_body();
    let mut pending = String::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else { continue };
        pending.push_str(&String::from_utf8_lossy(&data));
        while let Some(end) = pending.find("\n\n") {
            let block: String = pending.drain(..end + 2).collect();
            let (mut event_id, mut event, mut data) = (None, "message", Vec::new());
            for line in block.lines() {
                if let Some(value) = line.strip_prefix("id:") {
                    event_id = value.trim().parse::<i64>().ok();
                } else if let Some(value) = line.strip_prefix("event:") {
                    event = if value.trim() == "end" { "end" } else { "other" };
                } else if let Some(value) = line.strip_prefix("data:") {
                    data.push(value.strip_prefix(' ').unwrap_or(value).to_string());
                }
            }
            if event == "end" {
                return Ok(Some(data.join("\n")));
            }
            if let Some(seq) = event_id {
                if seq <= *last {
                    continue;
                }
                *last = seq;
                writeln!(out, "{}", data.join("\n"))?;
                out.flush()?;
            }
        }
    }
    Ok(None)
}

/// One request; (status, body).
async fn send(
    authority: &str,
    token: &str,
    method: &str,
    path: &str,
    json: Option<(&[u8], &str)>,
) -> anyhow::Result<(StatusCode, Bytes)> {
    let stream = tokio::net::TcpStream::connect(authority)
        .await
        .with_context(|| format!("connecting to the daemon at {authority} (is `berth serve` running there?)"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", authority)
        .header("authorization", format!("Bearer {token}"));
    let body = match json {
        Some((body, key)) => {
            request = request.header("content-type", "application/json").header("idempotency-key", key);
            Bytes::copy_from_slice(body)
        }
        None => Bytes::new(),
    };
    let response = sender.send_request(request.body(Full::new(body))?).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

fn problem_detail(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|problem| problem["detail"].as_str().map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned())
}

/// An idempotency key for this invocation: a retried POST cannot queue a second deploy.
fn random_key() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the operating system's random source works");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_addresses() {
        assert_eq!(authority("http://127.0.0.1:7420").unwrap(), "127.0.0.1:7420");
        assert_eq!(authority("http://berth.internal/").unwrap(), "berth.internal:80");
        assert!(authority("https://berth.example").unwrap_err().to_string().contains("plain HTTP"));
        assert!(authority("berth:7420").is_err());
        assert!(authority("http://h:1/api").is_err());
    }
}
