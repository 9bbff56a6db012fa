//! What the proxy tells operators: a JSON access log (kamal-proxy's fields) and Prometheus metrics.
//!
//! Both are kept per worker thread so the request path takes no shared lock: access-log lines collect in a
//! thread-local buffer that is written to stdout when it fills or every 200 ms, and metrics accumulate in
//! a per-worker map that only the scrape reads across threads.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::Write;
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

use super::server::worker_index;

/// Flush the access-log buffer once it holds this much.
const LOG_BUFFER_FLUSH_AT: usize = 32 * 1024;
pub const LOG_FLUSH_INTERVAL: Duration = Duration::from_millis(200);

thread_local! {
    static LOG_BUFFER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// This worker's metrics since it last published them (no lock on the request path).
    static LOCAL_METRICS: RefCell<WorkerMetrics> = RefCell::new(WorkerMetrics::default());
}

/// One request's access-log line (kamal-proxy's `"msg":"Request"` fields).
#[derive(Serialize)]
pub struct AccessLogLine<'a> {
    pub time: &'a str,
    pub level: &'static str,
    pub msg: &'static str,
    pub host: &'a str,
    pub port: u16,
    pub path: &'a str,
    pub query: &'a str,
    pub method: &'a str,
    pub proto: &'static str,
    pub scheme: &'static str,
    pub request_id: &'a str,
    pub status: u16,
    pub service: &'a str,
    pub target: &'a str,
    /// Nanoseconds, as kamal-proxy logs it.
    pub duration: u64,
    pub req_content_length: u64,
    pub req_content_type: &'a str,
    pub resp_content_length: u64,
    pub resp_content_type: &'a str,
    pub client_addr: &'a str,
    pub client_port: u16,
    pub remote_addr: &'a str,
    pub user_agent: &'a str,
    /// `req_<header>`/`resp_<header>` for `--log-request-header`/`--log-response-header`, and `error`.
    #[serde(flatten)]
    pub extra: std::collections::BTreeMap<String, String>,
}

/// Appends a request line to this thread's buffer (flushed by size, by [`flush_access_log`], or at exit).
pub fn log_request(line: &AccessLogLine<'_>) {
    LOG_BUFFER.with(|buffer| {
        let mut buffer = buffer.borrow_mut();
        let line_start = buffer.len();
        match serde_json::to_writer(&mut *buffer, line) {
            Ok(()) => buffer.push(b'\n'),
            Err(_) => buffer.truncate(line_start),
        }
        if buffer.len() >= LOG_BUFFER_FLUSH_AT {
            write_stdout(&mut buffer);
        }
    });
}

/// Writes this thread's buffered access-log lines.
pub fn flush_access_log() {
    LOG_BUFFER.with(|buffer| write_stdout(&mut buffer.borrow_mut()));
}

fn write_stdout(buffer: &mut Vec<u8>) {
    if buffer.is_empty() {
        return;
    }
    let mut stdout = std::io::stdout().lock();
    // A closed stdout must not take the proxy down; the lines are dropped.
    let _ = stdout.write_all(buffer);
    let _ = stdout.flush();
    buffer.clear();
}

/// Logs a lifecycle event (deploys, health transitions) at once, as one JSON line.
pub fn log_event(line: &serde_json::Value) {
    let mut text = line.to_string();
    text.push('\n');
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
}

/// `2026-11-26T15:04:05.123Z`, without a date library.
pub fn now_rfc3339() -> String {
    crate::utc::now_millis()
}

/// Prometheus histogram buckets (seconds), the client libraries' defaults as kamal-proxy uses them.
const BUCKETS: [f64; 11] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
const METHODS: [&str; 9] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "OTHER"];

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct RequestKey {
    service: u32,
    method: u8,
    status: u16,
}

#[derive(Default, Clone)]
struct RequestCell {
    count: u64,
    duration_sum: f64,
    buckets: [u64; BUCKETS.len()],
}

/// FNV-1a for the small integer keys of the per-worker maps: SipHash's DoS resistance buys nothing here
/// (the keys are service ids, methods and statuses) and it is several times slower per request.
#[derive(Default)]
struct SmallKeyHasher(u64);

impl std::hash::Hasher for SmallKeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut hash = if self.0 == 0 { 0xcbf29ce484222325 } else { self.0 };
        for byte in bytes {
            hash ^= *byte as u64;
            hash = hash.wrapping_mul(0x100000001b3);
        }
        self.0 = hash;
    }
}

type SmallKeyMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<SmallKeyHasher>>;

#[derive(Default)]
struct WorkerMetrics {
    requests: SmallKeyMap<RequestKey, RequestCell>,
    started: SmallKeyMap<u32, u64>,
    finished: SmallKeyMap<u32, u64>,
}

/// Request counters, durations and in-flight gauges, per worker.
pub struct Metrics {
    workers: Box<[Mutex<WorkerMetrics>]>,
    deploys: Mutex<Vec<(String, bool, f64)>>,
}

/// The index of a method in [`METHODS`] (unknown methods fold into `OTHER`, capping label cardinality).
pub fn method_index(method: &http::Method) -> u8 {
    method_index_of(method.as_str())
}

/// [`method_index`] of a method's name.
pub fn method_index_of(method: &str) -> u8 {
    METHODS.iter().position(|m| *m == method).unwrap_or(METHODS.len() - 1) as u8
}

impl Metrics {
    pub fn new(workers: usize) -> Metrics {
        Metrics { workers: (0..workers.max(1)).map(|_| Mutex::default()).collect(), deploys: Mutex::default() }
    }

    pub fn request_started(&self, service: u32) {
        LOCAL_METRICS.with(|m| *m.borrow_mut().started.entry(service).or_default() += 1);
    }

    pub fn request_finished(&self, service: u32, method: u8, status: u16, duration: Duration) {
        let seconds = duration.as_secs_f64();
        LOCAL_METRICS.with(|m| {
            let mut worker = m.borrow_mut();
            *worker.finished.entry(service).or_default() += 1;
            let cell = worker.requests.entry(RequestKey { service, method, status }).or_default();
            cell.count += 1;
            cell.duration_sum += seconds;
            if let Some(bucket) = BUCKETS.iter().position(|b| seconds <= *b) {
                cell.buckets[bucket] += 1;
            }
        });
    }

    /// Moves this thread's counts into its shared slot, where scrapes read them (called every
    /// [`LOG_FLUSH_INTERVAL`] by each worker, so a scrape is at most that stale).
    pub fn publish(&self) {
        LOCAL_METRICS.with(|m| {
            let mut local = m.borrow_mut();
            if local.started.is_empty() && local.finished.is_empty() {
                return;
            }
            let mut shared =
                self.workers[worker_index() % self.workers.len()].lock().unwrap_or_else(|e| e.into_inner());
            for (key, cell) in local.requests.drain() {
                let total = shared.requests.entry(key).or_default();
                total.count += cell.count;
                total.duration_sum += cell.duration_sum;
                for (t, c) in total.buckets.iter_mut().zip(cell.buckets) {
                    *t += c;
                }
            }
            for (service, n) in local.started.drain() {
                *shared.started.entry(service).or_default() += n;
            }
            for (service, n) in local.finished.drain() {
                *shared.finished.entry(service).or_default() += n;
            }
        });
    }

    /// Records a finished deploy (for `berth_proxy_deploys_total` and its duration).
    pub fn deploy_finished(&self, service: &str, ok: bool, seconds: f64) {
        self.deploys.lock().unwrap_or_else(|e| e.into_inner()).push((service.to_string(), ok, seconds));
    }

    /// The Prometheus text exposition; `names` maps service ids to names.
    pub fn render(&self, names: &HashMap<u32, String>) -> String {
        let mut requests: HashMap<RequestKey, RequestCell> = HashMap::new();
        let mut in_flight: HashMap<u32, i64> = HashMap::new();
        for worker in self.workers.iter() {
            let worker = worker.lock().unwrap_or_else(|e| e.into_inner());
            for (key, cell) in &worker.requests {
                let total = requests.entry(*key).or_default();
                total.count += cell.count;
                total.duration_sum += cell.duration_sum;
                for (t, c) in total.buckets.iter_mut().zip(cell.buckets) {
                    *t += c;
                }
            }
            for (service, n) in &worker.started {
                *in_flight.entry(*service).or_default() += *n as i64;
            }
            for (service, n) in &worker.finished {
                *in_flight.entry(*service).or_default() -= *n as i64;
            }
        }
        let name = |id: u32| names.get(&id).map(String::as_str).unwrap_or("").replace('"', "");
        let mut keys: Vec<_> = requests.keys().copied().collect();
        keys.sort_by_key(|k| (k.service, k.method, k.status));
        let mut out = String::new();
        out.push_str(
            "# HELP kamal_proxy_http_requests_total HTTP requests processed, by service, method and status.\n",
        );
        out.push_str("# TYPE kamal_proxy_http_requests_total counter\n");
        for key in &keys {
            let labels = format!(
                "method=\"{}\",service=\"{}\",status=\"{}\"",
                METHODS[key.method as usize],
                name(key.service),
                key.status
            );
            out.push_str(&format!("kamal_proxy_http_requests_total{{{labels}}} {}\n", requests[key].count));
        }
        out.push_str("# HELP kamal_proxy_http_request_duration_seconds Time to serve a request, in seconds.\n");
        out.push_str("# TYPE kamal_proxy_http_request_duration_seconds histogram\n");
        for key in &keys {
            let labels = format!(
                "method=\"{}\",service=\"{}\",status=\"{}\"",
                METHODS[key.method as usize],
                name(key.service),
                key.status
            );
            let cell = &requests[key];
            let mut cumulative = 0;
            for (bound, count) in BUCKETS.iter().zip(cell.buckets) {
                cumulative += count;
                out.push_str(&format!(
                    "kamal_proxy_http_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {cumulative}\n"
                ));
            }
            out.push_str(&format!(
                "kamal_proxy_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}\n",
                cell.count
            ));
            out.push_str(&format!("kamal_proxy_http_request_duration_seconds_sum{{{labels}}} {}\n", cell.duration_sum));
            out.push_str(&format!("kamal_proxy_http_request_duration_seconds_count{{{labels}}} {}\n", cell.count));
        }
        out.push_str("# HELP kamal_proxy_http_in_flight_requests Requests being served, by service.\n");
        out.push_str("# TYPE kamal_proxy_http_in_flight_requests gauge\n");
        let mut services: Vec<_> = in_flight.into_iter().collect();
        services.sort();
        for (service, n) in services {
            out.push_str(&format!("kamal_proxy_http_in_flight_requests{{service=\"{}\"}} {n}\n", name(service)));
        }
        let deploys = self.deploys.lock().unwrap_or_else(|e| e.into_inner());
        let mut totals: HashMap<(String, bool), (u64, f64)> = HashMap::new();
        for (service, ok, seconds) in deploys.iter() {
            let total = totals.entry((service.clone(), *ok)).or_default();
            total.0 += 1;
            total.1 += seconds;
        }
        out.push_str("# HELP berth_proxy_deploys_total Deploys (health gate, switch and drain), by outcome.\n");
        out.push_str("# TYPE berth_proxy_deploys_total counter\n");
        let mut totals: Vec<_> = totals.into_iter().collect();
        totals.sort_by(|a, b| a.0.cmp(&b.0));
        for ((service, ok), (count, _)) in &totals {
            let outcome = if *ok { "ok" } else { "failed" };
            out.push_str(&format!(
                "berth_proxy_deploys_total{{service=\"{service}\",outcome=\"{outcome}\"}} {count}\n"
            ));
        }
        out.push_str("# HELP berth_proxy_deploy_seconds_total Time spent in deploys, by outcome.\n");
        out.push_str("# TYPE berth_proxy_deploy_seconds_total counter\n");
        for ((service, ok), (_, seconds)) in &totals {
            let outcome = if *ok { "ok" } else { "failed" };
            out.push_str(&format!(
                "berth_proxy_deploy_seconds_total{{service=\"{service}\",outcome=\"{outcome}\"}} {seconds}\n"
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_convert() {
        assert!(now_rfc3339().ends_with('Z'));
    }

    #[test]
    fn metrics_render_counts_histograms_and_in_flight() {
        let metrics = Metrics::new(1);
        metrics.request_started(1);
        metrics.request_started(1);
        metrics.request_finished(1, method_index(&http::Method::GET), 200, Duration::from_millis(3));
        metrics.publish();
        let text = metrics.render(&HashMap::from([(1, "app".to_string())]));
        assert!(
            text.contains("kamal_proxy_http_requests_total{method=\"GET\",service=\"app\",status=\"200\"} 1"),
            "{text}"
        );
        assert!(text.contains("le=\"0.005\"} 1"), "{text}");
        assert!(text.contains("kamal_proxy_http_in_flight_requests{service=\"app\"} 1"), "{text}");
    }
}
