//! A headless Chromium for tests, driven over the W3C WebDriver protocol: `chromedriver` on a free loopback
//! port (Debian's `chromium` + `chromium-driver`), one session with a phone-sized window, JSON over HTTP/1.1
//! with a client of a few lines. Waits poll the page until a deadline (never fixed sleeps); on drop the
//! session is ended and chromedriver and every Chromium process of the session are killed by their PID, also
//! after a failed test.

// Not every test uses every helper.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};

/// The key of an element reference in WebDriver's JSON.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A WebDriver session in a headless Chromium, with its chromedriver.
pub struct Browser {
    driver: Option<Child>,
    port: u16,
    session: Option<String>,
    /// Chromium's profile: also how its processes are found to be killed.
    profile: tempfile::TempDir,
    /// Where screenshots go (and one is taken when a wait times out).
    artifacts: PathBuf,
}

/// A WebDriver error: its `error` code and message.
#[derive(Debug)]
pub struct WebDriverError {
    pub status: u16,
    pub error: String,
    pub message: String,
}

impl Browser {
    /// Starts chromedriver on a free port, waits for its `/status`, and opens a session; screenshots go to
    /// `artifacts`.
    pub fn start(artifacts: &Path) -> Browser {
        std::fs::create_dir_all(artifacts).unwrap();
        // A free port: bound by the system, released, then given to chromedriver.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let log = std::fs::File::create(artifacts.join("chromedriver.log")).unwrap();
        let driver = Command::new("chromedriver")
            .args([format!("--port={port}"), "--allowed-ips=127.0.0.1".to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            // Its own process group: nothing of it gets the test runner's signals.
            .process_group(0)
            .spawn()
            .expect("running chromedriver (install Debian's chromium and chromium-driver: scripts/test.sh does)");
        let profile = tempfile::tempdir().unwrap();
        let mut browser =
            Browser { driver: Some(driver), port, session: None, profile, artifacts: artifacts.to_path_buf() };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match browser.call("GET", "/status", None) {
                Ok(status) if status["ready"] == true => break,
                _ if Instant::now() > deadline => panic!("chromedriver did not answer /status on port {port}"),
                _ => thread::sleep(Duration::from_millis(50)),
            }
        }
        let binary = ["/usr/lib/chromium/chromium", "/usr/bin/chromium"]
            .into_iter()
            .find(|path| Path::new(path).exists())
            .expect("chromium is installed");
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "pageLoadStrategy": "normal",
            "goog:chromeOptions": {
                "binary": binary,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--window-size=412,915", "--no-first-run", "--no-default-browser-check",
                    format!("--user-data-dir={}", browser.profile.path().display()),
                ],
            },
        }}});
        let session = browser.call("POST", "/session", Some(capabilities)).unwrap_or_else(|e| panic!("{e:?}"));
        browser.session = Some(session["sessionId"].as_str().expect("a session id").to_string());
        browser
    }

    /// One WebDriver command: its `value`, or the error it answered with.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, WebDriverError> {
        let failed = |message: String| WebDriverError { status: 0, error: "transport".into(), message };
        let body = body.map(|body| body.to_string()).unwrap_or_default();
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).map_err(|e| failed(e.to_string()))?;
        stream.set_read_timeout(Some(Duration::from_secs(90))).map_err(|e| failed(e.to_string()))?;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\
             Content-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\n\r\n",
            self.port,
            body.len()
        );
        stream
            .write_all(head.as_bytes())
            .and_then(|()| stream.write_all(body.as_bytes()))
            .map_err(|e| failed(e.to_string()))?;
        let (head, body) = read_answer(&mut stream).map_err(|e| failed(e.to_string()))?;
        let status: u16 = head.split_whitespace().nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
        let answer: Value = serde_json::from_str(&body).map_err(|e| failed(format!("{e}: {body}")))?;
        let value = answer["value"].clone();
        if status == 200 {
            Ok(value)
        } else {
            Err(WebDriverError {
                status,
                error: value["error"].as_str().unwrap_or_default().to_string(),
                message: value["message"].as_str().unwrap_or_default().to_string(),
            })
        }
    }

    /// A command of the session, which must succeed.
    fn command(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let session = self.session.as_deref().expect("a session");
        self.call(method, &format!("/session/{session}{path}"), body)
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {e:?}"))
    }

    /// Opens `url` and waits for it to load.
    pub fn goto(&self, url: &str) {
        self.command("POST", "/url", Some(json!({ "url": url })));
    }

    pub fn url(&self) -> String {
        self.command("GET", "/url", None).as_str().unwrap_or_default().to_string()
    }

    /// The first element matching a CSS selector, if any.
    pub fn find(&self, css: &str) -> Option<String> {
        let session = self.session.as_deref().expect("a session");
        let body = json!({ "using": "css selector", "value": css });
        match self.call("POST", &format!("/session/{session}/element"), Some(body)) {
            Ok(element) => element[ELEMENT].as_str().map(str::to_string),
            Err(error) if error.error == "no such element" => None,
            Err(error) => panic!("finding {css}: {error:?}"),
        }
    }

    fn element(&self, css: &str) -> String {
        self.find(css).unwrap_or_else(|| panic!("no element {css} on {}", self.url()))
    }

    /// Clicks the element (as a person would: scrolled into view, a real click).
    pub fn click(&self, css: &str) {
        self.on_element(css, &[("click", json!({}))]);
    }

    /// Types `text` into a field, replacing what it held.
    pub fn fill(&self, css: &str, text: &str) {
        self.on_element(css, &[("clear", json!({})), ("value", json!({ "text": text }))]);
    }

    /// Sends element commands to the element `css` finds. The page's script re-renders parts of the page
    /// while it polls, so an element found a moment ago can be gone (stale) or briefly covered: then it is
    /// found again and the commands retried, for up to 10 s.
    fn on_element(&self, css: &str, commands: &[(&str, Value)]) {
        let session = self.session.as_deref().expect("a session");
        let deadline = Instant::now() + Duration::from_secs(10);
        'again: loop {
            let element = self.element(css);
            for (command, body) in commands {
                let path = format!("/session/{session}/element/{element}/{command}");
                match self.call("POST", &path, Some(body.clone())) {
                    Ok(_) => {}
                    Err(error)
                        if Instant::now() < deadline
                            && ["stale element reference", "element click intercepted", "element not interactable"]
                                .contains(&error.error.as_str()) =>
                    {
                        thread::sleep(Duration::from_millis(100));
                        continue 'again;
                    }
                    Err(error) => panic!("WebDriver {command} on {css}: {error:?}"),
                }
            }
            return;
        }
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page and returns what it returns.
    pub fn script(&self, script: &str, args: Vec<Value>) -> Value {
        self.command("POST", "/execute/sync", Some(json!({ "script": script, "args": args })))
    }

    /// Runs `script` in the page; it calls `arguments[arguments.length - 1]` with its result.
    pub fn script_async(&self, script: &str, args: Vec<Value>) -> Value {
        self.command("POST", "/execute/async", Some(json!({ "script": script, "args": args })))
    }

    /// The text of the first element matching `css`, if there is one.
    pub fn text(&self, css: &str) -> Option<String> {
        let found = self.script(
            "const e = document.querySelector(arguments[0]); return e ? e.textContent : null;",
            vec![json!(css)],
        );
        found.as_str().map(str::to_string)
    }

    /// Polls `check` every 100 ms until it returns `Some`; after `timeout`, saves a screenshot
    /// (`timeout-WHAT.png`) and fails saying what was awaited, where the page was and what it showed.
    pub fn wait_for<T>(&self, what: &str, timeout: Duration, mut check: impl FnMut(&Browser) -> Option<T>) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(value) = check(self) {
                return value;
            }
            if Instant::now() > deadline {
                let name: String =
                    what.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).take(60).collect();
                self.screenshot(&format!("timeout-{name}"));
                let shown = self.text("body").unwrap_or_default();
                panic!("timed out after {timeout:?} waiting for {what} on {}:\n{shown}", self.url());
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Saves a PNG of the viewport as `NAME.png` in the artifacts directory.
    pub fn screenshot(&self, name: &str) -> PathBuf {
        let data = self.command("GET", "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD.decode(data.as_str().unwrap_or_default()).unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        let path = self.artifacts.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }

    /// The PIDs of the session's Chromium processes (their command lines name its profile).
    fn chromium_pids(&self) -> Vec<u32> {
        let marker = format!("--user-data-dir={}", self.profile.path().display());
        let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
        entries
            .flatten()
            .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).split('\0').any(|arg| arg == marker))
            })
            .collect()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(session) = self.session.take() {
            let _ = self.call("DELETE", &format!("/session/{session}"), None);
        }
        let chromium = self.chromium_pids();
        if let Some(mut driver) = self.driver.take() {
            let _ = driver.kill();
            let _ = driver.wait();
        }
        for pid in chromium {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).stderr(Stdio::null()).status();
        }
    }
}

/// One HTTP/1.1 answer: its head and its body (chromedriver keeps the connection open after it, whatever
/// `Connection: close` asks, so the body is read by its length or its chunks, not to the end).
fn read_answer(stream: &mut TcpStream) -> std::io::Result<(String, String)> {
    let mut raw = Vec::new();
    let mut buffer = [0u8; 16 * 1024];
    loop {
        if let Some(end) = raw.windows(4).position(|window| window == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
            let body = &raw[end + 4..];
            let length = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .and_then(|value| value.trim().parse::<usize>().ok());
            if let Some(length) = length
                && body.len() >= length
            {
                return Ok((head, String::from_utf8_lossy(&body[..length]).into_owned()));
            }
            if head.contains("transfer-encoding: chunked") && body.ends_with(b"0\r\n\r\n") {
                return Ok((head, dechunk(&String::from_utf8_lossy(body))));
            }
        }
        let read = stream.read(&mut buffer)?;
        if read == 0 {
            let text = String::from_utf8_lossy(&raw).into_owned();
            let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
            return Ok((head.to_string(), body.to_string()));
        }
        raw.extend_from_slice(&buffer[..read]);
    }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}
