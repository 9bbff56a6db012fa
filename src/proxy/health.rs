//! Health checks: GET the health path on each target, with consecutive-success/failure thresholds.
//!
//! A new target is checked at once and then every 50 ms (backing off to the configured interval while it
//! keeps failing), so a healthy target passes its threshold in well under a second. Once healthy it is
//! checked every interval for as long as it serves, single targets included (kamal-proxy stops checking a
//! lone healthy target).

use std::sync::Arc;
use std::time::Duration;

use http::{Request, header};
use hyper_util::rt::TokioIo;

use super::options::HealthCheckOptions;
use super::target::{Target, UpstreamBody};

const FIRST_RETRY: Duration = Duration::from_millis(50);

/// A running health-check loop; dropping it stops the checks.
pub struct HealthChecker {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for HealthChecker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts checking `target` on the current runtime.
pub fn spawn(target: Arc<Target>, options: HealthCheckOptions) -> HealthChecker {
    HealthChecker { task: tokio::spawn(check_forever(target, options)) }
}

async fn check_forever(target: Arc<Target>, options: HealthCheckOptions) {
    let mut successes = 0u32;
    let mut failures = 0u32;
    let mut retry = FIRST_RETRY;
    let mut health = target.health();
    loop {
        let result = check_once(&target, &options).await;
        health.checks += 1;
        match result {
            Ok(()) => {
                successes += 1;
                failures = 0;
                retry = FIRST_RETRY;
                health.last_failure = None;
                if !health.healthy && successes >= options.healthy_threshold {
                    health.healthy = true;
                    log_transition(&target, true, None);
                }
            }
            Err(reason) => {
                failures += 1;
                successes = 0;
                if health.healthy && failures >= options.unhealthy_threshold {
                    health.healthy = false;
                    log_transition(&target, false, Some(&reason));
                }
                health.last_failure = Some(reason);
            }
        }
        target.set_health(health.clone());
        let wait = if health.healthy {
            options.interval
        } else if failures == 0 {
            FIRST_RETRY.min(options.interval)
        } else {
            let wait = retry.min(options.interval);
            retry = retry.mul_f32(1.5);
            wait
        };
        tokio::time::sleep(wait).await;
    }
}

fn log_transition(target: &Target, healthy: bool, reason: Option<&str>) {
    let line = serde_json::json!({
        "time": super::observability::now_rfc3339(),
        "level": if healthy { "INFO" } else { "WARN" },
        "msg": "Target health updated",
        "target": target.address,
        "healthy": healthy,
        "reason": reason,
    });
    super::observability::log_event(&line);
}

/// One check: a 2xx answer to `GET <path>` within the timeout.
pub async fn check_once(target: &Target, options: &HealthCheckOptions) -> Result<(), String> {
    let port = if options.port == 0 { target.port() } else { options.port };
    let attempt = async {
        let stream = target.connect_tcp(port).await.map_err(|e| e.to_string())?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake::<_, UpstreamBody>(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        let host = if options.host.is_empty() { format!("{}:{port}", target.host()) } else { options.host.clone() };
        let request = Request::get(options.path.as_str())
            .header(header::HOST, host)
            .header(header::USER_AGENT, "kamal-proxy")
            .header(header::CONNECTION, "close")
            .body(UpstreamBody::Empty)
            .map_err(|e| e.to_string())?;
        let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
        let status = response.status();
        if status.is_success() { Ok(()) } else { Err(format!("health check returned {status}")) }
    };
    match tokio::time::timeout(options.timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(format!("health check timed out after {:?}", options.timeout)),
    }
}
