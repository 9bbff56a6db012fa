//! A local HTTP server standing in for GitHub's API, Slack and notification receivers: it records every
//! request (method, path, headers, body) and answers what the test scripted per path prefix (200 otherwise).
//! Plain threads, so sync and async tests can use it alike; it stops when dropped.

// Not every test uses every helper.
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A request as received.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    /// Lower-case names.
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
    /// What it was answered.
    pub status: u16,
}

impl Recorded {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text()))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

#[derive(Default)]
struct Shared {
    requests: Mutex<Vec<Recorded>>,
    /// Path prefix → statuses to answer, in turn (then 200).
    script: Mutex<Vec<(String, VecDeque<u16>)>>,
    stop: AtomicBool,
}

pub struct Recorder {
    pub address: String,
    shared: Arc<Shared>,
}

impl Recorder {
    pub fn start() -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap().to_string();
        listener.set_nonblocking(true).unwrap();
        let shared = Arc::new(Shared::default());
        let serving = Arc::clone(&shared);
        std::thread::spawn(move || {
            while !serving.stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let shared = Arc::clone(&serving);
                        std::thread::spawn(move || {
                            let _ = answer(stream, &shared);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Recorder { address, shared }
    }

    /// `http://ADDRESS`.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// The next requests whose path starts with `prefix` are answered `statuses`, in turn.
    pub fn script(&self, prefix: &str, statuses: &[u16]) {
        self.shared.script.lock().unwrap().push((prefix.to_string(), statuses.iter().copied().collect()));
    }

    /// Every request so far whose path starts with `prefix`, in arrival order.
    pub fn requests(&self, prefix: &str) -> Vec<Recorded> {
        self.shared.requests.lock().unwrap().iter().filter(|r| r.path.starts_with(prefix)).cloned().collect()
    }

    /// Waits (up to `timeout`) until `prefix` has received `count` requests; returns them.
    pub fn wait_for(&self, prefix: &str, count: usize, timeout: Duration) -> Vec<Recorded> {
        let deadline = Instant::now() + timeout;
        loop {
            let requests = self.requests(prefix);
            if requests.len() >= count {
                return requests;
            }
            assert!(
                Instant::now() < deadline,
                "{prefix} received {} of {count} requests in {timeout:?}: {:#?}",
                requests.len(),
                requests.iter().map(|r| (&r.path, r.status, r.text())).collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
    }
}

fn answer(stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or_default().to_string(), parts.next().unwrap_or_default().to_string());
    let mut headers = HashMap::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
        }
    }
    let length: usize = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    let status = {
        let mut script = shared.script.lock().unwrap();
        script
            .iter_mut()
            .find(|(prefix, statuses)| path.starts_with(prefix.as_str()) && !statuses.is_empty())
            .and_then(|(_, statuses)| statuses.pop_front())
            .unwrap_or(200)
    };
    // GitHub answers a created deployment with its id.
    let reply = if path.ends_with("/deployments") { r#"{"id": 4242}"# } else { "{}" };
    shared.requests.lock().unwrap().push(Recorded { method, path, headers, body, status });
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{reply}",
        reply.len()
    )?;
    stream.flush()
}
