//! A tiny HTTP/1.1 client for tests (one request per connection), and a load loop that keeps requests flowing
//! while a deploy runs and counts every failure.

// Not every test uses every helper.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// An answer: status code and body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

/// `GET path` on `addr` (`ip:port`) with `Host: host`, reading the whole answer (`Connection: close`).
pub fn get(addr: &str, path: &str) -> std::io::Result<Answer> {
    request(addr, "GET", path, &[], Duration::from_secs(10))
}

/// One request with extra headers and a timeout for the whole exchange.
pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> std::io::Result<Answer> {
    let socket: SocketAddr = addr.parse().map_err(|e| std::io::Error::other(format!("{addr}: {e}")))?;
    let mut stream = TcpStream::connect_timeout(&socket, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP answer: {head:?}")))?;
    let chunked = head.to_ascii_lowercase().contains("transfer-encoding: chunked");
    let body = if chunked { dechunk(body) } else { body.to_string() };
    Ok(Answer { status, body })
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else { break };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// Requests sent in a loop to some URLs until stopped; every answer that is not a 200 is a failure.
pub struct LoadLoop {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    results: Arc<Mutex<LoadResults>>,
}

#[derive(Clone, Debug, Default)]
pub struct LoadResults {
    pub ok: usize,
    pub failures: Vec<String>,
    /// Bodies seen (first 40 characters), to tell versions apart.
    pub bodies: std::collections::BTreeMap<String, usize>,
}

impl LoadLoop {
    /// `workers` threads per address, each sending `GET path` one after another.
    pub fn start(addrs: &[String], path: &str, workers: usize) -> LoadLoop {
        let stop = Arc::new(AtomicBool::new(false));
        let results = Arc::new(Mutex::new(LoadResults::default()));
        let mut threads = Vec::new();
        for addr in addrs {
            for _ in 0..workers {
                let (stop, results, addr, path) = (stop.clone(), results.clone(), addr.clone(), path.to_string());
                threads.push(thread::spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        let started = Instant::now();
                        let answer = request(&addr, "GET", &path, &[], Duration::from_secs(30));
                        let mut results = results.lock().unwrap();
                        match answer {
                            Ok(answer) if answer.status == 200 => {
                                results.ok += 1;
                                let key: String = answer.body.chars().take(40).collect();
                                *results.bodies.entry(key).or_default() += 1;
                            }
                            Ok(answer) => results.failures.push(format!(
                                "{addr}{path}: HTTP {} after {:?}: {}",
                                answer.status,
                                started.elapsed(),
                                answer.body.chars().take(200).collect::<String>()
                            )),
                            Err(err) => {
                                results.failures.push(format!("{addr}{path}: {err} after {:?}", started.elapsed()))
                            }
                        }
                    }
                }));
            }
        }
        LoadLoop { stop, threads, results }
    }

    /// How many answers so far.
    pub fn count(&self) -> usize {
        let results = self.results.lock().unwrap();
        results.ok + results.failures.len()
    }

    pub fn finish(self) -> LoadResults {
        self.stop.store(true, Ordering::SeqCst);
        for thread in self.threads {
            let _ = thread.join();
        }
        self.results.lock().unwrap().clone()
    }
}
