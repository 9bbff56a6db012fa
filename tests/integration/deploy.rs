//! `berth setup`, `deploy`, `rollback`, `app …`, `accessory …`, `lock …`, `prune …` end to end on the bench:
//! real sshd and dockerd per host, a real registry, berth's own proxy on every host, the test app.

use std::time::Duration;

use crate::support::bench::{Bench, Host};
use crate::support::berth::{BerthOutput, Project};
use crate::support::http::{self, LoadLoop};

const SECRET_TOKEN: &str = "s3cr3t-Tok3n-never-in-argv";

/// A project deploying the test app to a bench, with the deployer's HOME holding the bench's key and known_hosts.
struct Deployment {
    bench: Bench,
    project: Project,
}

impl Deployment {
    fn new(bench: Bench, config: &str) -> Deployment {
        let mut project = Project::new();
        let home = project.path().join("home");
        std::fs::create_dir_all(home.join(".ssh")).unwrap();
        std::fs::copy(bench.ssh_key(), home.join(".ssh/id_ed25519")).unwrap();
        std::fs::copy(bench.known_hosts(), home.join(".ssh/known_hosts")).unwrap();
        project.env.insert("HOME".into(), home.display().to_string());
        project.write("config/deploy.yml", config);
        let password = bench.registry().password();
        project.write(".kamal/secrets", &format!("KAMAL_REGISTRY_PASSWORD={password}\nSECRET_TOKEN={SECRET_TOKEN}\n"));
        Deployment { bench, project }
    }

    fn berth(&self, args: &[&str]) -> BerthOutput {
        self.project.berth(args)
    }

    /// Runs `berth ARGS` in a terminal (`script` gives it a pseudo-terminal, as a user's shell would), types
    /// `answer` once `prompt` appears in what it shows, and returns everything it showed.
    fn berth_in_terminal(&self, args: &[&str], prompt: &str, answer: &str) -> String {
        let (shown, ok) = self.berth_in_terminal_status(args, prompt, answer);
        assert!(ok, "berth {args:?} in a terminal failed: {shown}");
        shown
    }

    /// [`Deployment::berth_in_terminal`], returning whether berth succeeded instead of asserting it.
    fn berth_in_terminal_status(&self, args: &[&str], prompt: &str, answer: &str) -> (String, bool) {
        use std::io::Write;
        let command_line = std::iter::once(env!("CARGO_BIN_EXE_berth").to_string())
            .chain(args.iter().map(|arg| format!("'{}'", arg.replace('\'', "'\\''"))))
            .collect::<Vec<_>>()
            .join(" ");
        let mut child = std::process::Command::new("script")
            .args(["--quiet", "--return", "--command", &command_line, "/dev/null"])
            .current_dir(self.project.path())
            .env_clear()
            .envs(&self.project.env)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run berth under script(1)");
        let (shown, reader) = collect_output(child.stdout.take().unwrap());
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while !shown.lock().unwrap().contains(prompt) {
            if std::time::Instant::now() > deadline || child.try_wait().unwrap().is_some() {
                let _ = child.kill();
                let _ = child.wait();
                panic!("no {prompt:?} in the terminal: {}", shown.lock().unwrap());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(answer.as_bytes()).unwrap();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the session did not end: {}", shown.lock().unwrap());
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        drop(stdin);
        reader.join().unwrap();
        let shown = shown.lock().unwrap().clone();
        (shown, status.success())
    }

    /// Starts `berth ARGS` in the project without waiting for it; its stdout and stderr are pipes to read.
    fn spawn_berth(&self, args: &[&str]) -> std::process::Child {
        std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(args)
            .current_dir(self.project.path())
            .env_clear()
            .envs(&self.project.env)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start the berth binary")
    }

    fn host(&self, index: usize) -> &Host {
        self.bench.host(index)
    }

    /// What `GET path` through the proxy on `host` answers.
    fn get(&self, host: &Host, path: &str) -> http::Answer {
        http::get(&format!("{}:80", host.ip), path).unwrap_or_else(|err| panic!("GET {path} on {}: {err}", host.ip))
    }

    fn version_served(&self, host: &Host) -> String {
        let answer = self.get(host, "/version");
        assert_eq!(answer.status, 200, "GET /version on {}: {answer:?}", host.ip);
        answer.body.trim().to_string()
    }

    /// `docker ps` names on `host` with extra args (e.g. `--all`, filters).
    fn containers(&self, host: &Host, args: &[&str]) -> Vec<String> {
        let mut docker = vec!["ps", "--format", "{{.Names}}"];
        docker.extend_from_slice(args);
        let out = self.bench.docker(host, &docker);
        assert!(out.status.success(), "docker ps: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
    }
}

fn app_config(bench: &Bench, extra: &str) -> String {
    let registry = bench.registry();
    let (h1, h2) = (&bench.host(1).ip, &bench.host(2).ip);
    format!(
        "service: app
image: berth-test-app
registry:
  server: {server}
  username: {user}
  password:
    - KAMAL_REGISTRY_PASSWORD
servers:
  web:
    - {h1}
    - {h2}
  workers:
    hosts:
      - {h2}
    env:
      clear:
        ROLE_NAME: worker
env:
  clear:
    GREETING: hello world
  secret:
    - SECRET_TOKEN
proxy:
  app_port: 80
  healthcheck:
    path: /up
    interval: 1
    timeout: 2
builder:
  arch: amd64
ssh:
  user: {ssh_user}
deploy_timeout: 10
drain_timeout: 5
readiness_delay: 0
retain_containers: 2
accessories:
  store:
    image: {server}/berth-test-app:v1
    host: {h1}
    env:
      clear:
        PORT: \"8080\"
    directories:
      - data:/data
    files:
      - config/store.conf:/etc/store.conf
aliases:
  greet: app exec --reuse --primary /berth-test-app --version
{extra}",
        server = registry.addr,
        user = registry.user,
        ssh_user = bench.ssh_user(),
    )
}

const HOOK: &str = "#!/bin/sh\nenv | grep '^KAMAL_' | sort > \"$(dirname \"$0\")/../../hook-$(basename \"$0\").env\"\n";

/// The whole life of an app on two hosts: setup, deploys under load, rollback, prune, a broken version, and the
/// app/accessory commands around them.
#[test]
fn deploys_without_dropping_a_request_and_rolls_back_a_broken_version_everywhere() {
    let bench = Bench::start(2);
    for version in ["v1", "v2"] {
        bench.push_test_app_with(version, &[("SERVICE", "app")]);
    }
    let broken_on = bench.host(2).ip.clone();
    bench.push_test_app_with("v3", &[("SERVICE", "app"), ("UP_FAIL_HOST", &broken_on)]);
    let config = app_config(&bench, "");
    let d = Deployment::new(bench, &config);
    d.project.write("config/store.conf", "answer = 42\n");
    for hook in ["pre-connect", "pre-deploy", "pre-app-boot", "post-app-boot", "post-deploy"] {
        let path = d.project.write(&format!(".kamal/hooks/{hook}"), HOOK);
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    let (h1, h2) = (d.host(1).clone(), d.host(2).clone());

    // Nothing answers before setup.
    assert!(http::get(&format!("{}:80", h1.ip), "/").is_err(), "no proxy yet");

    // setup: proxy, accessory, app v1 on both hosts, worker on h2.
    let out = d.berth(&["setup", "--skip-push", "--version", "v1"]);
    out.ok();
    assert_eq!(d.version_served(&h1), "v1");
    assert_eq!(d.version_served(&h2), "v1");
    assert_eq!(d.containers(&h2, &["--filter", "name=^app-workers-v1$"]), ["app-workers-v1"], "worker runs");
    assert_eq!(d.containers(&h1, &["--filter", "name=^app-store$"]), ["app-store"], "accessory runs");
    assert_eq!(d.get(&h1, "/env/GREETING").body, "hello world");
    assert_eq!(d.get(&h2, "/env/SECRET_TOKEN").body, SECRET_TOKEN, "secret reaches the container via the env file");
    assert_eq!(d.get(&h1, "/env/KAMAL_VERSION").body, "v1");
    let env_file = d.bench.ssh_ok(&h1, "stat -c %a .kamal/apps/app/env/roles/web.env");
    assert_eq!(env_file, "600", "env file mode");

    // Hooks ran with Kamal's variables.
    let pre_deploy = std::fs::read_to_string(d.project.path().join("hook-pre-deploy.env")).expect("pre-deploy ran");
    assert!(pre_deploy.contains("KAMAL_VERSION=v1"), "{pre_deploy}");
    assert!(pre_deploy.contains("KAMAL_SERVICE_VERSION=app@v1"), "{pre_deploy}");
    assert!(pre_deploy.contains(&format!("KAMAL_HOSTS={},{}", h1.ip, h2.ip)), "{pre_deploy}");
    let post_deploy = std::fs::read_to_string(d.project.path().join("hook-post-deploy.env")).expect("post-deploy ran");
    assert!(post_deploy.contains("KAMAL_RUNTIME="), "{post_deploy}");
    let app_boot = std::fs::read_to_string(d.project.path().join("hook-pre-app-boot.env")).expect("pre-app-boot ran");
    assert!(app_boot.contains("KAMAL_HOSTS="), "{app_boot}");

    // The accessory: its file uploaded, its data directory survives a reboot.
    assert_eq!(d.bench.ssh_ok(&h1, "cat app-store/etc/store.conf"), "answer = 42");
    d.bench.ssh_ok(&h1, "echo kept > app-store/data/marker");
    d.berth(&["accessory", "reboot", "store"]).ok();
    assert_eq!(d.bench.ssh_ok(&h1, "cat app-store/data/marker"), "kept");
    let mounts =
        d.bench.docker(&h1, &["inspect", "--format", "{{range .Mounts}}{{.Destination}} {{end}}", "app-store"]);
    assert!(String::from_utf8_lossy(&mounts.stdout).contains("/data"), "data directory mounted after reboot");

    // deploy v2 under load: no request fails, v2 is served after.
    let addrs = vec![format!("{}:80", h1.ip), format!("{}:80", h2.ip)];
    let load = LoadLoop::start(&addrs, "/", 2);
    Bench::wait_for("load to start", Duration::from_secs(10), || (load.count() > 10).then_some(()));
    d.berth(&["deploy", "--skip-push", "--version", "v2"]).ok();
    let results = load.finish();
    assert!(results.failures.is_empty(), "requests failed during deploy v2: {:#?}", results.failures);
    assert!(results.ok > 20, "{results:?}");
    assert_eq!(d.version_served(&h1), "v2");
    assert_eq!(d.version_served(&h2), "v2");
    assert!(d.containers(&h2, &["--filter", "name=^app-workers-v1$"]).is_empty(), "old worker stopped");

    // rollback to v1 from the retained container, without pulling.
    let out = d.berth(&["rollback", "v1", "-v"]);
    assert!(!out.ok().contains("docker pull"), "rollback must not pull:\n{}", out.stdout);
    assert_eq!(d.version_served(&h1), "v1");
    assert_eq!(d.version_served(&h2), "v1");

    // prune keeps exactly retain_containers (2) stopped containers per host (h2 had four: web and workers of v2
    // and of the v1 moved aside by the rollback).
    let stopped =
        |host: &Host| d.containers(host, &["--all", "--filter", "label=service=app", "--filter", "status=exited"]);
    assert!(stopped(&h2).len() > 2, "{:?}", stopped(&h2));
    d.berth(&["prune", "all"]).ok();
    for host in [&h1, &h2] {
        assert_eq!(stopped(host).len(), 2, "stopped containers on {}: {:?}", host.ip, stopped(host));
    }

    // deploy v2 again, then a v3 whose /up fails on h2: the deploy fails, both hosts go on serving v2, and no
    // request fails meanwhile.
    d.berth(&["deploy", "--skip-push", "--version", "v2"]).ok();
    let load = LoadLoop::start(&addrs, "/", 2);
    Bench::wait_for("load to start", Duration::from_secs(10), || (load.count() > 10).then_some(()));
    let out = d.berth(&["deploy", "--skip-push", "--version", "v3"]);
    let err = out.err();
    assert!(err.contains(&h2.ip), "the error names the failing host:\n{err}");
    let results = load.finish();
    assert!(results.failures.is_empty(), "requests failed during the broken deploy: {:#?}", results.failures);
    assert_eq!(d.version_served(&h1), "v2", "h1 switched back");
    assert_eq!(d.version_served(&h2), "v2");
    for host in [&h1, &h2] {
        assert!(d.containers(host, &["--filter", "name=v3"]).is_empty(), "no v3 left running on {}", host.ip);
    }
    assert_eq!(d.containers(&h2, &["--filter", "name=^app-workers-v2$"]), ["app-workers-v2"], "v2 worker runs");

    // app commands.
    let version = d.berth(&["app", "version"]);
    assert!(version.ok().contains("v2"), "{}", version.stdout);
    let exec = d.berth(&["app", "exec", "--reuse", "-r", "web", "/berth-test-app", "--version"]);
    assert!(exec.ok().contains("v2"), "{}", exec.stdout);
    let exec = d.berth(&["app", "exec", "-p", "/berth-test-app", "--version"]);
    assert!(exec.ok().contains("v2"), "{}", exec.stdout);
    let alias = d.berth(&["greet"]);
    assert!(alias.ok().contains("v2"), "{}", alias.stdout);
    d.get(&h1, "/hello-log-line");
    let logs = d.berth(&["app", "logs", "-r", "web", "-n", "200"]);
    assert!(logs.ok().contains(&h1.ip), "{}", logs.stdout);

    d.berth(&["app", "maintenance", "--message", "Back at 5"]).ok();
    let answer = d.get(&h1, "/");
    assert_eq!(answer.status, 503);
    assert!(answer.body.contains("Back at 5"), "{answer:?}");
    d.berth(&["app", "live"]).ok();
    assert_eq!(d.version_served(&h1), "v2");

    // The proxy container replaced: its routes come back from its state volume.
    d.berth(&["proxy", "reboot", "-y"]).ok();
    assert_eq!(d.version_served(&h1), "v2");
    assert_eq!(d.version_served(&h2), "v2");
    let details = d.berth(&["details"]);
    assert!(details.ok().contains("app-web-v2") && details.stdout.contains("kamal-proxy"), "{}", details.stdout);

    // app stop takes the app out of the proxy (404), app start puts it back.
    d.berth(&["app", "stop", "-r", "web"]).ok();
    assert_eq!(d.get(&h1, "/").status, 404);
    d.berth(&["app", "start", "-r", "web", "--version", "v2"]).ok();
    assert_eq!(d.version_served(&h1), "v2");

    let audit = d.berth(&["audit"]);
    assert!(audit.ok().contains("Booted app version v2"), "{}", audit.stdout);

    // No secret value ever showed in berth's own output.
    for out in [&out, &version, &exec, &logs, &audit] {
        assert!(!out.stdout.contains(SECRET_TOKEN) && !out.stderr.contains(SECRET_TOKEN));
    }
}

/// Everything `output` (a child's stdout) shows, collected as it arrives by a thread that ends with it.
fn collect_output(
    mut output: impl std::io::Read + Send + 'static,
) -> (std::sync::Arc<std::sync::Mutex<String>>, std::thread::JoinHandle<()>) {
    let shown = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let collected = shown.clone();
    let reader = std::thread::spawn(move || {
        let mut buffer = [0u8; 4096];
        while let Ok(n) = output.read(&mut buffer) {
            if n == 0 {
                break;
            }
            collected.lock().unwrap().push_str(&String::from_utf8_lossy(&buffer[..n]));
        }
    });
    (shown, reader)
}

fn one_host_config(bench: &Bench) -> String {
    let registry = bench.registry();
    format!(
        "service: app
image: berth-test-app
registry:
  server: {server}
  username: {user}
  password:
    - KAMAL_REGISTRY_PASSWORD
servers:
  - {h1}
env:
  secret:
    - SECRET_TOKEN
builder:
  arch: amd64
ssh:
  user: {ssh_user}
deploy_timeout: 10
drain_timeout: 2
",
        server = registry.addr,
        user = registry.user,
        h1 = bench.host(1).ip,
        ssh_user = bench.ssh_user(),
    )
}

/// Every process's command line on this machine (the bench's hosts are namespaces of it, so this sees the
/// processes berth starts on them too).
fn all_command_lines() -> Vec<String> {
    let mut lines = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(raw) = std::fs::read(entry.path().join("cmdline")) {
            lines.push(String::from_utf8_lossy(&raw).replace('\0', " "));
        }
    }
    lines
}

/// Watches every process's argv until stopped; returns the command lines that contained one of `needles`.
fn watch_argv(
    needles: Vec<String>,
) -> (std::sync::Arc<std::sync::atomic::AtomicBool>, std::thread::JoinHandle<Vec<String>>) {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let handle = std::thread::spawn(move || {
        let mut seen = Vec::new();
        while !flag.load(std::sync::atomic::Ordering::SeqCst) {
            for line in all_command_lines() {
                if needles.iter().any(|needle| line.contains(needle.as_str())) && !seen.contains(&line) {
                    seen.push(line);
                }
            }
        }
        seen
    });
    (stop, handle)
}

/// The lock: a held lock stops a deploy and says who holds it; `lock release` frees it; a deploy killed with
/// SIGKILL while holding it does not block the next one. Meanwhile no secret shows in any process's argv.
#[test]
fn a_held_lock_blocks_deploys_and_a_killed_deploy_leaves_no_lock_behind() {
    let bench = Bench::start(1);
    for version in ["v1", "v2", "v3"] {
        bench.push_test_app_with(version, &[("SERVICE", "app")]);
    }
    let password = bench.registry().password();
    let config = one_host_config(&bench);
    let d = Deployment::new(bench, &config);
    let h1 = d.host(1).clone();

    let (stop, watcher) = watch_argv(vec![SECRET_TOKEN.to_string(), password.clone()]);
    d.berth(&["setup", "-P", "--version", "v1"]).ok();
    assert_eq!(d.version_served(&h1), "v1");

    // A lock taken by hand blocks the deploy, which says who holds it and why.
    d.berth(&["lock", "acquire", "-m", "Migrating the database (Ana)"]).ok();
    let status = d.berth(&["lock", "status"]);
    assert!(status.ok().contains("Migrating the database (Ana)"), "{}", status.stdout);
    let denied = d.berth(&["deploy", "-P", "--version", "v2"]);
    let err = denied.err();
    assert!(err.contains("Deploy lock found") && err.contains("Migrating the database (Ana)"), "{err}");
    assert_eq!(d.version_served(&h1), "v1", "nothing changed");
    d.berth(&["lock", "release"]).ok();
    assert!(d.berth(&["lock", "status"]).ok().contains("There is no deploy lock"));
    d.berth(&["deploy", "-P", "--version", "v2"]).ok();
    assert_eq!(d.version_served(&h1), "v2");

    // Its pre-deploy hook parks a deploy under the lock.
    let hook = d
        .project
        .write(".kamal/hooks/pre-deploy", "#!/bin/sh\necho $$ > \"$(dirname \"$0\")/../../hook.pid\"\nexec sleep 60\n");
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let pid_file = d.project.path().join("hook.pid");

    // Ctrl-C (SIGINT) there: the hook is stopped at once, the lock released, the host keeps its version.
    let mut child = d.spawn_berth(&["deploy", "-P", "--version", "v3"]);
    Bench::wait_for("the deploy to hold the lock and run its hook", Duration::from_secs(60), || {
        pid_file.exists().then_some(())
    });
    let hook_pid = std::fs::read_to_string(&pid_file).unwrap().trim().to_string();
    std::fs::remove_file(&pid_file).unwrap();
    let interrupted = std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(interrupted.success());
    let status =
        Bench::wait_for("the interrupted deploy to end", Duration::from_secs(20), || child.try_wait().unwrap());
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success() && stderr.contains("cancelled"), "{status}: {stderr}");
    // Stopped with the deploy: gone, or a zombie left to init.
    let hook_running = || {
        std::fs::read_to_string(format!("/proc/{hook_pid}/stat"))
            .is_ok_and(|stat| stat.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')))
    };
    Bench::wait_for("the hook to be stopped with the deploy", Duration::from_secs(10), || {
        (!hook_running()).then_some(())
    });
    assert!(d.berth(&["lock", "status"]).ok().contains("There is no deploy lock"), "{stderr}");
    assert_eq!(d.version_served(&h1), "v2", "the host still serves its version");

    // A deploy killed (SIGKILL) while it holds the lock.
    let mut child = d.spawn_berth(&["deploy", "-P", "--version", "v3"]);
    Bench::wait_for("the deploy to hold the lock and run its hook", Duration::from_secs(60), || {
        pid_file.exists().then_some(())
    });
    assert!(d.bench.ssh(&h1, "test -d .kamal/lock-app").status.success(), "the killed deploy held the lock");
    child.kill().unwrap();
    child.wait().unwrap();
    let hook_pid = std::fs::read_to_string(&pid_file).unwrap().trim().to_string();
    let _ = std::process::Command::new("kill").arg(&hook_pid).status();
    std::fs::remove_file(&hook).unwrap();
    assert_eq!(d.version_served(&h1), "v2", "the host still serves its version");

    let next = d.berth(&["deploy", "-P", "--version", "v3"]);
    assert!(
        next.ok().contains("stale deploy lock"),
        "the next deploy says it cleared the stale lock:\n{}",
        next.stdout
    );
    assert_eq!(d.version_served(&h1), "v3");

    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let leaked = watcher.join().unwrap();
    assert!(leaked.is_empty(), "a secret appeared in a process's argv: {leaked:#?}");
}

/// Kamal's tolerance and audit trail on a plain app: its audit lines for a redeploy of the same version
/// (renaming), the `latest` tag and prune; an image without the `service` label refused at pull with Kamal's
/// message and nothing booted from it; `app stop` twice and `remove -y` twice in a row succeed (Kamal tolerates
/// stopping what is not running and removing directories that are gone), leaving the host clean, as they do on
/// a host that never saw the app.
#[test]
fn stop_and_remove_succeed_twice_and_a_label_less_image_is_refused_at_pull() {
    let bench = Bench::start(1);
    for version in ["v1", "v2"] {
        bench.push_test_app_with(version, &[("SERVICE", "app")]);
    }
    bench.push_test_app_with("nolabel", &[("SERVICE", "")]);
    let registry = bench.registry().addr.clone();
    let config = one_host_config(&bench);
    let d = Deployment::new(bench, &config);
    let h1 = d.host(1).clone();
    let audit_log = || d.bench.ssh_ok(&h1, "cat .kamal/app-audit.log");

    // On a host that never saw the app, stopping and removing it are no-ops that succeed, as in Kamal.
    d.berth(&["app", "stop"]).ok();
    d.berth(&["remove", "-y"]).ok();

    d.berth(&["setup", "-P", "--version", "v1"]).ok();
    d.berth(&["deploy", "-P", "--version", "v2"]).ok();
    let redeploy = d.berth(&["deploy", "-P", "--version", "v2"]);
    assert!(redeploy.ok().contains("Renaming container v2 to v2_replaced_"), "{}", redeploy.stdout);
    assert_eq!(d.version_served(&h1), "v2");
    let log = audit_log();
    for line in [
        "] Pulled image with version v2".to_string(),
        "] [web] Renaming container v2 to v2_replaced_".to_string(),
        "] [web] Booted app version v2".to_string(),
        format!("] Tagging {registry}/berth-test-app:v2 as the latest image"),
        "] Pruned containers".to_string(),
        "] Pruned images".to_string(),
    ] {
        assert!(log.contains(&line), "no {line:?} in the audit log:\n{log}");
    }
    let pruned = |log: &str| log.matches("] Pruned images").count();
    let before = pruned(&log);
    d.berth(&["prune", "all"]).ok();
    assert_eq!(pruned(&audit_log()), before + 1, "prune all writes its line");

    // No `service` label: refused at pull with Kamal's message; v2 keeps serving, nothing of it was booted.
    for args in [&["deploy", "-P", "--version", "nolabel"][..], &["build", "pull", "--version", "nolabel"]] {
        let out = d.berth(args);
        let err = out.err();
        let message = format!("Image {registry}/berth-test-app:nolabel is missing the 'service' label");
        assert!(err.contains(&message), "berth {args:?}:\n{err}");
    }
    assert_eq!(d.version_served(&h1), "v2");
    assert!(d.containers(&h1, &["--all", "--filter", "name=nolabel"]).is_empty(), "nothing booted from it");
    assert!(!audit_log().contains("Booted app version nolabel"));

    let running = || d.containers(&h1, &["--filter", "label=service=app"]);
    for _ in 0..2 {
        d.berth(&["app", "stop"]).ok();
        assert!(running().is_empty(), "{:?}", running());
    }
    assert!(audit_log().contains("] [web] Stopped app"));

    for round in 1..=2 {
        let out = d.berth(&["remove", "-y"]);
        assert!(out.success, "remove -y, round {round}:\n{}\n{}", out.stdout, out.stderr);
        assert!(d.containers(&h1, &["--all"]).is_empty(), "no container left: {:?}", d.containers(&h1, &["--all"]));
        let images = d.bench.docker(&h1, &["image", "ls", "--quiet", "--filter", "label=service=app"]);
        assert_eq!(String::from_utf8_lossy(&images.stdout).trim(), "", "the app's images are pruned");
        let proxy_images = d
            .bench
            .docker(&h1, &["image", "ls", "--quiet", "--filter", "label=org.opencontainers.image.title=kamal-proxy"]);
        assert_eq!(String::from_utf8_lossy(&proxy_images.stdout).trim(), "", "the proxy's image is pruned");
        let left = d.bench.ssh_ok(&h1, "cd .kamal && find . | sort");
        assert_eq!(left, ".\n./app-audit.log\n./apps", "only the audit log and the empty apps directory remain");
    }
    let log = audit_log();
    for line in ["] [web] Removed all app containers", "] Removed all app images", "] Removed .kamal/apps/app"] {
        assert!(log.contains(line), "no {line:?} in the audit log:\n{log}");
    }
}

/// `-d` destinations (their own config file, secrets, container names and lock), and SSH that refuses a host
/// whose key changed and gives up on an unreachable host within the connect timeout.
#[test]
fn destinations_and_ssh_failures() {
    let bench = Bench::start(1);
    bench.push_test_app_with("v1", &[("SERVICE", "app")]);
    let config = one_host_config(&bench);
    let mut d = Deployment::new(bench, &config);
    let h1 = d.host(1).clone();
    d.project.write("config/deploy.staging.yml", "env:\n  clear:\n    STAGE: staging\n");
    let password = d.bench.registry().password();
    d.project
        .write(".kamal/secrets.staging", &format!("KAMAL_REGISTRY_PASSWORD={password}\nSECRET_TOKEN=staging-token\n"));

    d.berth(&["-d", "staging", "setup", "-P", "--version", "v1"]).ok();
    assert_eq!(d.containers(&h1, &["--filter", "name=^app-web-staging-v1$"]), ["app-web-staging-v1"]);
    assert_eq!(d.get(&h1, "/env/STAGE").body, "staging");
    assert_eq!(d.get(&h1, "/env/SECRET_TOKEN").body, "staging-token", "the destination's secrets file");
    assert_eq!(d.get(&h1, "/env/KAMAL_DESTINATION").body, "staging");
    assert!(d.bench.ssh_ok(&h1, "cat .kamal/app-staging-audit.log").contains("Booted app version v1"));
    assert!(d.berth(&["-d", "staging", "app", "version"]).ok().contains("v1"));

    // A host whose key changed is refused, saying so.
    let known_hosts = d.project.path().join("home/.ssh/known_hosts");
    let original = std::fs::read_to_string(&known_hosts).unwrap();
    let other_key = d.project.path().join("otherkey");
    let keygen = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&other_key)
        .output()
        .unwrap();
    assert!(keygen.status.success());
    let public = std::fs::read_to_string(other_key.with_extension("pub")).unwrap();
    let key = public.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
    std::fs::write(&known_hosts, format!("{} {key}\n", h1.ip)).unwrap();
    let refused = d.berth(&["-d", "staging", "app", "version"]);
    let err = refused.err().to_lowercase();
    assert!(err.contains(&h1.ip) && err.contains("changed"), "{err}");
    std::fs::write(&known_hosts, original).unwrap();

    // BERTH_SSH_COMMAND_TIMEOUT stops a command that runs too long, and says so.
    let saved_env = d.project.env.clone();
    d.project.env.insert("BERTH_SSH_COMMAND_TIMEOUT".into(), "1".into());
    let started = std::time::Instant::now();
    let stuck = d.berth(&["server", "exec", "sleep 30"]);
    assert!(stuck.err().contains("timed out after 1s"), "{}", stuck.stderr);
    assert!(started.elapsed() < Duration::from_secs(15), "took {:?}", started.elapsed());
    d.project.env = saved_env;

    // An unreachable host fails within the connect timeout, naming the host.
    let unreachable = format!("{}.250", h1.ip.rsplit_once('.').unwrap().0);
    d.project.write("config/deploy.yml", &config.replace(&format!("  - {}\n", h1.ip), &format!("  - {unreachable}\n")));
    let started = std::time::Instant::now();
    let failed = d.berth(&["app", "version"]);
    let err = failed.err();
    assert!(err.contains(&unreachable), "{err}");
    assert!(started.elapsed() < Duration::from_secs(20), "took {:?}", started.elapsed());
}

/// `berth deploy` without `-P` builds the image from the committed tree (`git archive HEAD`: uncommitted
/// changes stay out), pushes it and deploys it, the version being the commit.
#[test]
fn deploy_builds_the_committed_tree_pushes_and_deploys_it() {
    let bench = Bench::start(1);
    let config = one_host_config(&bench);
    let mut d = Deployment::new(bench, &config);
    let h1 = d.host(1).clone();
    // The deployer's docker talks to the first host's engine (this machine runs no engine of its own).
    d.project.env.insert("DOCKER_HOST".into(), h1.docker_host.clone());
    let sha = commit_test_app_project(&mut d);

    let out = d.berth(&["setup"]);
    assert!(out.ok().contains("Built and pushed"), "{}", out.stdout);
    assert_eq!(d.get(&h1, "/env/KAMAL_VERSION").body, sha);
    assert_eq!(d.version_served(&h1), "built");

    // `app exec -i`: a terminal session (OpenSSH's `ssh -t`, as Kamal) into a new container of the running
    // version; the program in it reads from a terminal and gets what was typed.
    let session = d.berth_in_terminal(&["app", "exec", "-i", "/berth-test-app --read-line"], "stdin=", "hello there\n");
    assert!(session.contains("stdin=/dev/pts/"), "the container's stdin is a terminal: {session}");
    assert!(session.contains("got: hello there"), "{session}");

    // A destructive command asks in a terminal (as Kamal does); anything but "y" leaves the host alone.
    let proxy_id = |d: &Deployment| {
        let out = d.bench.docker(&h1, &["ps", "--quiet", "--filter", "name=^kamal-proxy$"]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let id_before = proxy_id(&d);
    assert!(!id_before.is_empty());
    let (shown, ok) = d.berth_in_terminal_status(&["proxy", "reboot"], "Are you sure? [y/N]", "n\n");
    assert!(!ok && shown.contains("Aborted: nothing was changed"), "{shown}");
    assert_eq!(proxy_id(&d), id_before);
    let (shown, ok) = d.berth_in_terminal_status(&["proxy", "reboot"], "Are you sure? [y/N]", "y\n");
    assert!(ok, "{shown}");
    assert_ne!(proxy_id(&d), id_before);
    assert_eq!(d.version_served(&h1), "built", "routes are back after the reboot");
}

#[test]
fn builder_remote_builds_on_the_builder_over_ssh() {
    let bench = Bench::start(2);
    let builder_ip = bench.host(2).ip.clone();
    let remote_builder =
        format!("builder:\n  arch: amd64\n  local: false\n  remote: ssh://{}@{builder_ip}\n", bench.ssh_user());
    let config = one_host_config(&bench).replace("builder:\n  arch: amd64\n", &remote_builder);
    let mut d = Deployment::new(bench, &config);
    let (h1, builder) = (d.host(1).clone(), d.host(2).clone());
    // No DOCKER_HOST: the deployer has no Docker engine, so only the remote builder can have built the image.
    let sha = commit_test_app_project(&mut d);

    let out = d.berth(&["setup"]);
    let built = format!(
        "[{builder_ip}] Built and pushed {}/berth-test-app:{sha} on the remote builder",
        d.bench.registry().addr
    );
    assert!(out.ok().contains(&built), "{}", out.stdout);
    assert_eq!(d.get(&h1, "/env/KAMAL_VERSION").body, sha);
    assert_eq!(d.version_served(&h1), "built");
    let image = format!("{}/berth-test-app:{sha}", d.bench.registry().addr);
    let label =
        d.bench.docker(&builder, &["image", "inspect", "--format", "{{index .Config.Labels \"service\"}}", &image]);
    assert_eq!(String::from_utf8_lossy(&label.stdout).trim(), "app", "the builder's engine holds the image it built");

    // Build secrets need BuildKit, which this builder lacks: refused before anything is built, saying what to do.
    d.project
        .write("config/deploy.yml", &config.replace("  local: false\n", "  local: false\n  secrets: [SECRET_TOKEN]\n"));
    let out = d.berth(&["build", "push"]);
    assert!(out.err().contains(&format!("needs `docker buildx` on the remote builder {builder_ip}")), "{}", out.stderr);
    assert!(!out.stderr.contains(SECRET_TOKEN) && !out.stdout.contains(SECRET_TOKEN));

    // Local registry mode with the remote builder: the image is saved from the builder's engine over SSH and
    // loaded on the host; no registry is involved (none listens on localhost:5555).
    let registry_section = format!(
        "registry:\n  server: {}\n  username: {}\n  password:\n    - KAMAL_REGISTRY_PASSWORD\n",
        d.bench.registry().addr,
        d.bench.registry().user
    );
    assert!(config.contains(&registry_section), "{config}");
    d.project.write("config/deploy.yml", &config.replace(&registry_section, "registry:\n  server: localhost:5555\n"));
    let out = d.berth(&["deploy", "--version", "from-builder"]);
    let image = "localhost:5555/berth-test-app:from-builder";
    let shown = out.ok();
    assert!(shown.contains(&format!("[{builder_ip}] Built {image} on the remote builder")), "{shown}");
    assert!(shown.contains(&format!("[{}] Sent {image}", h1.ip)), "{shown}");
    assert_eq!(d.get(&h1, "/env/KAMAL_VERSION").body, "from-builder");
    assert_eq!(d.version_served(&h1), "built");
}

#[test]
fn local_registry_mode_sends_the_image_over_ssh_without_a_registry() {
    let bench = Bench::start(2);
    let (ip1, ip2) = (bench.host(1).ip.clone(), bench.host(2).ip.clone());
    let config = format!(
        "service: app\nimage: berth-test-app\nregistry:\n  server: localhost:5555\nservers:\n  - {ip1}\n  - {ip2}\n\
         env:\n  secret:\n    - SECRET_TOKEN\nbuilder:\n  arch: amd64\nssh:\n  user: {}\ndeploy_timeout: 10\n",
        bench.ssh_user()
    );
    let mut d = Deployment::new(bench, &config);
    let (h1, h2) = (d.host(1).clone(), d.host(2).clone());
    // The deployer's "local" engine is host 1's: it builds there, so host 1 already holds the image.
    d.project.env.insert("DOCKER_HOST".into(), h1.docker_host.clone());
    let sha = commit_test_app_project(&mut d);

    let out = d.berth(&["setup"]);
    let image = format!("localhost:5555/berth-test-app:{sha}");
    let shown = out.ok();
    assert!(shown.contains(&format!("Built {image}")), "{shown}");
    assert!(shown.contains(&format!("[{ip1}] {image} is already here")), "{shown}");
    assert!(shown.contains(&format!("[{ip2}] Sent {image}")), "{shown}");
    for host in [&h1, &h2] {
        assert_eq!(d.version_served(host), "built");
    }
    // Nothing listens on localhost:5555 anywhere: the hosts never pulled.
    let pulled =
        d.bench.ssh(&h2, "docker image inspect --format '{{.RepoDigests}}' localhost:5555/berth-test-app:latest");
    assert_eq!(String::from_utf8_lossy(&pulled.stdout).trim(), "[]", "a loaded image has no registry digest");

    // `app logs -f` streams from both hosts at once, each line prefixed with its host, until Ctrl-C.
    let mut follow = d.spawn_berth(&["app", "logs", "-f"]);
    let (shown, reader) = collect_output(follow.stdout.take().unwrap());
    Bench::wait_for("log lines from both hosts while following", Duration::from_secs(30), || {
        let shown = shown.lock().unwrap();
        let from =
            |ip: &str| shown.lines().any(|line| line.starts_with(&format!("{ip}: ")) && line.contains("listening"));
        (from(&ip1) && from(&ip2)).then_some(())
    });
    assert!(follow.try_wait().unwrap().is_none(), "still following");
    std::process::Command::new("kill").args(["-INT", &follow.id().to_string()]).status().unwrap();
    let status = Bench::wait_for("following to end on Ctrl-C", Duration::from_secs(20), || follow.try_wait().unwrap());
    assert!(status.success(), "Ctrl-C ends following normally: {status}");
    reader.join().unwrap();

    // -P with an image this engine lacks says what to do.
    let out = d.berth(&["deploy", "-P", "--version", "v-missing"]);
    assert!(out.err().contains("is not in the local Docker engine"), "{}", out.stderr);

    // An image without the `service` label is refused as Kamal's pull refuses it: where it is loaded (host 2),
    // and where it is already there (host 1, whose engine is the deployer's); both keep serving.
    d.bench.push_test_app_with("nolabel", &[("SERVICE", "")]);
    d.bench.docker_login(&h1);
    let pushed = format!("{}/berth-test-app:nolabel", d.bench.registry().addr);
    d.bench
        .ssh_ok(&h1, &format!("docker pull -q {pushed} && docker tag {pushed} localhost:5555/berth-test-app:nolabel"));
    let message = "Image localhost:5555/berth-test-app:nolabel is missing the 'service' label";
    let out = d.berth(&["deploy", "-P", "--version", "nolabel", "-h", &ip2]);
    assert!(out.err().contains(message), "{}", out.stderr);
    let out = d.berth(&["deploy", "-P", "--version", "nolabel"]);
    assert!(out.err().contains(message), "{}", out.stderr);
    for host in [&h1, &h2] {
        assert_eq!(d.version_served(host), "built");
        assert!(d.containers(host, &["--all", "--filter", "name=nolabel"]).is_empty(), "nothing booted from it");
    }
}

/// Makes the project a git repository whose committed tree builds the test app (`APP_VERSION=built`), with an
/// uncommitted Dockerfile that would break the build if it reached it; returns the commit.
fn commit_test_app_project(d: &mut Deployment) -> String {
    for (key, value) in [("GIT_AUTHOR_NAME", "Ana"), ("GIT_AUTHOR_EMAIL", "ana@example.com")] {
        d.project.env.insert(key.into(), value.into());
        d.project.env.insert(key.replace("AUTHOR", "COMMITTER"), value.into());
    }
    std::fs::copy(crate::support::bench::test_app_binary(), d.project.path().join("berth-test-app")).unwrap();
    d.project.write(
        "Dockerfile",
        "FROM scratch\nCOPY berth-test-app /berth-test-app\nENV PORT=80 APP_VERSION=built\nENTRYPOINT [\"/berth-test-app\"]\n",
    );
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git")
            .args(args)
            .current_dir(d.project.path())
            .env_clear()
            .envs(&d.project.env)
            .output()
            .unwrap();
        assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    git(&["init", "-q"]);
    git(&["add", "Dockerfile", "berth-test-app", "config/deploy.yml"]);
    git(&["commit", "-q", "-m", "app"]);
    let sha = git(&["rev-parse", "HEAD"]);
    // An uncommitted change that would break the build: it must not reach the image.
    d.project.write("Dockerfile", "FROM scratch\nCOPY missing-file /x\n");
    sha
}
