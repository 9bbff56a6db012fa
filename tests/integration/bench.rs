//! The test bench itself: real hosts reached over real SSH, each with its own engine, a real registry, and
//! nothing left behind afterwards — every end-to-end test of the project stands on it.

use std::collections::HashSet;
use std::time::Duration;

use crate::support::bench::{self, Bench};

/// Nothing of the bench remains. A process killed by the teardown can take a moment to be reaped by its
/// parent (it shows with an empty command line until then), so this waits for the condition, up to 10 s.
fn assert_nothing_left(name: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut left = bench::leftovers(name);
    while !left.is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        left = bench::leftovers(name);
    }
    assert!(left.is_empty(), "bench {name} left things behind:\n{}", left.join("\n"));
}

#[test]
fn three_hosts_answer_over_ssh_run_their_own_engines_pull_the_test_app_and_leave_nothing_behind() {
    let bench = Bench::start(3);
    let name = bench.name().to_string();

    let mut engine_ids = HashSet::new();
    for host in bench.hosts() {
        assert_eq!(bench.ssh_ok(host, "id -un"), bench.ssh_user(), "the SSH user on {}", host.hostname);
        assert_eq!(bench.ssh_ok(host, "hostname"), host.hostname);
        let addresses = bench.ssh_ok(host, "ip -4 -o addr show dev eth0");
        assert!(addresses.contains(&format!(" {}/24 ", host.ip)), "{} has {addresses}", host.hostname);
        let routes = bench.ssh_ok(host, "ip route");
        assert!(!routes.contains("default"), "{} must have no way out of the machine: {routes}", host.hostname);
        let groups = bench.ssh_ok(host, "id -nG");
        assert!(groups.split_whitespace().any(|g| g == "docker"), "the deploy user is in docker: {groups}");

        let info = bench.ssh_ok(host, "docker info --format '{{.ID}} {{.Name}}'");
        let (id, engine_name) = info.split_once(' ').unwrap_or_else(|| panic!("docker info said {info:?}"));
        assert_eq!(engine_name, host.hostname, "over SSH, docker talks to the host's own engine");
        engine_ids.insert(id.to_string());
    }
    assert_eq!(engine_ids.len(), 3, "three distinct engines: {engine_ids:?}");

    // Each host has a home of its own, as separate machines do.
    bench.ssh_ok(bench.host(1), "echo one > ~/marker");
    assert_eq!(bench.ssh_ok(bench.host(1), "cat ~/marker"), "one");
    assert_eq!(bench.ssh_ok(bench.host(2), "cat ~/marker 2>/dev/null || echo none"), "none");

    let image = bench.push_test_app("v1");
    assert_eq!(image, format!("{}/berth-test-app:v1", bench.registry().addr));
    for host in bench.hosts() {
        bench.docker_login(host);
        bench.ssh_ok(host, &format!("docker pull -q {image}"));
        let listed = bench.ssh_ok(host, "docker image ls --format '{{.Repository}}:{{.Tag}}'");
        assert!(listed.lines().any(|l| l == image), "{} has pulled {image}: {listed}", host.hostname);
    }

    // Run it on host 2 and ask it for its version from host 1, across the bench network.
    bench.ssh_ok(bench.host(2), &format!("docker run -d --name app -p 8080:80 {image}"));
    let url = format!("http://{}:8080/", bench.host(2).ip);
    let body = Bench::wait_for("the test app to answer on host 2", Duration::from_secs(20), || {
        let out = bench.ssh(bench.host(1), &format!("curl -sf -m 2 {url}"));
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    });
    assert!(body.starts_with("version=v1 host="), "the test app answered {body:?}");

    drop(bench);
    assert_nothing_left(&name);
}

#[test]
fn two_benches_run_at_once_on_networks_of_their_own() {
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| Bench::start(1));
        let b = s.spawn(|| Bench::start(1));
        (a.join().unwrap(), b.join().unwrap())
    });
    assert_ne!(a.host(1).ip, b.host(1).ip);
    assert_ne!(a.registry().addr, b.registry().addr);
    assert_ne!(a.registry().password(), b.registry().password());

    for (bench, other) in [(&a, &b), (&b, &a)] {
        let host = bench.host(1);
        let own = format!("curl -s -o /dev/null -w '%{{http_code}}' -m 5 http://{}/v2/", bench.registry().addr);
        assert_eq!(bench.ssh_ok(host, &own), "401", "a host reaches its own bench's registry");
        let foreign = bench.ssh(host, &format!("curl -s -m 2 http://{}/v2/", other.registry().addr));
        assert!(!foreign.status.success(), "{} must not reach the other bench's registry", host.hostname);
    }

    let names = [a.name().to_string(), b.name().to_string()];
    drop(a);
    drop(b);
    for name in names {
        assert_nothing_left(&name);
    }
}

#[test]
fn a_bench_is_torn_down_even_when_its_test_panics() {
    let name = std::thread::spawn(|| {
        let bench = Bench::start(1);
        let name = bench.name().to_string();
        std::panic::resume_unwind(Box::new(name)); // a panic, without the hook's noise
    })
    .join()
    .expect_err("the thread panicked")
    .downcast::<String>()
    .expect("the panic carried the bench's name");
    assert_nothing_left(&name);
}

#[test]
fn a_bench_that_fails_half_way_up_leaves_nothing_behind() {
    // The daemons all run when `up` fails, and `up` is told to leave them: `down` has to find everything.
    let err = Bench::try_start_with_env(2, &[("BENCH_INJECT_FAILURE", "ready"), ("BENCH_KEEP_ON_FAILURE", "1")])
        .err()
        .expect("up fails when told to");
    assert!(err.contains("failure injected"), "the failure is reported: {err}");
    let name = err.split_whitespace().nth(1).expect("the error names the bench").to_string();
    assert_nothing_left(&name);

    // And `up` cleans up after itself when it fails with the network half made.
    let err = Bench::try_start_with_env(1, &[("BENCH_INJECT_FAILURE", "network")]).err().expect("up fails");
    let name = err.split_whitespace().nth(1).expect("the error names the bench").to_string();
    assert_nothing_left(&name);
}
