//! The SSH executor against real sshd on the bench: output, stdin, one multiplexed connection per host, files
//! written privately, host keys verified, failures explained, reconnection, idle connections closed, jump
//! hosts, proxy commands, key data, the agent and its forwarding.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use berth::command::Cmd;
use berth::ssh::{
    CommandOutput, DiscardLines, HostKeyPolicy, JumpHost, LineSink, OutputStream, SshConfig, SshError, SshPool,
};

use crate::support::bench::{Bench, Host};

/// `printf "hello stdin" | sha256sum`
const HELLO_STDIN_SHA256: &str = "20ab830f43a24f85fe640313ec5cde6c8051aa83e3f46eab088621b9d66e302b";

/// Runs `future` on the tests' one runtime, which outlives each call: a pool's connections live on the runtime
/// that opened them, as they will in berth.
fn block_on<F: Future>(future: F) -> F::Output {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    let runtime = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a tokio runtime")
    });
    runtime.block_on(future)
}

/// The bench's user, key and known_hosts; no agent, no default key files.
fn bench_config(bench: &Bench) -> SshConfig {
    SshConfig {
        user: bench.ssh_user().into(),
        keys: vec![bench.ssh_key().to_path_buf()],
        keys_only: true,
        use_agent: false,
        known_hosts_files: vec![bench.known_hosts().to_path_buf()],
        connect_timeout: Duration::from_secs(5),
        ..SshConfig::default()
    }
}

fn sh(script: &str) -> Cmd {
    Cmd::raw_script(script)
}

/// Every line, with its host, stream and when it arrived.
#[derive(Default)]
struct RecordedLines(Mutex<Vec<(String, OutputStream, String, Instant)>>);

impl LineSink for RecordedLines {
    fn line(&self, host: &str, stream: OutputStream, line: &str) {
        self.0.lock().unwrap().push((host.into(), stream, line.into(), Instant::now()));
    }
}

impl RecordedLines {
    fn of(&self, stream: OutputStream) -> Vec<String> {
        self.0.lock().unwrap().iter().filter(|l| l.1 == stream).map(|l| l.2.clone()).collect()
    }

    fn arrival(&self, line: &str) -> Instant {
        self.0.lock().unwrap().iter().find(|l| l.2 == line).unwrap_or_else(|| panic!("no line {line:?}")).3
    }
}

/// How many connections `host`'s sshd has authenticated so far (its log says so, one line per connection).
fn accepted_connections(bench: &Bench, host: &Host) -> usize {
    let log = bench.state_dir().join(format!("h{}/sshd.log", host.index));
    std::fs::read_to_string(&log).unwrap_or_default().matches("Accepted publickey").count()
}

/// Live processes and their parents.
fn process_parents() -> Vec<(u32, u32)> {
    let mut processes = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        let after_name = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or_default();
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        if let (Some(state), Some(Ok(parent))) = (fields.first(), fields.get(1).map(|p| p.parse::<u32>()))
            && *state != "Z"
        {
            processes.push((pid, parent));
        }
    }
    processes
}

/// The per-connection sshd processes of `host` (children of its listening sshd: one per connection).
fn connection_processes(host: &Host) -> Vec<u32> {
    process_parents().into_iter().filter(|&(_, parent)| parent == host.sshd_pid).map(|(pid, _)| pid).collect()
}

/// `pid` and all its descendants, deepest first.
fn process_tree(pid: u32) -> Vec<u32> {
    let processes = process_parents();
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(processes.iter().filter(|&&(_, p)| p == parent).map(|&(child, _)| child));
        i += 1;
    }
    tree.reverse();
    tree
}

fn ok(result: Result<CommandOutput, SshError>) -> CommandOutput {
    let output = result.unwrap_or_else(|e| panic!("the command could not run: {e}"));
    assert!(output.success(), "the command failed ({}): {}", output.exit_status, output.stderr);
    output
}

#[test]
fn commands_run_with_output_status_stdin_and_streamed_lines_over_one_connection() {
    let bench = Bench::start(1);
    let host = bench.host(1);
    let pool = SshPool::new(bench_config(&bench));
    let before = accepted_connections(&bench, host);
    block_on(async {
        // What a connection and a command cost (printed for the record; run with --nocapture to see).
        let started = Instant::now();
        ok(pool.run(&host.ip, &sh("true"), &DiscardLines).await);
        let connecting = started.elapsed();
        let started = Instant::now();
        for _ in 0..10 {
            ok(pool.run(&host.ip, &sh("true"), &DiscardLines).await);
        }
        eprintln!(
            "first command (connect + auth + run): {connecting:?}; then per command: {:?}",
            started.elapsed() / 10
        );

        // Exit status, and stdout/stderr kept apart, each in order.
        let lines = RecordedLines::default();
        let script = "for i in 1 2 3; do echo out$i; echo err$i >&2; done; printf 'no newline'; exit 3";
        let output = pool.run(&host.ip, &sh(script), &lines).await.unwrap();
        assert_eq!(output.exit_status, 3);
        assert!(!output.success());
        assert_eq!(output.stdout, "out1\nout2\nout3\nno newline");
        assert_eq!(output.stderr, "err1\nerr2\nerr3\n");
        assert_eq!(lines.of(OutputStream::Stdout), ["out1", "out2", "out3", "no newline"]);
        assert_eq!(lines.of(OutputStream::Stderr), ["err1", "err2", "err3"]);
        assert!(lines.0.lock().unwrap().iter().all(|l| l.0 == host.ip), "lines name their host");

        // Lines arrive while the command runs, not at its end.
        let lines = RecordedLines::default();
        ok(pool.run(&host.ip, &sh("echo first; sleep 0.5; echo second"), &lines).await);
        let gap = lines.arrival("second").duration_since(lines.arrival("first"));
        assert!(gap >= Duration::from_millis(300), "the first line came {gap:?} before the second");

        // Stdin is delivered, then EOF (cat would wait forever otherwise).
        let cmd = Cmd::new("sha256sum").with_stdin(b"hello stdin".to_vec());
        let output = ok(pool.run(&host.ip, &cmd, &DiscardLines).await);
        assert_eq!(output.stdout, format!("{HELLO_STDIN_SHA256}  -\n"));
        let output = ok(pool.run(&host.ip, &Cmd::new("cat").with_stdin(b"a\nb".to_vec()), &DiscardLines).await);
        assert_eq!(output.stdout, "a\nb");
        let output = ok(pool.run(&host.ip, &Cmd::new("cat"), &DiscardLines).await);
        assert_eq!(output.stdout, "", "no stdin: EOF at once");

        // A stream on stdin: 8 MiB, not valid UTF-8, counted and hashed on the host.
        let payload: Vec<u8> = (0..8 * 1024 * 1024u32).map(|i| (i.wrapping_mul(2654435761) >> 24) as u8).collect();
        let expected = format!("{}", payload.len());
        let output = pool
            .run_with_stdin_stream(&host.ip, &sh("wc -c"), std::io::Cursor::new(payload), &DiscardLines)
            .await
            .unwrap();
        assert_eq!(output.stdout.trim(), expected);

        // 50 commands at once, all over the one connection.
        let started = Instant::now();
        let runs = (0..50).map(|i| {
            let pool = pool.clone();
            let ip = host.ip.clone();
            async move { pool.run(&ip, &sh(&format!("sleep 0.2; echo {i}")), &DiscardLines).await }
        });
        let outputs = futures_util::future::join_all(runs).await;
        for (i, output) in outputs.into_iter().enumerate() {
            assert_eq!(ok(output).stdout, format!("{i}\n"));
        }
        let elapsed = started.elapsed();
        assert!(elapsed < Duration::from_secs(5), "50 × 0.2 s commands took {elapsed:?}: not run concurrently");
    });
    assert_eq!(accepted_connections(&bench, host) - before, 1, "every command went over one SSH connection");
    assert_eq!(connection_processes(host).len(), 1, "one sshd session process for berth's connection");
    block_on(pool.close());
    Bench::wait_for("sshd to see the connection closed", Duration::from_secs(10), || {
        connection_processes(host).is_empty().then_some(())
    });
}

#[test]
fn hosts_run_in_parallel_each_over_its_own_connection_and_a_unix_socket_reaches_the_engine() {
    let bench = Bench::start(3);
    let pool = SshPool::new(bench_config(&bench));
    block_on(async {
        let runs = bench.hosts().iter().map(|host| {
            let pool = pool.clone();
            async move { pool.run(&host.ip, &sh("hostname"), &DiscardLines).await }
        });
        let outputs = futures_util::future::join_all(runs).await;
        for (host, output) in bench.hosts().iter().zip(outputs) {
            assert_eq!(ok(output).stdout.trim(), host.hostname);
        }

        // The Docker Engine API of host 2, through its SSH connection.
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let host = bench.host(2);
        let socket = host.docker_host.strip_prefix("unix://").unwrap();
        let mut stream = pool.open_unix_socket(&host.ip, socket).await.unwrap();
        stream.write_all(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n").await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        assert!(response.starts_with("HTTP/1.0 200") && response.ends_with("OK"), "{response}");
    });
    for host in bench.hosts() {
        assert_eq!(connection_processes(host).len(), 1, "one connection to {}", host.hostname);
    }
}

#[test]
fn files_are_written_exactly_private_from_the_start_and_never_through_a_command_line() {
    let bench = Bench::start(1);
    let host = bench.host(1);
    let pool = SshPool::new(bench_config(&bench));
    let marker = "BERTH_SECRET_MARKER_7f3a";
    // Large enough that the write is seen in progress.
    let mut contents = format!("TOKEN={marker}\n").into_bytes();
    contents.extend(std::iter::repeat_n(b'x', 64 * 1024 * 1024));
    contents.extend(b"\nend\n");

    let path = ".kamal/apps/app/env/roles/web.env";
    let on_host = host.home.join(path);
    let seen_in_progress = std::thread::scope(|scope| {
        let watcher = scope.spawn(|| {
            // While berth writes: no process's command line has the secret; the temporary file is 0600.
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut seen_in_progress = false;
            while Instant::now() < deadline && !on_host.exists() {
                for entry in std::fs::read_dir("/proc").unwrap().flatten() {
                    let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
                    let cmdline = String::from_utf8_lossy(&cmdline);
                    assert!(!cmdline.contains(marker), "the secret is in a command line: {cmdline}");
                }
                let dir = on_host.parent().unwrap();
                for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if name.starts_with("web.env.berth-tmp-") {
                        use std::os::unix::fs::PermissionsExt;
                        if let Ok(meta) = entry.metadata() {
                            assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{name} while being written");
                            seen_in_progress = true;
                        }
                    }
                }
            }
            seen_in_progress
        });
        block_on(pool.write_file(&host.ip, path, &contents, 0o600)).unwrap();
        watcher.join().unwrap()
    });
    assert!(seen_in_progress, "the watcher saw the temporary file being written");

    assert_eq!(bench.ssh_ok(host, &format!("stat -c %a {path}")), "600");
    assert_eq!(bench.ssh_ok(host, &format!("stat -c %a $(dirname {path})")), "755", "directories as usual");
    assert_eq!(std::fs::read(&on_host).unwrap(), contents, "exactly the bytes sent");
    let listing = bench.ssh_ok(host, &format!("ls -a $(dirname {path})"));
    assert_eq!(listing.split_whitespace().collect::<Vec<_>>(), [".", "..", "web.env"], "no temporary file left");

    // Overwriting, another mode, odd names.
    block_on(pool.write_file(&host.ip, "odd dir/it's $x.txt", b"two", 0o644)).unwrap();
    assert_eq!(bench.ssh_ok(host, "cat \"odd dir/it's \\$x.txt\""), "two");
    assert_eq!(bench.ssh_ok(host, "stat -c %a \"odd dir/it's \\$x.txt\""), "644");

    // A path that cannot be written: the error says where and why.
    let error = block_on(pool.write_file(&host.ip, "/proc/nope/file", b"x", 0o600)).unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, SshError::WriteFile { .. }), "{message}");
    assert!(message.contains("/proc/nope/file") && message.contains(&host.ip), "{message}");
}

/// A copy of the bench's known_hosts with `edit` applied to its text.
fn known_hosts_copy(bench: &Bench, dir: &Path, edit: impl Fn(&str) -> String) -> PathBuf {
    let path = dir.join(format!("known_hosts-{}", rand_suffix()));
    std::fs::write(&path, edit(&std::fs::read_to_string(bench.known_hosts()).unwrap())).unwrap();
    path
}

fn rand_suffix() -> u64 {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).unwrap();
    u64::from_le_bytes(bytes)
}

fn new_key(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    let status = Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(&path).status().unwrap();
    assert!(status.success());
    path
}

#[test]
fn host_keys_are_verified_changed_keys_refused_and_new_keys_trusted_only_when_asked() {
    let bench = Bench::start(1);
    let host = bench.host(1);
    let dir = tempfile::tempdir().unwrap();
    let run =
        |config: SshConfig| block_on(async { SshPool::new(config).run(&host.ip, &sh("true"), &DiscardLines).await });

    // A changed key: refused, with both fingerprints and the file:line.
    let other = new_key(dir.path(), "other_host_key");
    let other_public = std::fs::read_to_string(other.with_extension("pub")).unwrap();
    let other_key_fields: Vec<&str> = other_public.split_whitespace().take(2).collect();
    let changed =
        known_hosts_copy(&bench, dir.path(), |_| format!("# first line\n{} {}\n", host.ip, other_key_fields.join(" ")));
    let error = run(SshConfig { known_hosts_files: vec![changed.clone()], ..bench_config(&bench) }).unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, SshError::HostKeyChanged { line: 2, .. }), "{message}");
    assert!(message.contains(&format!("{}:2", changed.display())), "{message}");
    assert!(message.contains("man in the middle"), "{message}");
    // Even AcceptNew refuses a changed key.
    let error = run(SshConfig {
        known_hosts_files: vec![changed.clone()],
        host_key_policy: HostKeyPolicy::AcceptNew,
        ..bench_config(&bench)
    })
    .unwrap_err();
    assert!(matches!(error, SshError::HostKeyChanged { .. }), "{error}");

    // An unknown host: refused under Strict, with its fingerprint and how to add it.
    let empty = dir.path().join("empty_known_hosts");
    std::fs::write(&empty, "").unwrap();
    let error = run(SshConfig { known_hosts_files: vec![empty.clone()], ..bench_config(&bench) }).unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, SshError::HostKeyUnknown { .. }), "{message}");
    let fingerprint =
        String::from_utf8(Command::new("ssh-keygen").arg("-lf").arg(bench.known_hosts()).output().unwrap().stdout)
            .unwrap();
    let fingerprint = fingerprint.split_whitespace().nth(1).unwrap().to_string();
    assert!(message.contains(&fingerprint), "{message} names {fingerprint}");
    assert!(message.contains(&format!("ssh-keyscan {} >> {}", host.ip, empty.display())), "{message}");

    // AcceptNew records it in the first file; then Strict accepts it.
    let recorded = dir.path().join("new/known_hosts");
    let accept_new = SshConfig {
        known_hosts_files: vec![recorded.clone(), empty.clone()],
        host_key_policy: HostKeyPolicy::AcceptNew,
        ..bench_config(&bench)
    };
    run(accept_new).unwrap();
    let text = std::fs::read_to_string(&recorded).unwrap();
    assert_eq!(text, std::fs::read_to_string(bench.known_hosts()).unwrap(), "the same line OpenSSH has");
    run(SshConfig { known_hosts_files: vec![recorded], ..bench_config(&bench) }).unwrap();

    // Hashed entries (`ssh-keygen -H`) are recognised.
    let hashed = known_hosts_copy(&bench, dir.path(), |text| text.to_string());
    let status = Command::new("ssh-keygen")
        .arg("-H")
        .arg("-f")
        .arg(&hashed)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    assert!(std::fs::read_to_string(&hashed).unwrap().starts_with("|1|"));
    run(SshConfig { known_hosts_files: vec![hashed], ..bench_config(&bench) }).unwrap();
}

#[test]
fn failures_are_explained_unreachable_refused_unauthorised_and_timed_out() {
    let bench = Bench::start(1);
    let host = bench.host(1);
    let dir = tempfile::tempdir().unwrap();
    let subnet = bench.description()["BENCH_SUBNET"].trim_end_matches(".0/24").to_string();

    block_on(async {
        // Nothing at that address: fails within the connect timeout.
        let nobody = format!("{subnet}.250");
        let pool = SshPool::new(SshConfig { connect_timeout: Duration::from_secs(2), ..bench_config(&bench) });
        let started = Instant::now();
        let error = pool.run(&nobody, &sh("true"), &DiscardLines).await.unwrap_err();
        let elapsed = started.elapsed();
        assert!(elapsed < Duration::from_millis(2800), "gave up after {elapsed:?}");
        let message = error.to_string();
        assert!(matches!(error, SshError::ConnectTimeout { .. } | SshError::Connect { .. }), "{message}");
        assert!(message.contains(&format!("{nobody}:22")), "{message}");

        // A port nothing listens on.
        let error = pool.run(&format!("{}:2222", host.ip), &sh("true"), &DiscardLines).await.unwrap_err();
        let message = error.to_string();
        assert!(matches!(error, SshError::Connect { .. }), "{message}");
        assert!(message.contains("is sshd running"), "{message}");

        // A key the host does not know, and a key file that is missing: both listed.
        let stranger = new_key(dir.path(), "stranger");
        let missing = dir.path().join("missing_key");
        let pool = SshPool::new(SshConfig { keys: vec![stranger.clone(), missing.clone()], ..bench_config(&bench) });
        let error = pool.run(&host.ip, &sh("true"), &DiscardLines).await.unwrap_err();
        let message = error.to_string();
        assert!(matches!(error, SshError::Auth { .. }), "{message}");
        assert!(message.contains(&format!("{}@{}", bench.ssh_user(), host.ip)), "{message}");
        assert!(message.contains(&format!("{}", stranger.display())) && message.contains("refused"), "{message}");
        assert!(message.contains(&format!("{}: cannot read", missing.display())), "{message}");

        // A command that runs too long is stopped; the connection stays usable.
        let pool = SshPool::new(SshConfig { command_timeout: Some(Duration::from_secs(1)), ..bench_config(&bench) });
        ok(pool.run(&host.ip, &sh("true"), &DiscardLines).await);
        let started = Instant::now();
        let error = pool.run(&host.ip, &sh("sleep 30"), &DiscardLines).await.unwrap_err();
        let elapsed = started.elapsed();
        let message = error.to_string();
        assert!(matches!(error, SshError::CommandTimeout { .. }), "{message}");
        assert!(elapsed < Duration::from_secs(3), "stopped after {elapsed:?}");
        assert!(message.contains(&host.ip) && message.contains("sleep 30") && message.contains("1s"), "{message}");
        Bench::wait_for("the timed-out command to end on the host", Duration::from_secs(10), || {
            let sessions = connection_processes(host).into_iter().flat_map(process_tree);
            let running = sessions.filter(|pid| {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                String::from_utf8_lossy(&cmdline).contains("sleep\u{0}30")
            });
            (running.count() == 0).then_some(())
        });
        assert_eq!(ok(pool.run(&host.ip, &sh("echo still here"), &DiscardLines).await).stdout, "still here\n");
    });
}

#[test]
fn a_killed_connection_is_reopened_on_next_use() {
    let bench = Bench::start(1);
    let host = bench.host(1);
    let pool = SshPool::new(bench_config(&bench));
    block_on(async {
        ok(pool.run(&host.ip, &sh("true"), &DiscardLines).await);
        let first = connection_processes(host);
        assert_eq!(first.len(), 1);
        // Kill that connection's sshd processes on the host (its monitor and the process holding the socket):
        // the TCP connection dies with them.
        // One by one: a short-lived child of the tree may exit on its own between the listing and the kill
        // (`kill` then fails for it); what matters is that none is left, which the wait below checks.
        let tree = process_tree(first[0]);
        for pid in &tree {
            let _ = Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
        }
        Bench::wait_for("the connection's sshd processes to be gone", Duration::from_secs(10), || {
            let alive: Vec<u32> = process_parents().into_iter().map(|(pid, _)| pid).collect();
            tree.iter().all(|pid| !alive.contains(pid)).then_some(())
        });
        assert_eq!(ok(pool.run(&host.ip, &sh("echo again"), &DiscardLines).await).stdout, "again\n");
        let second = connection_processes(host);
        assert_eq!(second.len(), 1);
        assert_ne!(second, first, "a new connection");
    });
}

#[test]
fn an_idle_connection_is_closed_and_reopened_when_needed() {
    let bench = Bench::start(1);
    let host = bench.host(1);
    let pool = SshPool::new(SshConfig { idle_timeout: Some(Duration::from_secs(2)), ..bench_config(&bench) });
    block_on(async {
        // A command longer than the idle time keeps its connection: idle time counts from its end.
        ok(pool.run(&host.ip, &sh("sleep 3; echo done"), &DiscardLines).await);
        assert_eq!(connection_processes(host).len(), 1);
        Bench::wait_for("the idle connection to be closed", Duration::from_secs(20), || {
            connection_processes(host).is_empty().then_some(())
        });
        assert_eq!(ok(pool.run(&host.ip, &sh("echo again"), &DiscardLines).await).stdout, "again\n");
        assert_eq!(accepted_connections(&bench, host), 2, "one new connection for the next command");
    });
}

#[test]
fn a_host_is_reached_through_a_jump_host_set_in_config_or_in_an_openssh_config_file() {
    let bench = Bench::start(2);
    let (jump, target) = (bench.host(1), bench.host(2));
    let dir = tempfile::tempdir().unwrap();
    block_on(async {
        let config = SshConfig {
            proxy: Some(JumpHost::parse(&format!("{}@{}", bench.ssh_user(), jump.ip)).unwrap()),
            ..bench_config(&bench)
        };
        let pool = SshPool::new(config);
        let output = ok(pool.run(&target.ip, &sh("hostname; echo $SSH_CLIENT"), &DiscardLines).await);
        let mut lines = output.stdout.lines();
        assert_eq!(lines.next(), Some(target.hostname.as_str()));
        let client = lines.next().unwrap_or_default();
        assert!(client.starts_with(&format!("{} ", jump.ip)), "host 2 sees the jump host as its client: {client}");

        // The same through an OpenSSH config file: an alias, its HostName and ProxyJump.
        let file = dir.path().join("config");
        std::fs::write(
            &file,
            format!("Host app2\n  HostName {}\n  ProxyJump {}@{}\n", target.ip, bench.ssh_user(), jump.ip),
        )
        .unwrap();
        let pool = SshPool::new(SshConfig { ssh_config_files: vec![file], ..bench_config(&bench) });
        assert_eq!(ok(pool.run("app2", &sh("hostname"), &DiscardLines).await).stdout.trim(), target.hostname);

        // A jump host that cannot reach the target says so.
        let config = SshConfig {
            proxy: Some(JumpHost::parse(&format!("{}@{}", bench.ssh_user(), jump.ip)).unwrap()),
            ..bench_config(&bench)
        };
        let error = SshPool::new(config).run(&format!("{}:2222", target.ip), &sh("true"), &DiscardLines).await;
        let message = error.unwrap_err().to_string();
        assert!(message.contains(&jump.ip) && message.contains(&format!("{}:2222", target.ip)), "{message}");
    });
}

#[test]
fn a_proxy_command_carries_the_connection_and_explains_its_failure() {
    let bench = Bench::start(1);
    let host = bench.host(1);
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("proxied");
    block_on(async {
        // A ProxyCommand in the style of `ssh -W %h:%p bastion`: here bash's /dev/tcp relays the bytes, and the
        // command notes the tokens it was given.
        let command = format!(
            "echo %r@%h:%p > {marker}; exec bash -c 'exec 3<>/dev/tcp/%h/%p; cat <&3 & exec cat >&3'",
            marker = marker.display()
        );
        let pool = SshPool::new(SshConfig { proxy_command: Some(command), ..bench_config(&bench) });
        let output = ok(pool.run(&host.ip, &sh("hostname"), &DiscardLines).await);
        assert_eq!(output.stdout.trim(), host.hostname);
        let noted = std::fs::read_to_string(&marker).expect("the connection went through the proxy command");
        assert_eq!(noted.trim(), format!("{}@{}:22", bench.ssh_user(), host.ip));
        pool.close().await;

        // A command that cannot reach the host: the error names it and shows what it printed.
        let failing = "echo 'bastion.example: no route to host' >&2; exit 1".to_string();
        let pool = SshPool::new(SshConfig { proxy_command: Some(failing), ..bench_config(&bench) });
        let message = pool.run(&host.ip, &sh("true"), &DiscardLines).await.unwrap_err().to_string();
        assert!(
            message.contains("proxy_command") && message.contains("bastion.example: no route to host"),
            "{message}"
        );
    });
}

#[test]
fn the_agent_is_forwarded_only_when_asked() {
    let bench = Bench::start(1);
    let host = bench.host(1);
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(dir.path());
    agent.add(bench.ssh_key());
    block_on(async {
        let with_agent = |forward_agent| SshConfig {
            agent_socket: Some(agent.socket.clone()),
            forward_agent,
            ..bench_config(&bench)
        };
        // `ssh-add -l` on the host lists the keys of the agent it reaches: this machine's, forwarded.
        let pool = SshPool::new(with_agent(true));
        let listed = ok(pool.run(&host.ip, &sh("ssh-add -l"), &DiscardLines).await);
        assert_eq!(listed.exit_status, 0, "{listed:?}");
        assert!(listed.stdout.trim_end().ends_with("(ED25519)"), "the bench's ed25519 key: {listed:?}");
        pool.close().await;
        // Without forward_agent, no agent reaches the host.
        let pool = SshPool::new(with_agent(false));
        let refused = pool.run(&host.ip, &sh("ssh-add -l"), &DiscardLines).await.unwrap();
        assert_eq!(refused.exit_status, 2, "ssh-add: no agent to talk to: {refused:?}");
    });
}

/// An `ssh-agent` this test started, killed (by its PID) when dropped.
struct Agent {
    child: Child,
    socket: PathBuf,
}

impl Agent {
    fn start(dir: &Path) -> Agent {
        let socket = dir.join("agent.sock");
        let child = Command::new("ssh-agent").arg("-D").arg("-a").arg(&socket).stdout(Stdio::null()).spawn().unwrap();
        let agent = Agent { child, socket };
        Bench::wait_for("ssh-agent's socket", Duration::from_secs(10), || agent.socket.exists().then_some(()));
        agent
    }

    fn add(&self, key: &Path) {
        let out = Command::new("ssh-add").arg(key).env("SSH_AUTH_SOCK", &self.socket).output().unwrap();
        assert!(out.status.success(), "ssh-add: {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn keys_come_from_key_data_or_an_agent() {
    let bench = Bench::start(1);
    let host = bench.host(1);
    let dir = tempfile::tempdir().unwrap();
    block_on(async {
        // key_data: the PEM text, no file.
        let pem = std::fs::read_to_string(bench.ssh_key()).unwrap();
        let config = SshConfig { keys: vec![], key_data: vec![pem], ..bench_config(&bench) };
        assert!(!format!("{config:?}").contains("PRIVATE KEY"), "key_data never shows in Debug");
        let output = ok(SshPool::new(config).run(&host.ip, &sh("id -un"), &DiscardLines).await);
        assert_eq!(output.stdout.trim(), bench.ssh_user());

        // The agent only.
        let agent = Agent::start(dir.path());
        agent.add(bench.ssh_key());
        let agent_only = SshConfig {
            keys: vec![],
            keys_only: false,
            use_agent: true,
            agent_socket: Some(agent.socket.clone()),
            ..bench_config(&bench)
        };
        let output = ok(SshPool::new(agent_only.clone()).run(&host.ip, &sh("id -un"), &DiscardLines).await);
        assert_eq!(output.stdout.trim(), bench.ssh_user());

        // keys_only with a different configured key: the agent's key is not offered.
        let stranger = new_key(dir.path(), "stranger");
        let config = SshConfig { keys: vec![stranger], keys_only: true, ..agent_only };
        let error = SshPool::new(config).run(&host.ip, &sh("true"), &DiscardLines).await.unwrap_err();
        let message = error.to_string();
        assert!(matches!(error, SshError::Auth { .. }), "{message}");
        assert!(message.contains("no keys matching the configured keys (keys_only)"), "{message}");
        drop(agent);
    });
}
