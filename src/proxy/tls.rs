//! TLS: a certificate per host, chosen by SNI. Certificates come from files (`--tls-certificate-path`) or
//! from an ACME CA (see [`acme`]); the store is swapped whole, so handshakes read it without a lock.

pub mod acme;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::ProxyError;
use super::options::ServiceOptions;
use super::router::RoutingTable;

/// ALPN protocol of the TLS-ALPN-01 challenge.
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// Certificates by host name (`*.example.com` entries serve one subdomain level).
#[derive(Default)]
pub struct CertStore {
    certs: ArcSwap<HashMap<String, Arc<CertifiedKey>>>,
    changes: Mutex<()>,
    /// Issues and renews certificates for hosts of services with `--tls` and no certificate files.
    pub acme: acme::AcmeManager,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertStore").field("hosts", &self.certs.load().keys().collect::<Vec<_>>()).finish()
    }
}

impl CertStore {
    pub fn new(acme: acme::AcmeManager) -> CertStore {
        CertStore { certs: ArcSwap::default(), changes: Mutex::new(()), acme }
    }

    /// Makes the certificates a service needs available before it is installed: loads its files, or
    /// registers its hosts for ACME. A bad file fails the deploy (and nothing is switched).
    pub fn prepare(&self, options: &ServiceOptions) -> Result<(), ProxyError> {
        if !options.tls {
            return Ok(());
        }
        match (&options.tls_certificate_path, &options.tls_private_key_path) {
            (Some(cert), Some(key)) => {
                let host = options.hosts.first().cloned().unwrap_or_default();
                let certified = load_certified_key(cert, key).map_err(|reason| ProxyError::Tls { host, reason })?;
                let hosts = if options.hosts.is_empty() { vec![String::new()] } else { options.hosts.clone() };
                self.insert(&hosts, Arc::new(certified));
                Ok(())
            }
            _ => {
                self.acme.register(&options.hosts, options.tls_acme_directory.as_deref());
                Ok(())
            }
        }
    }

    /// Keeps ACME certificates issued and renewed for as long as the proxy runs.
    pub async fn run_acme(self: Arc<Self>) {
        self.acme.run().await
    }

    /// Installs one certificate for several hosts.
    pub fn insert(&self, hosts: &[String], certified: Arc<CertifiedKey>) {
        let _change = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        let mut certs = (**self.certs.load()).clone();
        for host in hosts {
            certs.insert(host.clone(), Arc::clone(&certified));
        }
        self.certs.store(Arc::new(certs));
    }

    /// Forgets certificates of hosts that no TLS service uses any more.
    pub fn retain_for(&self, table: &RoutingTable) {
        let mut wanted: Vec<String> = Vec::new();
        for service in table.services.values().filter(|s| s.options.tls) {
            if service.options.hosts.is_empty() {
                wanted.push(String::new());
            }
            wanted.extend(service.options.hosts.iter().cloned());
        }
        let _change = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        let certs = self.certs.load();
        if certs.keys().all(|host| wanted.contains(host)) {
            return;
        }
        let kept =
            certs.iter().filter(|(host, _)| wanted.contains(host)).map(|(h, c)| (h.clone(), Arc::clone(c))).collect();
        self.certs.store(Arc::new(kept));
        self.acme.retain(&wanted);
    }

    /// The certificate for a server name: exact, then `*.parent`, then a catch-all (a service without
    /// hosts), then any certificate (clients without SNI, e.g. load-balancer health checks).
    pub fn find(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let certs = self.certs.load();
        if let Some(name) = server_name.map(|n| n.to_ascii_lowercase()) {
            if let Some(cert) = certs.get(&name) {
                return Some(Arc::clone(cert));
            }
            if let Some(cert) = self.acme.certificate(&name) {
                return Some(cert);
            }
            if let Some((_, parent)) = name.split_once('.')
                && let Some(cert) = certs.get(&format!("*.{parent}"))
            {
                return Some(Arc::clone(cert));
            }
            if let Some(cert) = certs.get("") {
                return Some(Arc::clone(cert));
            }
            return None;
        }
        let mut hosts: Vec<_> = certs.keys().collect();
        hosts.sort();
        hosts.first().and_then(|h| certs.get(*h)).cloned().or_else(|| self.acme.any_certificate())
    }
}

/// Chooses the certificate for each handshake (and answers TLS-ALPN-01 challenges).
#[derive(Debug)]
pub struct CertResolver {
    pub store: Arc<CertStore>,
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let is_challenge = hello.alpn().is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS_ALPN));
        if is_challenge {
            return hello.server_name().and_then(|name| self.store.acme.challenge_certificate(name));
        }
        self.store.find(hello.server_name())
    }
}

/// The rustls server configuration: SNI resolver, ALPN h2, http/1.1 and acme-tls/1.
pub fn server_config(store: Arc<CertStore>) -> Arc<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(CertResolver { store }));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), ACME_TLS_ALPN.to_vec()];
    Arc::new(config)
}

/// Reads a PEM certificate chain and private key into a signing key.
pub fn load_certified_key(cert_path: &str, key_path: &str) -> Result<CertifiedKey, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
        .map_err(|e| format!("cannot read certificate {cert_path}: {e}"))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("bad certificate PEM in {cert_path}: {e}"))?;
    if chain.is_empty() {
        return Err(format!("no certificate found in {cert_path}"));
    }
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| format!("cannot read private key {key_path}: {e}"))?;
    certified_key_from_der(chain, key)
}

/// A signing key for a DER chain and key (ring provider).
pub fn certified_key_from_der(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<CertifiedKey, String> {
    let provider = rustls::crypto::ring::default_provider();
    CertifiedKey::from_der(chain, key, &provider)
        .map_err(|e| format!("certificate and key do not form a usable pair: {e}"))
}
