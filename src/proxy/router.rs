//! Services and the routing table: deploy (health gate, atomic switch, drain), rollout, pause/stop/resume.
//!
//! The routing table is immutable and swapped whole through an `ArcSwap`, so the request path reads it
//! without a lock and a deploy's switch is one pointer store. Changes to the table are serialized by one
//! async mutex, which is never held while waiting for health checks or drains.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::ProxyError;
use super::health::{self, HealthChecker};
use super::options::{ServiceOptions, format_duration};
use super::pages::Pages;
use super::state::{self, PersistedService};
use super::target::{DrainOutcome, Target};
use super::tls::CertStore;

/// How long a request to a restored service waits for its targets' first passing health check.
const RESTORE_ADMISSION_WAIT: Duration = Duration::from_secs(10);

/// A set of targets that serve a service (its active slot or its rollout slot), round-robin over healthy ones.
pub struct TargetGroup {
    pub targets: Vec<Arc<Target>>,
    next: AtomicUsize,
    /// False for restored groups until their targets pass a health check; requests wait for it.
    admitted: AtomicBool,
    admission: watch::Sender<bool>,
    checkers: Mutex<Vec<HealthChecker>>,
}

impl TargetGroup {
    /// Creates the targets and starts their health checks (on the current runtime).
    fn start(addresses: &[String], options: &ServiceOptions, workers: usize) -> Result<Arc<TargetGroup>, ProxyError> {
        if addresses.is_empty() {
            return Err(ProxyError::invalid("--target", "", "at least one target is required"));
        }
        let targets = addresses.iter().map(|a| Target::new(a, workers)).collect::<Result<Vec<_>, _>>()?;
        let checkers = targets.iter().map(|t| health::spawn(Arc::clone(t), options.health_check.clone())).collect();
        Ok(Arc::new(TargetGroup {
            targets,
            next: AtomicUsize::new(0),
            admitted: AtomicBool::new(false),
            admission: watch::channel(false).0,
            checkers: Mutex::new(checkers),
        }))
    }

    fn admit(&self) {
        self.admitted.store(true, Ordering::Release);
        self.admission.send_replace(true);
    }

    pub fn is_admitted(&self) -> bool {
        self.admitted.load(Ordering::Acquire)
    }

    /// Waits (bounded) until the group may take traffic; false if it did not in time.
    pub async fn wait_admitted(&self) -> bool {
        let mut admission = self.admission.subscribe();
        tokio::time::timeout(RESTORE_ADMISSION_WAIT, admission.wait_for(|admitted| *admitted)).await.is_ok()
    }

    /// Waits until every target has passed its health threshold, or fails naming the first that did not.
    async fn wait_healthy(&self, options: &ServiceOptions) -> Result<(), ProxyError> {
        let deadline = tokio::time::Instant::now() + options.deploy_timeout;
        for target in &self.targets {
            let mut health = target.subscribe_health();
            let became_healthy = tokio::time::timeout_at(deadline, health.wait_for(|h| h.healthy)).await;
            if !matches!(became_healthy, Ok(Ok(_))) {
                let last = target.health().last_failure.unwrap_or_else(|| "no check completed".to_string());
                return Err(ProxyError::TargetNeverHealthy {
                    target: target.address.clone(),
                    timeout: format_duration(options.deploy_timeout),
                    last,
                    path: options.health_check.path.clone(),
                });
            }
        }
        Ok(())
    }

    /// The next target for a request: round robin over healthy targets; when none is healthy, any target
    /// (a lone target that fails its checks still gets its chance, and the client sees the real error).
    pub fn pick(&self) -> &Arc<Target> {
        let count = self.targets.len();
        if count == 1 {
            return &self.targets[0];
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..count)
            .map(|i| &self.targets[(start + i) % count])
            .find(|t| t.is_healthy())
            .unwrap_or(&self.targets[start % count])
    }

    /// Stops health checks and drains every target in parallel.
    async fn retire(&self, drain_timeout: Duration) -> Vec<(String, DrainOutcome)> {
        let drains = self.targets.iter().map(|t| async move { (t.address.clone(), t.drain(drain_timeout).await) });
        let outcomes = futures_util::future::join_all(drains).await;
        self.checkers.lock().unwrap_or_else(|e| e.into_inner()).clear();
        // Ends a restore's admission wait, if one is still pending (the group takes no traffic any more).
        self.admit();
        outcomes
    }

    fn addresses(&self) -> Vec<String> {
        self.targets.iter().map(|t| t.address.clone()).collect()
    }
}

/// Whether a service serves, holds (pause) or turns away (stop, maintenance) new requests.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum PauseState {
    #[default]
    Running,
    Paused {
        #[serde(with = "millis")]
        max_pause: Duration,
    },
    Stopped {
        message: String,
    },
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

/// What a request may do, given the service's pause state.
pub enum Admission {
    Proceed,
    Stopped(String),
    PauseExpired,
}

/// A service's pause state, shared by every version of the service (deploys do not change it).
pub struct PauseControl {
    /// 0 = running: the request path checks only this.
    mode: AtomicU8,
    state: watch::Sender<PauseState>,
}

impl PauseControl {
    fn new(state: PauseState) -> Arc<PauseControl> {
        let control = Arc::new(PauseControl { mode: AtomicU8::new(0), state: watch::channel(PauseState::Running).0 });
        control.set(state);
        control
    }

    fn set(&self, state: PauseState) {
        let mode = match state {
            PauseState::Running => 0,
            PauseState::Paused { .. } => 1,
            PauseState::Stopped { .. } => 2,
        };
        self.mode.store(mode, Ordering::Release);
        self.state.send_replace(state);
    }

    pub fn state(&self) -> PauseState {
        self.state.borrow().clone()
    }

    pub fn is_running(&self) -> bool {
        self.mode.load(Ordering::Acquire) == 0
    }

    /// Holds a request while the service is paused (up to its max pause), turns it away while stopped.
    pub async fn admit(&self) -> Admission {
        if self.is_running() {
            return Admission::Proceed;
        }
        let mut state = self.state.subscribe();
        let max_pause = match &*state.borrow_and_update() {
            PauseState::Running => return Admission::Proceed,
            PauseState::Stopped { message } => return Admission::Stopped(message.clone()),
            PauseState::Paused { max_pause } => *max_pause,
        };
        let resumed =
            tokio::time::timeout(max_pause, state.wait_for(|s| !matches!(s, PauseState::Paused { .. }))).await;
        match resumed {
            Ok(Ok(state)) => match &*state {
                PauseState::Stopped { message } => Admission::Stopped(message.clone()),
                _ => Admission::Proceed,
            },
            _ => Admission::PauseExpired,
        }
    }
}

/// A cookie-based split of traffic to the rollout slot.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RolloutSplit {
    pub percent: u32,
    pub allowlist: Vec<String>,
}

impl RolloutSplit {
    /// Whether a request carrying `kamal-rollout=<value>` goes to the rollout slot (kamal-proxy's rule: the
    /// value is allow-listed, or its FNV-1a hash falls in the first `percent` of the hash space).
    pub fn selects(&self, value: &str) -> bool {
        if self.allowlist.iter().any(|allowed| allowed == value) {
            return true;
        }
        let mut hash: u32 = 0x811c9dc5;
        for byte in value.bytes() {
            hash ^= byte as u32;
            hash = hash.wrapping_mul(0x01000193);
        }
        (hash as u64) < (self.percent as u64 * 0xFFFF_FFFF) / 100
    }
}

/// A deployed service: its options and the target groups that serve it. Immutable; a change makes a new one.
pub struct Service {
    pub name: String,
    /// A small number naming the service in metrics (stable across deploys of the same name).
    pub id: u32,
    pub options: Arc<ServiceOptions>,
    pub active: Arc<TargetGroup>,
    pub rollout: Option<Arc<TargetGroup>>,
    pub rollout_split: Option<RolloutSplit>,
    pub pause: Arc<PauseControl>,
    pub pages: Arc<Pages>,
}

impl Service {
    fn persisted(&self) -> PersistedService {
        PersistedService {
            name: self.name.clone(),
            options: (*self.options).clone(),
            targets: self.active.addresses(),
            rollout_targets: self.rollout.as_ref().map(|g| g.addresses()).unwrap_or_default(),
            rollout_split: self.rollout_split.clone(),
            pause: self.pause.state(),
        }
    }

    fn with(&self, change: impl FnOnce(&mut ServiceParts)) -> Service {
        let mut parts = ServiceParts {
            options: Arc::clone(&self.options),
            active: Arc::clone(&self.active),
            rollout: self.rollout.clone(),
            rollout_split: self.rollout_split.clone(),
            pages: Arc::clone(&self.pages),
        };
        change(&mut parts);
        Service {
            name: self.name.clone(),
            id: self.id,
            options: parts.options,
            active: parts.active,
            rollout: parts.rollout,
            rollout_split: parts.rollout_split,
            pause: Arc::clone(&self.pause),
            pages: parts.pages,
        }
    }
}

struct ServiceParts {
    options: Arc<ServiceOptions>,
    active: Arc<TargetGroup>,
    rollout: Option<Arc<TargetGroup>>,
    rollout_split: Option<RolloutSplit>,
    pages: Arc<Pages>,
}

/// One (host, path prefix) binding.
pub struct Route {
    pub prefix: String,
    pub service: Arc<Service>,
    /// Plain-HTTP requests are redirected to HTTPS (this service or the host's root service has TLS).
    pub redirect_to_https: bool,
}

/// The routing table: host -> routes (longest prefix first). Built once per change, read lock-free.
#[derive(Default)]
pub struct RoutingTable {
    pub services: BTreeMap<String, Arc<Service>>,
    exact: HashMap<String, Vec<Route>>,
    wildcard: HashMap<String, Vec<Route>>,
    any_host: Vec<Route>,
}

impl RoutingTable {
    fn build(services: BTreeMap<String, Arc<Service>>) -> RoutingTable {
        let mut table = RoutingTable { services, ..RoutingTable::default() };
        let mut tls_hosts = HashMap::new();
        for service in table.services.values() {
            if service.options.tls && service.options.tls_redirect && service.options.paths().iter().any(|p| p == "/") {
                for host in &service.options.hosts {
                    tls_hosts.insert(host.clone(), true);
                }
            }
        }
        for service in table.services.values() {
            let hosts =
                if service.options.hosts.is_empty() { vec![String::new()] } else { service.options.hosts.clone() };
            for host in hosts {
                let redirect_to_https = (service.options.tls && service.options.tls_redirect)
                    || tls_hosts.get(&host).copied().unwrap_or(false);
                for prefix in service.options.paths() {
                    let route = Route { prefix, service: Arc::clone(service), redirect_to_https };
                    let routes = if host.is_empty() {
                        &mut table.any_host
                    } else if let Some(domain) = host.strip_prefix("*.") {
                        table.wildcard.entry(domain.to_string()).or_default()
                    } else {
                        table.exact.entry(host.clone()).or_default()
                    };
                    routes.push(route);
                }
            }
        }
        let by_prefix_length = |a: &Route, b: &Route| b.prefix.len().cmp(&a.prefix.len());
        table.exact.values_mut().for_each(|r| r.sort_by(by_prefix_length));
        table.wildcard.values_mut().for_each(|r| r.sort_by(by_prefix_length));
        table.any_host.sort_by(by_prefix_length);
        table
    }

    /// The route for a request: exact host, then `*.parent`, then the default service; longest prefix wins.
    pub fn find(&self, host: &str, path: &str) -> Option<&Route> {
        let host = host_without_port(host);
        let lowered;
        let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            lowered = host.to_ascii_lowercase();
            lowered.as_str()
        } else {
            host
        };
        if let Some(route) = self.exact.get(host).and_then(|routes| match_prefix(routes, path)) {
            return Some(route);
        }
        if let Some((_, parent)) = host.split_once('.')
            && let Some(route) = self.wildcard.get(parent).and_then(|routes| match_prefix(routes, path))
        {
            return Some(route);
        }
        match_prefix(&self.any_host, path)
    }

    /// Which service already serves `host` + `path`, other than `except`.
    fn route_owner(&self, host: &str, path: &str, except: &str) -> Option<String> {
        self.services
            .values()
            .filter(|s| s.name != except)
            .find(|s| {
                let hosts_match = if host.is_empty() {
                    s.options.hosts.is_empty()
                } else {
                    s.options.hosts.iter().any(|h| h == host)
                };
                hosts_match && s.options.paths().iter().any(|p| p == path)
            })
            .map(|s| s.name.clone())
    }
}

fn match_prefix<'a>(routes: &'a [Route], path: &str) -> Option<&'a Route> {
    routes.iter().find(|route| path_has_prefix(path, &route.prefix))
}

/// `/api` matches `/api`, `/api/x` and `/api?q`, but not `/apix`.
pub fn path_has_prefix(path: &str, prefix: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/') || rest.starts_with('?'),
        None => false,
    }
}

fn host_without_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_once(']').map_or(host, |(h, _)| &host[..h.len() + 1]);
    }
    host.rsplit_once(':').map_or(host, |(h, port)| if port.bytes().all(|b| b.is_ascii_digit()) { h } else { host })
}

/// What a completed deploy did.
#[derive(Debug, Serialize, Deserialize)]
pub struct DeployReport {
    pub service: String,
    pub targets: Vec<String>,
    /// Old targets and whether their in-flight requests all completed.
    pub drained: Vec<DrainReport>,
    pub health_wait_ms: u64,
    pub drain_ms: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct DrainReport {
    pub target: String,
    pub completed: bool,
    pub cancelled_requests: usize,
}

fn drain_reports(outcomes: Vec<(String, DrainOutcome)>) -> Vec<DrainReport> {
    outcomes
        .into_iter()
        .map(|(target, outcome)| match outcome {
            DrainOutcome::Completed => DrainReport { target, completed: true, cancelled_requests: 0 },
            DrainOutcome::Cancelled(n) => DrainReport { target, completed: false, cancelled_requests: n },
        })
        .collect()
}

/// One row of `list`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ServiceSummary {
    pub service: String,
    pub hosts: Vec<String>,
    pub paths: Vec<String>,
    pub targets: Vec<String>,
    pub healthy: Vec<bool>,
    pub rollout_targets: Vec<String>,
    pub state: String,
    pub tls: bool,
}

/// The proxy's services and their routing table.
pub struct Router {
    table: ArcSwap<RoutingTable>,
    changes: tokio::sync::Mutex<()>,
    state_path: Option<PathBuf>,
    workers: usize,
    service_ids: Mutex<HashMap<String, u32>>,
    next_service_id: AtomicU32,
    pub certs: Arc<CertStore>,
}

impl Router {
    pub fn new(state_path: Option<PathBuf>, workers: usize, certs: Arc<CertStore>) -> Router {
        Router {
            table: ArcSwap::from_pointee(RoutingTable::default()),
            changes: tokio::sync::Mutex::new(()),
            state_path,
            workers,
            service_ids: Mutex::new(HashMap::new()),
            next_service_id: AtomicU32::new(1),
            certs,
        }
    }

    /// The current routing table (lock-free).
    pub fn table(&self) -> arc_swap::Guard<Arc<RoutingTable>> {
        self.table.load()
    }

    pub fn snapshot(&self) -> Arc<RoutingTable> {
        self.table.load_full()
    }

    fn service_id(&self, name: &str) -> u32 {
        let mut ids = self.service_ids.lock().unwrap_or_else(|e| e.into_inner());
        *ids.entry(name.to_string()).or_insert_with(|| self.next_service_id.fetch_add(1, Ordering::Relaxed))
    }

    /// Name of the service with metrics id `id` (for the metrics page).
    pub fn service_names(&self) -> HashMap<u32, String> {
        self.service_ids.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|(n, i)| (*i, n.clone())).collect()
    }

    fn check_routes(&self, table: &RoutingTable, name: &str, options: &ServiceOptions) -> Result<(), ProxyError> {
        let hosts = if options.hosts.is_empty() { vec![String::new()] } else { options.hosts.clone() };
        for host in &hosts {
            for path in options.paths() {
                if let Some(other) = table.route_owner(host, &path, name) {
                    return Err(ProxyError::RouteInUse { host: host.clone(), path, other });
                }
            }
        }
        Ok(())
    }

    /// Deploys `targets` as the active slot of `name`: health gate, atomic switch, then drain of the old
    /// targets. Returns when the drain is done; on any failure the service is left as it was.
    pub async fn deploy(
        &self,
        name: &str,
        targets: &[String],
        mut options: ServiceOptions,
    ) -> Result<DeployReport, ProxyError> {
        validate_service_name(name)?;
        options.normalize()?;
        self.check_routes(&self.table.load(), name, &options)?;
        let (pages, problems) = Pages::load(options.error_pages.as_deref());
        for problem in problems {
            log_service_event("Error pages incomplete", name, &problem);
        }
        self.certs.prepare(&options)?;
        let started = std::time::Instant::now();
        log_service_event("Deploying", name, &targets.join(","));
        let group = TargetGroup::start(targets, &options, self.workers)?;
        if !options.force {
            group.wait_healthy(&options).await?;
        }
        group.admit();
        let health_wait = started.elapsed();
        let drain_timeout = options.drain_timeout;
        let replaced = {
            let _change = self.changes.lock().await;
            let table = self.table.load_full();
            self.check_routes(&table, name, &options)?;
            let options = Arc::new(options);
            let pages = Arc::new(pages);
            let (service, replaced) = match table.services.get(name) {
                Some(existing) => {
                    let service = existing.with(|parts| {
                        parts.options = Arc::clone(&options);
                        parts.active = Arc::clone(&group);
                        parts.pages = pages;
                    });
                    (service, Some(Arc::clone(&existing.active)))
                }
                None => (
                    Service {
                        name: name.to_string(),
                        id: self.service_id(name),
                        options,
                        active: Arc::clone(&group),
                        rollout: None,
                        rollout_split: None,
                        pause: PauseControl::new(PauseState::Running),
                        pages,
                    },
                    None,
                ),
            };
            self.install(&table, |services| {
                services.insert(name.to_string(), Arc::new(service));
            });
            replaced
        };
        log_service_event("Deployed", name, &targets.join(","));
        let drain_started = std::time::Instant::now();
        let drained = match replaced {
            Some(old) if !Arc::ptr_eq(&old, &group) => old.retire(drain_timeout).await,
            _ => Vec::new(),
        };
        Ok(DeployReport {
            service: name.to_string(),
            targets: targets.to_vec(),
            drained: drain_reports(drained),
            health_wait_ms: health_wait.as_millis() as u64,
            drain_ms: drain_started.elapsed().as_millis() as u64,
        })
    }

    /// Deploys `targets` into the rollout slot of an existing service (same gate and drain as `deploy`).
    pub async fn rollout_deploy(
        &self,
        name: &str,
        targets: &[String],
        deploy_timeout: Option<Duration>,
        drain_timeout: Option<Duration>,
    ) -> Result<DeployReport, ProxyError> {
        let existing = self.existing(name)?;
        let mut options = (*existing.options).clone();
        if let Some(timeout) = deploy_timeout {
            options.deploy_timeout = timeout;
        }
        let drain_timeout = drain_timeout.unwrap_or(options.drain_timeout);
        let started = std::time::Instant::now();
        let group = TargetGroup::start(targets, &options, self.workers)?;
        if !options.force {
            group.wait_healthy(&options).await?;
        }
        group.admit();
        let health_wait = started.elapsed();
        let replaced = {
            let _change = self.changes.lock().await;
            let table = self.table.load_full();
            let existing =
                table.services.get(name).ok_or_else(|| ProxyError::UnknownService { service: name.to_string() })?;
            let replaced = existing.rollout.clone();
            let service = existing.with(|parts| parts.rollout = Some(Arc::clone(&group)));
            self.install(&table, |services| {
                services.insert(name.to_string(), Arc::new(service));
            });
            replaced
        };
        let drain_started = std::time::Instant::now();
        let drained = match replaced {
            Some(old) => old.retire(drain_timeout).await,
            None => Vec::new(),
        };
        Ok(DeployReport {
            service: name.to_string(),
            targets: targets.to_vec(),
            drained: drain_reports(drained),
            health_wait_ms: health_wait.as_millis() as u64,
            drain_ms: drain_started.elapsed().as_millis() as u64,
        })
    }

    /// Sends `percent` of cookie holders (and every allow-listed cookie value) to the rollout slot.
    pub async fn rollout_set(&self, name: &str, percent: u32, allowlist: Vec<String>) -> Result<(), ProxyError> {
        if percent > 100 {
            return Err(ProxyError::invalid("--percent", percent.to_string(), "must be between 0 and 100"));
        }
        let _change = self.changes.lock().await;
        let table = self.table.load_full();
        let existing =
            table.services.get(name).ok_or_else(|| ProxyError::UnknownService { service: name.to_string() })?;
        if existing.rollout.is_none() {
            return Err(ProxyError::NoRolloutTargets { service: name.to_string() });
        }
        let service = existing.with(|parts| parts.rollout_split = Some(RolloutSplit { percent, allowlist }));
        self.install(&table, |services| {
            services.insert(name.to_string(), Arc::new(service));
        });
        Ok(())
    }

    /// Ends the split: all traffic goes to the active slot (the rollout targets stay registered).
    pub async fn rollout_stop(&self, name: &str) -> Result<(), ProxyError> {
        let _change = self.changes.lock().await;
        let table = self.table.load_full();
        let existing =
            table.services.get(name).ok_or_else(|| ProxyError::UnknownService { service: name.to_string() })?;
        let service = existing.with(|parts| parts.rollout_split = None);
        self.install(&table, |services| {
            services.insert(name.to_string(), Arc::new(service));
        });
        Ok(())
    }

    /// Removes a service from routing, then drains its targets.
    pub async fn remove(&self, name: &str) -> Result<Vec<DrainReport>, ProxyError> {
        let removed = {
            let _change = self.changes.lock().await;
            let table = self.table.load_full();
            let removed = table
                .services
                .get(name)
                .cloned()
                .ok_or_else(|| ProxyError::UnknownService { service: name.to_string() })?;
            self.install(&table, |services| {
                services.remove(name);
            });
            removed
        };
        log_service_event("Removed", name, "");
        let mut outcomes = removed.active.retire(removed.options.drain_timeout).await;
        if let Some(rollout) = &removed.rollout {
            outcomes.extend(rollout.retire(removed.options.drain_timeout).await);
        }
        Ok(drain_reports(outcomes))
    }

    /// Holds new requests (up to `max_pause` each) and waits for in-flight ones (up to `drain_timeout`).
    pub async fn pause(&self, name: &str, drain_timeout: Duration, max_pause: Duration) -> Result<(), ProxyError> {
        self.set_pause_state(name, PauseState::Paused { max_pause }, Some(drain_timeout)).await
    }

    /// Maintenance: new requests get the 503 page with `message`; waits for in-flight ones.
    pub async fn stop(&self, name: &str, drain_timeout: Duration, message: String) -> Result<(), ProxyError> {
        self.set_pause_state(name, PauseState::Stopped { message }, Some(drain_timeout)).await
    }

    /// Back to serving; held requests continue.
    pub async fn resume(&self, name: &str) -> Result<(), ProxyError> {
        self.set_pause_state(name, PauseState::Running, None).await
    }

    async fn set_pause_state(&self, name: &str, state: PauseState, drain: Option<Duration>) -> Result<(), ProxyError> {
        let service = {
            let _change = self.changes.lock().await;
            let service = self.existing(name)?;
            service.pause.set(state.clone());
            self.save_state(&self.table.load());
            service
        };
        let event = match state {
            PauseState::Running => "Service resumed",
            PauseState::Paused { .. } => "Service paused",
            PauseState::Stopped { .. } => "Service stopped",
        };
        log_service_event(event, name, "");
        if let Some(timeout) = drain {
            let deadline = tokio::time::Instant::now() + timeout;
            let groups = std::iter::once(&service.active).chain(service.rollout.as_ref());
            for group in groups {
                for target in &group.targets {
                    while target.in_flight() > 0 && tokio::time::Instant::now() < deadline {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        }
        Ok(())
    }

    fn existing(&self, name: &str) -> Result<Arc<Service>, ProxyError> {
        self.table
            .load()
            .services
            .get(name)
            .cloned()
            .ok_or_else(|| ProxyError::UnknownService { service: name.to_string() })
    }

    pub fn list(&self) -> Vec<ServiceSummary> {
        self.table
            .load()
            .services
            .values()
            .map(|service| ServiceSummary {
                service: service.name.clone(),
                hosts: service.options.hosts.clone(),
                paths: service.options.paths(),
                targets: service.active.addresses(),
                healthy: service.active.targets.iter().map(|t| t.is_healthy()).collect(),
                rollout_targets: service.rollout.as_ref().map(|g| g.addresses()).unwrap_or_default(),
                state: match service.pause.state() {
                    PauseState::Running => "running".to_string(),
                    PauseState::Paused { .. } => "paused".to_string(),
                    PauseState::Stopped { .. } => "stopped".to_string(),
                },
                tls: service.options.tls,
            })
            .collect()
    }

    /// Builds the new table from `table`'s services, switches to it, and persists the state.
    fn install(&self, table: &RoutingTable, change: impl FnOnce(&mut BTreeMap<String, Arc<Service>>)) {
        let mut services = table.services.clone();
        change(&mut services);
        let new_table = Arc::new(RoutingTable::build(services));
        self.certs.retain_for(&new_table);
        self.table.store(Arc::clone(&new_table));
        self.save_state(&new_table);
    }

    fn save_state(&self, table: &RoutingTable) {
        let Some(path) = &self.state_path else { return };
        let services: Vec<PersistedService> = table.services.values().map(|s| s.persisted()).collect();
        if let Err(error) = state::save(path, &services) {
            log_service_event("State not saved", "", &error.to_string());
        }
    }

    /// Restores persisted services. Each is routed at once but takes traffic only after its targets pass
    /// a health check (requests wait briefly for that); a bad entry is reported and skipped.
    pub async fn restore(&self) -> Vec<String> {
        let Some(path) = &self.state_path else { return Vec::new() };
        let (entries, mut problems) = state::load(path);
        let _change = self.changes.lock().await;
        let table = self.table.load_full();
        let mut services = table.services.clone();
        for entry in entries {
            match self.restore_service(entry, &services) {
                Ok(service) => {
                    services.insert(service.name.clone(), service);
                }
                Err(problem) => problems.push(problem),
            }
        }
        let new_table = Arc::new(RoutingTable::build(services));
        self.table.store(Arc::clone(&new_table));
        for problem in &problems {
            log_service_event("State entry skipped", "", problem);
        }
        problems
    }

    fn restore_service(
        &self,
        entry: PersistedService,
        services: &BTreeMap<String, Arc<Service>>,
    ) -> Result<Arc<Service>, String> {
        let name = entry.name.clone();
        let fail = |e: ProxyError| format!("service {name:?}: {e}");
        validate_service_name(&name).map_err(fail)?;
        let mut options = entry.options;
        options.normalize().map_err(fail)?;
        let existing = RoutingTable::build(services.clone());
        self.check_routes(&existing, &name, &options).map_err(fail)?;
        self.certs.prepare(&options).map_err(fail)?;
        let (pages, _) = Pages::load(options.error_pages.as_deref());
        let active = TargetGroup::start(&entry.targets, &options, self.workers).map_err(fail)?;
        let rollout = if entry.rollout_targets.is_empty() {
            None
        } else {
            Some(TargetGroup::start(&entry.rollout_targets, &options, self.workers).map_err(fail)?)
        };
        for group in std::iter::once(&active).chain(rollout.as_ref()) {
            // Admit the group once every target passed its threshold; until then requests wait for it. A
            // group retired first (replaced by a deploy) is admitted by `retire`, which ends this task.
            let weak = Arc::downgrade(group);
            let mut admission = group.admission.subscribe();
            let targets: Vec<Arc<Target>> = group.targets.clone();
            tokio::spawn(async move {
                let all_healthy = async {
                    for target in &targets {
                        let mut health = target.subscribe_health();
                        let _ = health.wait_for(|h| h.healthy).await;
                    }
                };
                tokio::select! {
                    () = all_healthy => {
                        if let Some(group) = weak.upgrade() {
                            group.admit();
                        }
                    }
                    _ = admission.wait_for(|admitted| *admitted) => {}
                }
            });
        }
        Ok(Arc::new(Service {
            id: self.service_id(&name),
            name,
            options: Arc::new(options),
            active,
            rollout,
            rollout_split: entry.rollout_split,
            pause: PauseControl::new(entry.pause),
            pages: Arc::new(pages),
        }))
    }
}

fn validate_service_name(name: &str) -> Result<(), ProxyError> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        return Err(ProxyError::invalid("service", name, "use letters, digits, '-', '_' and '.'"));
    }
    Ok(())
}

fn log_service_event(message: &str, service: &str, detail: &str) {
    let line = serde_json::json!({
        "time": super::observability::now_rfc3339(),
        "level": "INFO",
        "msg": message,
        "service": service,
        "detail": detail,
    });
    super::observability::log_event(&line);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(name: &str, hosts: &[&str], paths: &[&str]) -> Arc<Service> {
        let mut options = ServiceOptions {
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            path_prefixes: paths.iter().map(|p| p.to_string()).collect(),
            ..ServiceOptions::default()
        };
        options.normalize().unwrap();
        Arc::new(Service {
            name: name.to_string(),
            id: 1,
            options: Arc::new(options),
            active: Arc::new(TargetGroup {
                targets: vec![Target::new("127.0.0.1:1", 1).unwrap()],
                next: AtomicUsize::new(0),
                admitted: AtomicBool::new(true),
                admission: watch::channel(true).0,
                checkers: Mutex::new(Vec::new()),
            }),
            rollout: None,
            rollout_split: None,
            pause: PauseControl::new(PauseState::Running),
            pages: Arc::new(Pages::default()),
        })
    }

    #[test]
    fn routes_by_host_then_wildcard_then_default_longest_prefix_first() {
        let services = [
            service("app", &["app.example.com"], &[]),
            service("api", &["app.example.com"], &["/api"]),
            service("tenants", &["*.example.com"], &[]),
            service("fallback", &[], &[]),
        ];
        let table = RoutingTable::build(services.into_iter().map(|s| (s.name.clone(), s)).collect());
        let find = |host: &str, path: &str| table.find(host, path).map(|r| r.service.name.clone());
        assert_eq!(find("app.example.com", "/"), Some("app".into()));
        assert_eq!(find("APP.example.com:8080", "/api/users"), Some("api".into()));
        assert_eq!(find("app.example.com", "/api"), Some("api".into()));
        assert_eq!(find("app.example.com", "/apix"), Some("app".into()));
        assert_eq!(find("acme.example.com", "/"), Some("tenants".into()));
        assert_eq!(find("a.b.example.com", "/"), Some("fallback".into()));
        assert_eq!(find("other.org", "/x"), Some("fallback".into()));
    }

    #[test]
    fn unknown_host_without_default_has_no_route() {
        let services = [service("app", &["app.example.com"], &[])];
        let table = RoutingTable::build(services.into_iter().map(|s| (s.name.clone(), s)).collect());
        assert!(table.find("other.org", "/").is_none());
        assert_eq!(table.route_owner("app.example.com", "/", "new"), Some("app".into()));
        assert_eq!(table.route_owner("app.example.com", "/", "app"), None);
    }

    #[test]
    fn rollout_split_is_sticky_and_proportional() {
        let split = RolloutSplit { percent: 30, allowlist: vec!["vip".into()] };
        assert!(split.selects("vip"));
        let selected = (0..10_000).filter(|i| split.selects(&format!("account-{i}"))).count();
        assert!((2500..3500).contains(&selected), "{selected}");
        assert_eq!(split.selects("account-7"), split.selects("account-7"));
        assert!(!RolloutSplit { percent: 0, allowlist: vec![] }.selects("x"));
    }
}
