//! The test bench: real hosts (own sshd + own dockerd per network namespace) and a real registry, on this machine.
//!
//! `Bench::start(n)` installs what is missing (`tests/bench/install-deps.sh`), stands up a bench of `n` hosts with
//! `tests/bench/bench.sh up`, and tears it all down with `bench.sh down` when the `Bench` is dropped — also when
//! the test panics. Each bench has a name of its own (from the process id and a counter), so tests run in parallel.
//! The test app (`tests/app`) is built once per test process and pushed with [`Bench::push_test_app`].
//!
//! The bench needs root and network namespaces; without them it fails loudly (tests are never skipped).

// Not every test uses every helper.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// One host of a bench.
#[derive(Clone, Debug)]
pub struct Host {
    /// 1-based, as in `bench.sh` (`h1`, `h2`, ...).
    pub index: usize,
    pub ip: String,
    /// The host's own hostname (its UTS namespace), also the name its Docker engine reports.
    pub hostname: String,
    /// Its network namespace, under /run/netns.
    pub netns: String,
    /// Its engine, for root on this machine (`unix:///run/berth-bench/NAME/hI/docker.sock`); over SSH, `docker`
    /// talks to it already (sshd sets DOCKER_HOST).
    pub docker_host: String,
    /// The deploy user's home directory on that host, as seen from this machine.
    pub home: PathBuf,
    pub sshd_pid: u32,
    pub dockerd_pid: u32,
}

/// The bench's registry: plain HTTP, htpasswd (bcrypt) auth; every host's engine trusts it as insecure.
#[derive(Clone, Debug)]
pub struct Registry {
    /// `ip:port`
    pub addr: String,
    pub user: String,
    /// The password, in a file (mode 0600) so it need not go through argv.
    pub password_file: PathBuf,
}

impl Registry {
    pub fn password(&self) -> String {
        std::fs::read_to_string(&self.password_file).expect("reading the registry password").trim().to_string()
    }
}

/// A running bench; dropping it removes everything it made.
pub struct Bench {
    name: String,
    description: BTreeMap<String, String>,
    hosts: Vec<Host>,
    registry: Registry,
    ssh_user: String,
    ssh_key: PathBuf,
    known_hosts: PathBuf,
    state_dir: PathBuf,
    /// `bench.sh up` in attached mode: it stays the parent of the bench's processes until `down`.
    up: Option<Child>,
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// `tests/bench/bench.sh`
pub fn bench_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bench/bench.sh")
}

fn base36(mut n: u64, width: usize) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    while n > 0 {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
    }
    while out.len() < width {
        out.push(b'0');
    }
    out.reverse();
    String::from_utf8(out).unwrap()
}

/// A bench name no other running test process uses: `t` + process id (5 base-36 digits) + counter (2).
fn unique_name() -> String {
    let n = NEXT.fetch_add(1, Ordering::SeqCst) as u64;
    format!("t{}{}", base36(u64::from(std::process::id()), 5), base36(n % (36 * 36), 2))
}

fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// Root, network namespaces, and the bench's Debian packages (installed once per process when missing); then
/// removes the benches of test processes that died without tearing theirs down.
fn prerequisites() {
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    let ready = READY.get_or_init(|| {
        if effective_uid() != Some(0) {
            return Err("the test bench needs root (network namespaces, sshd, dockerd): run the tests as root".into());
        }
        if !Path::new("/proc/self/ns/net").exists() {
            return Err("the test bench needs network namespaces, which this kernel does not offer".into());
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bench/install-deps.sh");
        let out = Command::new("bash").arg(&script).output().map_err(|e| format!("running {script:?}: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "{} failed ({}):\n{}{}",
                script.display(),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        // Benches of test processes that were killed before they could tear them down.
        let out = Command::new("bash").arg(bench_script()).arg("reap").output().map_err(|e| format!("reap: {e}"))?;
        if !out.status.success() {
            return Err(format!("bench.sh reap failed: {}", String::from_utf8_lossy(&out.stderr)));
        }
        Ok(())
    });
    if let Err(e) = ready {
        panic!("{e}");
    }
}

/// The statically linked test app (`tests/app`), built once per test process.
pub fn test_app_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let target_dir = root.join("target/testapp");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let out = Command::new(cargo)
            .args(["build", "--release", "--quiet", "--target", "x86_64-unknown-linux-gnu", "--manifest-path"])
            .arg(root.join("tests/app/Cargo.toml"))
            .arg("--target-dir")
            .arg(&target_dir)
            .env("RUSTFLAGS", "-C target-feature=+crt-static")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .env_remove("CARGO_TARGET_DIR")
            .output()
            .expect("running cargo to build the test app");
        assert!(out.status.success(), "building the test app failed:\n{}", String::from_utf8_lossy(&out.stderr));
        let binary = target_dir.join("x86_64-unknown-linux-gnu/release/berth-test-app");
        assert!(binary.is_file(), "cargo built the test app but {} is missing", binary.display());
        binary
    })
}

fn parse_description(text: &str) -> BTreeMap<String, String> {
    text.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.trim().to_string(), v.trim().to_string())).collect()
}

impl Bench {
    /// Stands up a bench of `n_hosts` hosts and its registry; panics with the reason if it cannot.
    pub fn start(n_hosts: usize) -> Bench {
        Self::try_start_with_env(n_hosts, &[]).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`Bench::start`], with extra environment for `bench.sh up` (e.g. `BENCH_TIMEOUT`). On failure,
    /// whatever `up` left is removed with `bench.sh down` before the error is returned.
    pub fn try_start_with_env(n_hosts: usize, env: &[(&str, &str)]) -> Result<Bench, String> {
        prerequisites();
        let name = unique_name();
        let started = Instant::now();
        let mut child = Command::new("bash")
            .arg(bench_script())
            .args(["up", &name, &n_hosts.to_string()])
            .env("BENCH_ATTACH", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("running {}: {e}", bench_script().display()))?;
        let mut stderr = child.stderr.take().unwrap();
        let stderr_reader = thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        // In attached mode `up` closes its output once the bench is ready, and stays running until `down`.
        let mut stdout = String::new();
        let _ = child.stdout.take().unwrap().read_to_string(&mut stdout);
        let stderr = stderr_reader.join().unwrap_or_default();
        let description = parse_description(&stdout);

        if description.get("BENCH_NAME") != Some(&name) {
            let status = child.wait().map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
            let down = run_down(&name);
            return Err(format!(
                "bench {name} ({n_hosts} hosts) did not come up ({status}):\n{stderr}{}",
                down.err().map(|e| format!("\nand cleaning up after it failed too: {e}")).unwrap_or_default()
            ));
        }
        let bench = Self::from_description(name, description, child);
        eprintln!("bench {}: {n_hosts} hosts up in {:.2?}", bench.name, started.elapsed());
        Ok(bench)
    }

    fn from_description(name: String, d: BTreeMap<String, String>, up: Child) -> Bench {
        let get = |k: &str| d.get(k).cloned().unwrap_or_else(|| panic!("bench description lacks {k}"));
        let n: usize = get("BENCH_HOSTS").parse().expect("BENCH_HOSTS");
        let hosts = (1..=n)
            .map(|i| {
                let h = |k: &str| get(&format!("BENCH_HOST_{i}_{k}"));
                Host {
                    index: i,
                    ip: h("IP"),
                    hostname: h("HOSTNAME"),
                    netns: h("NETNS"),
                    docker_host: h("DOCKER_HOST"),
                    home: PathBuf::from(h("HOME")),
                    sshd_pid: h("SSHD_PID").parse().expect("SSHD_PID"),
                    dockerd_pid: h("DOCKERD_PID").parse().expect("DOCKERD_PID"),
                }
            })
            .collect();
        Bench {
            registry: Registry {
                addr: get("BENCH_REGISTRY"),
                user: get("BENCH_REGISTRY_USER"),
                password_file: PathBuf::from(get("BENCH_REGISTRY_PASSWORD_FILE")),
            },
            ssh_user: get("BENCH_SSH_USER"),
            ssh_key: PathBuf::from(get("BENCH_SSH_KEY")),
            known_hosts: PathBuf::from(get("BENCH_KNOWN_HOSTS")),
            state_dir: PathBuf::from(get("BENCH_STATE_DIR")),
            hosts,
            name,
            description: d,
            up: Some(up),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Everything `bench.sh up` printed, KEY=VALUE.
    pub fn description(&self) -> &BTreeMap<String, String> {
        &self.description
    }

    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// Host `index`, 1-based.
    pub fn host(&self, index: usize) -> &Host {
        &self.hosts[index - 1]
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn ssh_user(&self) -> &str {
        &self.ssh_user
    }

    /// The deploy user's private key (the bench's own).
    pub fn ssh_key(&self) -> &Path {
        &self.ssh_key
    }

    /// A known_hosts file with every host's key, by IP.
    pub fn known_hosts(&self) -> &Path {
        &self.known_hosts
    }

    /// Where the bench keeps its keys, configs, sockets and logs (`/run/berth-bench/NAME`).
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// OpenSSH client options that reach the bench's hosts: the bench's key and known_hosts, strict checking.
    pub fn ssh_options(&self) -> Vec<String> {
        vec![
            "-F".into(),
            "none".into(),
            "-o".into(),
            "BatchMode=yes".into(),
            "-o".into(),
            "StrictHostKeyChecking=yes".into(),
            "-o".into(),
            format!("UserKnownHostsFile={}", self.known_hosts.display()),
            "-o".into(),
            "IdentitiesOnly=yes".into(),
            "-o".into(),
            "ConnectTimeout=10".into(),
            "-o".into(),
            "LogLevel=ERROR".into(),
            "-i".into(),
            self.ssh_key.display().to_string(),
        ]
    }

    /// Runs `command` on `host` over SSH, as the deploy user (the OpenSSH client, strict host key checking).
    pub fn ssh(&self, host: &Host, command: &str) -> Output {
        self.ssh_with_stdin(host, command, b"")
    }

    /// Like [`Bench::ssh`], feeding `stdin` to the command (e.g. a password for `--password-stdin`).
    pub fn ssh_with_stdin(&self, host: &Host, command: &str, stdin: &[u8]) -> Output {
        let mut child = Command::new("ssh")
            .args(self.ssh_options())
            .arg(format!("{}@{}", self.ssh_user, host.ip))
            .arg(command)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running ssh");
        let mut pipe = child.stdin.take().unwrap();
        let input = stdin.to_vec();
        let writer = thread::spawn(move || {
            let _ = pipe.write_all(&input);
        });
        let out = child.wait_with_output().expect("waiting for ssh");
        let _ = writer.join();
        out
    }

    /// Runs `command` on `host` over SSH and returns its trimmed stdout; panics (with stderr) if it fails.
    pub fn ssh_ok(&self, host: &Host, command: &str) -> String {
        let out = self.ssh(host, command);
        assert!(
            out.status.success(),
            "`{command}` on {} ({}) failed ({}):\nstdout: {}\nstderr: {}",
            host.hostname,
            host.ip,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// `docker login` to the bench's registry on `host`, over SSH, the password on stdin.
    pub fn docker_login(&self, host: &Host) {
        let command = format!("docker login {} -u {} --password-stdin", self.registry.addr, self.registry.user);
        let out = self.ssh_with_stdin(host, &command, self.registry.password().as_bytes());
        assert!(
            out.status.success(),
            "docker login on {} failed: {}",
            host.hostname,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs the docker CLI as root against `host`'s engine directly (no SSH), with the bench's own client config.
    pub fn docker(&self, host: &Host, args: &[&str]) -> Output {
        Command::new("docker")
            .args(args)
            .env("DOCKER_HOST", &host.docker_host)
            .env("DOCKER_CONFIG", self.state_dir.join("docker-config"))
            .stdin(Stdio::null())
            .output()
            .expect("running docker")
    }

    /// Builds the test app image for `version` (it answers `version=VERSION ...` on `/`), pushes it to the
    /// bench's registry and returns its reference, `REGISTRY/berth-test-app:VERSION`. No host keeps a copy.
    pub fn push_test_app(&self, version: &str) -> String {
        self.push_test_app_with(version, &[])
    }

    /// [`Bench::push_test_app`] with Dockerfile build args, e.g. `("SERVICE", "app")` for the `service` label
    /// Kamal checks, or `("UP_FAIL_HOST", ip)` for a version whose `/up` fails on that one host.
    pub fn push_test_app_with(&self, version: &str, build_args: &[(&str, &str)]) -> String {
        let binary = test_app_binary();
        let build_args: Vec<String> = build_args.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let out = Command::new("bash")
            .arg(bench_script())
            .args(["push-app", &self.name, version])
            .arg(binary)
            .env("BENCH_APP_BUILD_ARGS", build_args.join(" "))
            .stdin(Stdio::null())
            .output()
            .expect("running bench.sh push-app");
        assert!(
            out.status.success(),
            "pushing the test app {version} to bench {} failed:\n{}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        stdout.lines().last().unwrap_or_default().trim().to_string()
    }

    /// Polls `check` until it returns `Some`, or panics after `timeout` saying what was awaited.
    pub fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = check() {
                return v;
            }
            assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
            thread::sleep(Duration::from_millis(50));
        }
    }
}

fn run_down(name: &str) -> Result<(), String> {
    let out = Command::new("bash")
        .arg(bench_script())
        .args(["down", name])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running bench.sh down {name}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("bench.sh down {name} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr)))
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        let result = run_down(&self.name);
        // `up` exits once the keeper did, i.e. right after `down`; reap it.
        if let Some(mut up) = self.up.take() {
            let deadline = Instant::now() + Duration::from_secs(30);
            while matches!(up.try_wait(), Ok(None)) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(20));
            }
            if matches!(up.try_wait(), Ok(None)) {
                let _ = up.kill();
                let _ = up.wait();
            }
        }
        if let Err(e) = result {
            if thread::panicking() {
                eprintln!("{e}");
            } else {
                panic!("{e}");
            }
        }
    }
}

/// What is left on this machine of bench `name` (empty once it is down): namespaces, links, firewall rules,
/// cgroups, directories, processes.
pub fn leftovers(name: &str) -> Vec<String> {
    let mut left = Vec::new();
    let prefix = format!("berth-{name}-");
    if let Ok(entries) = std::fs::read_dir("/run/netns") {
        for e in entries.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with(&prefix) {
                left.push(format!("network namespace {n}"));
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir("/sys/class/net") {
        for e in entries.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n == format!("bb-{name}") || n.starts_with(&format!("bv-{name}-")) {
                left.push(format!("network interface {n}"));
            }
        }
    }
    if let Ok(out) = Command::new("iptables").args(["-w", "-S", "FORWARD"]).output() {
        let rule = format!("berth-bench:{name}");
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if line.split_whitespace().any(|w| w.trim_matches('"') == rule) {
                left.push(format!("iptables rule {line}"));
            }
        }
    }
    for dir in [format!("/run/berth-bench/{name}"), format!("/var/lib/berth-bench/{name}")] {
        if Path::new(&dir).exists() {
            left.push(format!("directory {dir}"));
        }
    }
    if let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") {
        let cgroup = format!("berth-{name}-h");
        for h in hierarchies.flatten() {
            let path = h.path();
            let candidates = std::iter::once(path.clone()).chain(
                std::fs::read_dir(&path).into_iter().flatten().flatten().map(|e| e.path()).filter(|p| p.is_dir()),
            );
            for p in candidates {
                if p.file_name().is_some_and(|f| f.to_string_lossy().starts_with(&cgroup)) {
                    left.push(format!("cgroup {}", p.display()));
                }
            }
        }
    }
    let markers = [format!("berth-bench/{name}/"), format!("_keeper {name} "), format!("bench.sh up {name} ")];
    if let Ok(procs) = std::fs::read_dir("/proc") {
        for p in procs.flatten() {
            let pid = p.file_name().to_string_lossy().into_owned();
            if !pid.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let Ok(raw) = std::fs::read(p.path().join("cmdline")) else { continue };
            let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
            let in_cgroup =
                std::fs::read_to_string(p.path().join("cgroup")).is_ok_and(|c| c.contains(&format!("/berth-{name}-h")));
            if in_cgroup || markers.iter().any(|m| cmdline.contains(m.as_str())) {
                // The state (Z: exited, not yet reaped) tells a leak from a process on its way out.
                let state = std::fs::read_to_string(p.path().join("stat"))
                    .ok()
                    .and_then(|stat| {
                        stat.rsplit_once(") ").and_then(|(_, rest)| rest.split(' ').next().map(str::to_string))
                    })
                    .unwrap_or_default();
                left.push(format!("process {pid} (state {state}): {}", cmdline.trim()));
            }
        }
    }
    left
}
