//! Automatic certificates over ACME (RFC 8555) with HTTP-01 and TLS-ALPN-01 challenges, and renewal.
//!
//! Hosts of services deployed with `--tls` and no certificate files are registered here; a background task
//! ([`AcmeManager::run`]) obtains a certificate for each host that has none (or whose certificate is in
//! the last third of its lifetime) and keeps them in `<state>/certs/<sha256 of the directory URL>/`, so a
//! restart serves the cached certificate at once and staging and production certificates never mix.
//! Challenges are tried in order (TLS-ALPN-01, then HTTP-01, like Go's autocert that kamal-proxy uses);
//! their answers are served by the proxy's own listeners through [`AcmeManager::http01_response`] and
//! [`AcmeManager::challenge_certificate`].
//!
//! The client trusts Let's Encrypt's roots (bundled), the system bundle when there is one, and an extra
//! root given with `--acme-ca-root` (a private CA, or pebble in tests).

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::{Method, StatusCode, header};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, pem::PemObject};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};
use tokio::sync::Notify;

use super::certified_key_from_der;
use crate::outbound_http::OutboundHttp;

const LETS_ENCRYPT_ROOTS: &str = include_str!("letsencrypt-roots.pem");
/// How often the manager looks for certificates to renew when nothing else wakes it.
const RENEWAL_CHECK: Duration = Duration::from_secs(3600);
/// Waits after a failed issuance, doubling up to the last entry.
const RETRY_DELAYS: [Duration; 5] = [
    Duration::from_secs(5),
    Duration::from_secs(30),
    Duration::from_secs(120),
    Duration::from_secs(600),
    Duration::from_secs(3600),
];
const CHALLENGE_TIMEOUT: Duration = Duration::from_secs(60);

/// Which challenge to answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChallengeKind {
    TlsAlpn01,
    Http01,
}

impl ChallengeKind {
    fn name(self) -> &'static str {
        match self {
            ChallengeKind::TlsAlpn01 => "tls-alpn-01",
            ChallengeKind::Http01 => "http-01",
        }
    }

    /// Parses `tls-alpn-01,http-01` (the order to try them in).
    pub fn parse_list(text: &str) -> Result<Vec<ChallengeKind>, String> {
        text.split(',')
            .filter(|t| !t.trim().is_empty())
            .map(|t| match t.trim() {
                "tls-alpn-01" => Ok(ChallengeKind::TlsAlpn01),
                "http-01" => Ok(ChallengeKind::Http01),
                other => Err(format!("unknown ACME challenge {other:?} (use tls-alpn-01 and/or http-01)")),
            })
            .collect()
    }
}

#[derive(Clone)]
struct Issued {
    certified: Arc<CertifiedKey>,
    not_before: u64,
    not_after: u64,
}

impl Issued {
    /// Renew in the last third of the lifetime (Let's Encrypt's 90 days: after 60).
    fn needs_renewal(&self, now: u64) -> bool {
        let lifetime = self.not_after.saturating_sub(self.not_before);
        now + lifetime / 3 >= self.not_after
    }
}

/// Registered hosts, issued certificates and pending challenge answers.
pub struct AcmeManager {
    directory: String,
    contact: Option<String>,
    cache_dir: Option<PathBuf>,
    ca_root: Option<PathBuf>,
    challenges: Vec<ChallengeKind>,
    /// host -> ACME directory (the default or a service's own, e.g. `--tls-staging`).
    hosts: Mutex<BTreeMap<String, String>>,
    certs: Mutex<HashMap<String, Issued>>,
    http_challenges: Mutex<HashMap<String, String>>,
    alpn_challenges: Mutex<HashMap<String, Arc<CertifiedKey>>>,
    wake: Notify,
}

impl Default for AcmeManager {
    fn default() -> AcmeManager {
        AcmeManager::new(String::new(), None, None, None)
    }
}

impl AcmeManager {
    pub fn new(
        directory: String,
        contact: Option<String>,
        cache_dir: Option<PathBuf>,
        ca_root: Option<PathBuf>,
    ) -> AcmeManager {
        AcmeManager {
            directory,
            contact,
            cache_dir,
            ca_root,
            challenges: vec![ChallengeKind::TlsAlpn01, ChallengeKind::Http01],
            hosts: Mutex::default(),
            certs: Mutex::default(),
            http_challenges: Mutex::default(),
            alpn_challenges: Mutex::default(),
            wake: Notify::new(),
        }
    }

    /// The challenges to try, in order.
    pub fn with_challenges(mut self, challenges: Vec<ChallengeKind>) -> AcmeManager {
        if !challenges.is_empty() {
            self.challenges = challenges;
        }
        self
    }

    /// Adds hosts that need certificates; a cached certificate is served at once, the rest are issued
    /// by [`AcmeManager::run`].
    pub fn register(&self, hosts: &[String], directory: Option<&str>) {
        let directory = directory.unwrap_or(&self.directory).to_string();
        let mut added = false;
        {
            let mut registered = lock(&self.hosts);
            for host in hosts {
                if registered.insert(host.clone(), directory.clone()).as_ref() != Some(&directory) {
                    added = true;
                }
            }
        }
        for host in hosts {
            if lock(&self.certs).contains_key(host) {
                continue;
            }
            if let Some(issued) = self.load_cached(host, &directory) {
                lock(&self.certs).insert(host.clone(), issued);
            }
        }
        if added {
            self.wake.notify_one();
        }
    }

    /// Forgets hosts no service wants any more.
    pub fn retain(&self, wanted: &[String]) {
        lock(&self.hosts).retain(|h, _| wanted.contains(h));
        lock(&self.certs).retain(|h, _| wanted.contains(h));
    }

    pub fn certificate(&self, host: &str) -> Option<Arc<CertifiedKey>> {
        lock(&self.certs).get(host).map(|i| Arc::clone(&i.certified))
    }

    pub fn any_certificate(&self) -> Option<Arc<CertifiedKey>> {
        let certs = lock(&self.certs);
        let mut hosts: Vec<_> = certs.keys().collect();
        hosts.sort();
        hosts.first().and_then(|h| certs.get(*h)).map(|i| Arc::clone(&i.certified))
    }

    /// The key authorization for an HTTP-01 token, while its challenge is pending.
    pub fn http01_response(&self, token: &str) -> Option<String> {
        lock(&self.http_challenges).get(token).cloned()
    }

    /// The self-signed challenge certificate for a TLS-ALPN-01 validation of `host`.
    pub fn challenge_certificate(&self, host: &str) -> Option<Arc<CertifiedKey>> {
        lock(&self.alpn_challenges).get(&host.to_ascii_lowercase()).cloned()
    }

    /// Issues and renews certificates for registered hosts, forever.
    pub async fn run(&self) {
        let mut failures: HashMap<String, (usize, SystemTime)> = HashMap::new();
        loop {
            let now = unix_now();
            let due: Vec<(String, String)> = {
                let hosts = lock(&self.hosts);
                let certs = lock(&self.certs);
                hosts
                    .iter()
                    .filter(|(host, _)| certs.get(*host).is_none_or(|issued| issued.needs_renewal(now)))
                    .filter(|(host, _)| failures.get(*host).is_none_or(|(_, retry_at)| SystemTime::now() >= *retry_at))
                    .map(|(h, d)| (h.clone(), d.clone()))
                    .collect()
            };
            for (host, directory) in due {
                match self.issue(&host, &directory).await {
                    Ok((issued, pem, kind)) => {
                        failures.remove(&host);
                        self.store_cached(&host, &directory, &pem);
                        lock(&self.certs).insert(host.clone(), issued);
                        log("Certificate issued", &host, &directory, None);
                        log_challenge(&host, kind);
                    }
                    Err(error) => {
                        let count = failures.get(&host).map_or(0, |(n, _)| *n);
                        let delay = RETRY_DELAYS[count.min(RETRY_DELAYS.len() - 1)];
                        failures.insert(host.clone(), (count + 1, SystemTime::now() + delay));
                        log(
                            "Certificate not issued",
                            &host,
                            &directory,
                            Some(&format!("{error}; retrying in {delay:?}")),
                        );
                    }
                }
            }
            let next_retry =
                failures.values().map(|(_, at)| at.duration_since(SystemTime::now()).unwrap_or_default()).min();
            let wait = next_retry.unwrap_or(RENEWAL_CHECK).min(RENEWAL_CHECK);
            let _ = tokio::time::timeout(wait, self.wake.notified()).await;
        }
    }

    /// One issuance: account, order, each challenge kind in turn until one is valid, finalize, download.
    async fn issue(&self, host: &str, directory_url: &str) -> Result<(Issued, String, ChallengeKind), String> {
        let client = AcmeClient::connect(
            directory_url,
            self.ca_root.as_deref(),
            self.account_key_path(directory_url),
            self.contact.as_deref(),
        )
        .await?;
        let mut last_error = String::from("no challenge kinds configured");
        for kind in &self.challenges {
            match self.issue_with(&client, host, *kind).await {
                Ok((issued, pem)) => return Ok((issued, pem, *kind)),
                Err(error) => last_error = format!("{}: {error}", kind.name()),
            }
        }
        Err(last_error)
    }

    async fn issue_with(
        &self,
        client: &AcmeClient,
        host: &str,
        kind: ChallengeKind,
    ) -> Result<(Issued, String), String> {
        let (order_url, order) = client
            .post(&client.directory.new_order, &serde_json::json!({"identifiers": [{"type": "dns", "value": host}]}))
            .await?;
        let order_url = order_url.ok_or("the CA returned no order URL")?;
        for authorization in order["authorizations"].as_array().cloned().unwrap_or_default() {
            let url = authorization.as_str().ok_or("bad authorization URL")?;
            self.authorize(client, host, url, kind).await?;
        }
        let cert_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| e.to_string())?;
        let params = rcgen::CertificateParams::new(vec![host.to_string()]).map_err(|e| e.to_string())?;
        let csr = params.serialize_request(&cert_key).map_err(|e| e.to_string())?;
        let finalize = order["finalize"].as_str().ok_or("order without finalize URL")?;
        client.post(finalize, &serde_json::json!({"csr": URL_SAFE_NO_PAD.encode(csr.der())})).await?;
        let order = client.poll(&order_url, &["valid"], &["invalid"]).await?;
        let certificate_url = order["certificate"].as_str().ok_or("valid order without certificate URL")?;
        let chain_pem = client.post_as_get_text(certificate_url).await?;
        let key_pem = cert_key.serialize_pem();
        let issued = issued_from_pem(&chain_pem, &key_pem)?;
        Ok((issued, format!("{key_pem}{chain_pem}")))
    }

    async fn authorize(&self, client: &AcmeClient, host: &str, url: &str, kind: ChallengeKind) -> Result<(), String> {
        let (_, authorization) = client.post_as_get(url).await?;
        if authorization["status"] == "valid" {
            return Ok(());
        }
        let challenge = authorization["challenges"]
            .as_array()
            .and_then(|all| all.iter().find(|c| c["type"] == kind.name()))
            .ok_or_else(|| format!("the CA offers no {} challenge for {host}", kind.name()))?;
        let token = challenge["token"].as_str().ok_or("challenge without token")?.to_string();
        let challenge_url = challenge["url"].as_str().ok_or("challenge without URL")?.to_string();
        let key_authorization = format!("{token}.{}", client.thumbprint);
        match kind {
            ChallengeKind::Http01 => {
                lock(&self.http_challenges).insert(token.clone(), key_authorization.clone());
            }
            ChallengeKind::TlsAlpn01 => {
                let certificate = alpn_challenge_certificate(host, &key_authorization)?;
                lock(&self.alpn_challenges).insert(host.to_ascii_lowercase(), Arc::new(certificate));
            }
        }
        let result = async {
            client.post(&challenge_url, &serde_json::json!({})).await?;
            client.poll(url, &["valid"], &["invalid", "deactivated", "expired", "revoked"]).await
        }
        .await;
        lock(&self.http_challenges).remove(&token);
        lock(&self.alpn_challenges).remove(&host.to_ascii_lowercase());
        result.map(|_| ())
    }

    fn cache_dir_for(&self, directory: &str) -> Option<PathBuf> {
        let digest = Sha256::digest(directory.as_bytes());
        let name: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
        self.cache_dir.as_ref().map(|d| d.join(name))
    }

    fn account_key_path(&self, directory: &str) -> Option<PathBuf> {
        self.cache_dir_for(directory).map(|d| d.join("account.key"))
    }

    fn load_cached(&self, host: &str, directory: &str) -> Option<Issued> {
        let path = self.cache_dir_for(directory)?.join(format!("{host}.pem"));
        let pem = std::fs::read_to_string(&path).ok()?;
        match issued_from_pem(&pem, &pem) {
            Ok(issued) => Some(issued),
            Err(error) => {
                log("Cached certificate unusable", host, directory, Some(&format!("{}: {error}", path.display())));
                None
            }
        }
    }

    fn store_cached(&self, host: &str, directory: &str, pem: &str) {
        let Some(dir) = self.cache_dir_for(directory) else { return };
        let result = (|| {
            std::fs::create_dir_all(&dir)?;
            let path = dir.join(format!("{host}.pem"));
            let temp = dir.join(format!(".{host}.pem.tmp"));
            write_private(&temp, pem.as_bytes())?;
            std::fs::rename(&temp, &path)
        })();
        if let Err(error) = result {
            log("Certificate not cached", host, directory, Some(&error.to_string()));
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

fn log(message: &str, host: &str, directory: &str, error: Option<&str>) {
    crate::proxy::observability::log_event(&serde_json::json!({
        "time": crate::proxy::observability::now_rfc3339(),
        "level": if error.is_some() { "WARN" } else { "INFO" },
        "msg": message,
        "host": host,
        "directory": directory,
        "error": error,
    }));
}

fn log_challenge(host: &str, kind: ChallengeKind) {
    crate::proxy::observability::log_event(&serde_json::json!({
        "time": crate::proxy::observability::now_rfc3339(),
        "level": "INFO",
        "msg": "Challenge passed",
        "host": host,
        "challenge": kind.name(),
    }));
}

/// Writes a file readable only by the proxy's user (it holds a private key).
fn write_private(path: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    file.write_all(data)?;
    file.sync_all()
}

/// A certificate chain and key (PEM) as a serving key, with the leaf's validity period.
fn issued_from_pem(chain_pem: &str, key_pem: &str) -> Result<Issued, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("bad certificate PEM: {e}"))?;
    let leaf = chain.first().ok_or("no certificate in the chain")?;
    let (not_before, not_after) = validity(leaf).ok_or("cannot read the certificate's validity")?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| format!("bad key PEM: {e}"))?;
    let certified = certified_key_from_der(chain, key)?;
    Ok(Issued { certified: Arc::new(certified), not_before, not_after })
}

/// The TLS-ALPN-01 certificate (RFC 8737): self-signed for `host`, with the acmeIdentifier extension
/// holding the SHA-256 of the key authorization.
fn alpn_challenge_certificate(host: &str, key_authorization: &str) -> Result<CertifiedKey, String> {
    let digest = Sha256::digest(key_authorization.as_bytes());
    let mut params = rcgen::CertificateParams::new(vec![host.to_string()]).map_err(|e| e.to_string())?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(&digest)];
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| e.to_string())?;
    let certificate = params.self_signed(&key).map_err(|e| e.to_string())?;
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    // Not `CertifiedKey::from_der`: its consistency check parses the certificate with webpki, which
    // rejects the critical acmeIdentifier extension that this certificate exists to carry.
    let signing_key = rustls::crypto::ring::sign::any_ecdsa_type(&key_der).map_err(|e| e.to_string())?;
    Ok(CertifiedKey::new(vec![certificate.der().clone()], signing_key))
}

/// The ACME directory's endpoints.
struct Directory {
    new_nonce: String,
    new_account: String,
    new_order: String,
}

/// An ACME account session: signed requests (JWS, ES256) over HTTPS.
struct AcmeClient {
    tls: OutboundHttp,
    directory: Directory,
    key: Arc<dyn rustls::sign::SigningKey>,
    jwk: serde_json::Value,
    thumbprint: String,
    account_url: Mutex<Option<String>>,
    nonce: Mutex<Option<String>>,
}

impl AcmeClient {
    async fn connect(
        directory_url: &str,
        extra_root: Option<&std::path::Path>,
        account_key_path: Option<PathBuf>,
        contact: Option<&str>,
    ) -> Result<AcmeClient, String> {
        let tls = tls_connector(extra_root)?;
        let (status, _, body) = request(&tls, Method::GET, directory_url, None).await?;
        if !status.is_success() {
            return Err(format!("directory {directory_url} answered {status}"));
        }
        let directory: serde_json::Value = serde_json::from_slice(&body).map_err(|e| format!("bad directory: {e}"))?;
        let field = |name: &str| directory[name].as_str().map(str::to_string).ok_or(format!("directory has no {name}"));
        let directory = Directory {
            new_nonce: field("newNonce")?,
            new_account: field("newAccount")?,
            new_order: field("newOrder")?,
        };

        let key_pair = load_or_create_account_key(account_key_path.as_deref())?;
        let point = key_pair.public_key_raw();
        if point.len() != 65 || point[0] != 4 {
            return Err("account key is not an uncompressed P-256 point".to_string());
        }
        let (x, y) = (URL_SAFE_NO_PAD.encode(&point[1..33]), URL_SAFE_NO_PAD.encode(&point[33..]));
        // RFC 7638: the members in lexicographic order, no whitespace.
        let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
        let thumbprint = URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()));
        let jwk = serde_json::json!({"crv": "P-256", "kty": "EC", "x": x, "y": y});
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_pair.serialize_der()));
        let key = rustls::crypto::ring::sign::any_ecdsa_type(&key_der).map_err(|e| format!("account key: {e}"))?;
        let client =
            AcmeClient { tls, directory, key, jwk, thumbprint, account_url: Mutex::new(None), nonce: Mutex::new(None) };

        let mut account = serde_json::json!({"termsOfServiceAgreed": true});
        if let Some(contact) = contact {
            account["contact"] = serde_json::json!([format!("mailto:{contact}")]);
        }
        let (location, _) = client.post(&client.directory.new_account, &account).await?;
        *lock(&client.account_url) = Some(location.ok_or("the CA returned no account URL")?);
        Ok(client)
    }

    async fn fresh_nonce(&self) -> Result<String, String> {
        if let Some(nonce) = lock(&self.nonce).take() {
            return Ok(nonce);
        }
        let (_, headers, _) = request(&self.tls, Method::HEAD, &self.directory.new_nonce, None).await?;
        replay_nonce(&headers).ok_or_else(|| "the CA returned no nonce".to_string())
    }

    /// A signed POST; retries once on `badNonce` (CAs reject nonces at random, pebble on purpose).
    async fn post_raw(
        &self,
        url: &str,
        payload: Option<&serde_json::Value>,
    ) -> Result<(Option<String>, Bytes), String> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let nonce = self.fresh_nonce().await?;
            let mut protected = serde_json::json!({"alg": "ES256", "nonce": nonce, "url": url});
            match lock(&self.account_url).clone() {
                Some(kid) => protected["kid"] = kid.into(),
                None => protected["jwk"] = self.jwk.clone(),
            }
            let protected = URL_SAFE_NO_PAD.encode(protected.to_string());
            let payload = payload.map(|p| URL_SAFE_NO_PAD.encode(p.to_string())).unwrap_or_default();
            let signer = self
                .key
                .choose_scheme(&[rustls::SignatureScheme::ECDSA_NISTP256_SHA256])
                .ok_or("account key cannot sign ES256")?;
            let signature = signer.sign(format!("{protected}.{payload}").as_bytes()).map_err(|e| e.to_string())?;
            let signature = URL_SAFE_NO_PAD.encode(ecdsa_der_to_raw(&signature).ok_or("bad ECDSA signature")?);
            let body =
                serde_json::json!({"protected": protected, "payload": payload, "signature": signature}).to_string();
            let (status, headers, body) = request(&self.tls, Method::POST, url, Some(body)).await?;
            *lock(&self.nonce) = replay_nonce(&headers);
            if status.is_success() {
                let location = headers.get(header::LOCATION).and_then(|v| v.to_str().ok()).map(str::to_string);
                return Ok((location, body));
            }
            let problem: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            if problem["type"] == "urn:ietf:params:acme:error:badNonce" && attempts < 5 {
                continue;
            }
            return Err(format!("{url} answered {status}: {}", String::from_utf8_lossy(&body)));
        }
    }

    async fn post(
        &self,
        url: &str,
        payload: &serde_json::Value,
    ) -> Result<(Option<String>, serde_json::Value), String> {
        let (location, body) = self.post_raw(url, Some(payload)).await?;
        let value = if body.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&body).map_err(|e| e.to_string())?
        };
        Ok((location, value))
    }

    async fn post_as_get(&self, url: &str) -> Result<(Option<String>, serde_json::Value), String> {
        let (location, body) = self.post_raw(url, None).await?;
        Ok((location, serde_json::from_slice(&body).map_err(|e| e.to_string())?))
    }

    async fn post_as_get_text(&self, url: &str) -> Result<String, String> {
        let (_, body) = self.post_raw(url, None).await?;
        String::from_utf8(body.to_vec()).map_err(|e| e.to_string())
    }

    /// Polls an order or authorization until its status is one of `done` (or fails on one of `failed`).
    async fn poll(&self, url: &str, done: &[&str], failed: &[&str]) -> Result<serde_json::Value, String> {
        let deadline = tokio::time::Instant::now() + CHALLENGE_TIMEOUT;
        let mut wait = Duration::from_millis(100);
        loop {
            let (_, value) = self.post_as_get(url).await?;
            let status = value["status"].as_str().unwrap_or("");
            if done.contains(&status) {
                return Ok(value);
            }
            if failed.contains(&status) {
                return Err(format!("{status}: {}", value));
            }
            if tokio::time::Instant::now() + wait > deadline {
                return Err(format!("still {status} after {CHALLENGE_TIMEOUT:?}"));
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(2));
        }
    }
}

fn replay_nonce(headers: &http::HeaderMap) -> Option<String> {
    headers.get("replay-nonce").and_then(|v| v.to_str().ok()).map(str::to_string)
}

fn load_or_create_account_key(path: Option<&std::path::Path>) -> Result<rcgen::KeyPair, String> {
    if let Some(path) = path
        && let Ok(pem) = std::fs::read_to_string(path)
    {
        return rcgen::KeyPair::from_pem(&pem).map_err(|e| format!("account key {}: {e}", path.display()));
    }
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| e.to_string())?;
    if let Some(path) = path {
        let stored = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| write_private(path, key.serialize_pem().as_bytes()));
        if let Err(error) = stored {
            return Err(format!("cannot store the ACME account key at {}: {error}", path.display()));
        }
    }
    Ok(key)
}

fn tls_connector(extra_root: Option<&std::path::Path>) -> Result<OutboundHttp, String> {
    let extra = match extra_root {
        Some(path) => std::fs::read(path).map_err(|e| format!("cannot read --acme-ca-root {}: {e}", path.display()))?,
        None => Vec::new(),
    };
    OutboundHttp::new("berth-proxy", &[LETS_ENCRYPT_ROOTS.as_bytes(), &extra])
}

/// One HTTPS request on a fresh connection (ACME traffic is a handful of requests per certificate).
async fn request(
    tls: &OutboundHttp,
    method: Method,
    url: &str,
    body: Option<String>,
) -> Result<(StatusCode, http::HeaderMap, Bytes), String> {
    if !url.starts_with("https://") {
        return Err(format!("ACME URLs must be https: {url}"));
    }
    let headers = match body {
        Some(_) => vec![(header::CONTENT_TYPE, "application/jose+json".to_string())],
        None => Vec::new(),
    };
    let answer = tls
        .send(method, url, &headers, body.map(Bytes::from), Duration::from_secs(30))
        .await
        .map_err(|error| format!("{url}: {error}"))?;
    Ok((answer.status, answer.headers, answer.body))
}

/// DER `SEQUENCE { INTEGER r, INTEGER s }` -> the 64-byte `r || s` JWS wants.
fn ecdsa_der_to_raw(der: &[u8]) -> Option<[u8; 64]> {
    let mut reader = DerReader { data: der };
    let (tag, sequence) = reader.next()?;
    if tag != 0x30 {
        return None;
    }
    let mut inner = DerReader { data: sequence };
    let mut raw = [0u8; 64];
    for half in 0..2 {
        let (tag, integer) = inner.next()?;
        if tag != 0x02 {
            return None;
        }
        let trimmed: &[u8] = &integer[integer.iter().position(|b| *b != 0).unwrap_or(integer.len())..];
        if trimmed.len() > 32 {
            return None;
        }
        raw[half * 32 + 32 - trimmed.len()..half * 32 + 32].copy_from_slice(trimmed);
    }
    Some(raw)
}

/// A minimal DER reader: enough to walk to a certificate's validity and to split ECDSA signatures.
struct DerReader<'a> {
    data: &'a [u8],
}

impl<'a> DerReader<'a> {
    /// The next element's tag and contents.
    fn next(&mut self) -> Option<(u8, &'a [u8])> {
        let (&tag, rest) = self.data.split_first()?;
        let (&first, rest) = rest.split_first()?;
        let (length, rest) = if first < 0x80 {
            (first as usize, rest)
        } else {
            let count = (first & 0x7f) as usize;
            if count == 0 || count > 4 || rest.len() < count {
                return None;
            }
            (rest[..count].iter().fold(0usize, |n, b| (n << 8) | *b as usize), &rest[count..])
        };
        if rest.len() < length {
            return None;
        }
        self.data = &rest[length..];
        Some((tag, &rest[..length]))
    }
}

/// The certificate's notBefore and notAfter, as Unix seconds.
fn validity(certificate: &[u8]) -> Option<(u64, u64)> {
    let (_, certificate) = DerReader { data: certificate }.next()?;
    let (_, tbs) = DerReader { data: certificate }.next()?;
    let mut fields = DerReader { data: tbs };
    let (mut tag, _) = fields.next()?;
    if tag == 0xa0 {
        // Explicit version; the serial number follows.
        tag = fields.next()?.0;
    }
    let _ = tag;
    fields.next()?; // signature algorithm
    fields.next()?; // issuer
    let (_, validity) = fields.next()?;
    let mut times = DerReader { data: validity };
    let (before_tag, before) = times.next()?;
    let (after_tag, after) = times.next()?;
    Some((asn1_time(before_tag, before)?, asn1_time(after_tag, after)?))
}

/// UTCTime (`YYMMDDHHMMSSZ`) or GeneralizedTime (`YYYYMMDDHHMMSSZ`) to Unix seconds.
fn asn1_time(tag: u8, bytes: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(bytes).ok()?.strip_suffix('Z')?;
    let (year, rest) = match tag {
        0x17 => {
            let yy: i64 = text.get(..2)?.parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, text.get(2..)?)
        }
        0x18 => (text.get(..4)?.parse().ok()?, text.get(4..)?),
        _ => return None,
    };
    let number = |range: std::ops::Range<usize>| rest.get(range).and_then(|t| t.parse::<i64>().ok());
    let (month, day, hour, minute, second) =
        (number(0..2)?, number(2..4)?, number(4..6)?, number(6..8)?, number(8..10)?);
    let days = days_from_civil(year, month, day);
    u64::try_from(days * 86_400 + hour * 3600 + minute * 60 + second).ok()
}

/// (year, month, day) to days since 1970-01-01 (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ecdsa_signatures_convert_to_jws_form() {
        // r has a leading zero byte (high bit set), s is short.
        let mut der = vec![0x30, 0x00, 0x02, 33, 0x00];
        der.extend([0x80; 32]);
        der.extend([0x02, 2, 0x01, 0x02]);
        der[1] = (der.len() - 2) as u8;
        let raw = ecdsa_der_to_raw(&der).unwrap();
        assert_eq!(&raw[..32], &[0x80; 32]);
        assert_eq!(&raw[62..], &[0x01, 0x02]);
        assert!(raw[32..62].iter().all(|b| *b == 0));
    }

    #[test]
    fn certificate_validity_is_read() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["a.test".to_string()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2026, 1, 2);
        params.not_after = rcgen::date_time_ymd(2026, 4, 2);
        let certificate = params.self_signed(&key).unwrap();
        let (before, after) = validity(certificate.der()).unwrap();
        assert_eq!(before, 1_767_312_000);
        assert_eq!(after - before, 90 * 86_400);
        let issued = Issued {
            certified: Arc::new(alpn_challenge_certificate("a.test", "t.k").unwrap()),
            not_before: before,
            not_after: after,
        };
        assert!(!issued.needs_renewal(before + 59 * 86_400));
        assert!(issued.needs_renewal(before + 61 * 86_400));
    }

    #[test]
    fn challenge_lists_parse() {
        assert_eq!(
            ChallengeKind::parse_list("http-01,tls-alpn-01").unwrap(),
            vec![ChallengeKind::Http01, ChallengeKind::TlsAlpn01]
        );
        assert!(ChallengeKind::parse_list("dns-01").is_err());
    }
}
