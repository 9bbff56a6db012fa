//! Automatic certificates over ACME (RFC 8555) with HTTP-01 and TLS-ALPN-01 challenges, and renewal.
//!
//! Hosts of services deployed with `--tls` and no certificate files are registered here. Issued
//! certificates are served by SNI and answered challenges are looked up by token (HTTP-01, on the HTTP port)
//! or by server name (TLS-ALPN-01, on the HTTPS port).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use rustls::sign::CertifiedKey;

/// Registered hosts, issued certificates and pending challenge answers.
#[derive(Default)]
#[allow(dead_code)] // The issuer that reads the directory settings lands in the next increment.
pub struct AcmeManager {
    directory: String,
    contact: Option<String>,
    cache_dir: Option<PathBuf>,
    ca_root: Option<PathBuf>,
    hosts: Mutex<HashSet<String>>,
    certs: Mutex<HashMap<String, Arc<CertifiedKey>>>,
    http_challenges: Mutex<HashMap<String, String>>,
    alpn_challenges: Mutex<HashMap<String, Arc<CertifiedKey>>>,
}

impl AcmeManager {
    pub fn new(
        directory: String,
        contact: Option<String>,
        cache_dir: Option<PathBuf>,
        ca_root: Option<PathBuf>,
    ) -> AcmeManager {
        AcmeManager { directory, contact, cache_dir, ca_root, ..AcmeManager::default() }
    }

    /// Adds hosts that need certificates.
    pub fn register(&self, hosts: &[String], _directory: Option<&str>) {
        let mut registered = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        registered.extend(hosts.iter().cloned());
    }

    /// Forgets hosts no service wants any more.
    pub fn retain(&self, wanted: &[String]) {
        self.hosts.lock().unwrap_or_else(|e| e.into_inner()).retain(|h| wanted.contains(h));
        self.certs.lock().unwrap_or_else(|e| e.into_inner()).retain(|h, _| wanted.contains(h));
    }

    pub fn certificate(&self, host: &str) -> Option<Arc<CertifiedKey>> {
        self.certs.lock().unwrap_or_else(|e| e.into_inner()).get(host).cloned()
    }

    pub fn any_certificate(&self) -> Option<Arc<CertifiedKey>> {
        let certs = self.certs.lock().unwrap_or_else(|e| e.into_inner());
        let mut hosts: Vec<_> = certs.keys().collect();
        hosts.sort();
        hosts.first().and_then(|h| certs.get(*h)).cloned()
    }

    /// The key authorization for an HTTP-01 token, while its challenge is pending.
    pub fn http01_response(&self, token: &str) -> Option<String> {
        self.http_challenges.lock().unwrap_or_else(|e| e.into_inner()).get(token).cloned()
    }

    /// The self-signed challenge certificate for a TLS-ALPN-01 validation of `host`.
    pub fn challenge_certificate(&self, host: &str) -> Option<Arc<CertifiedKey>> {
        self.alpn_challenges.lock().unwrap_or_else(|e| e.into_inner()).get(&host.to_ascii_lowercase()).cloned()
    }
}
