//! berth's own outgoing HTTP requests — the proxy's ACME traffic, the daemon's calls to GitHub's API,
//! notification webhooks and Slack — one request per connection (these are a handful per deploy or
//! certificate), over TLS with the system's CA bundle plus any roots the caller adds.
//!
//! Errors never contain the request's URL: a Slack webhook's path is its secret, so callers name the target.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};

/// Debian's (and most distributions') bundle of trusted CA certificates.
const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Most of an answer's body kept (the callers read small JSON documents or nothing).
const MAX_BODY: usize = 1024 * 1024;

/// Sends requests; cheap to clone.
#[derive(Clone)]
pub struct OutboundHttp {
    tls: tokio_rustls::TlsConnector,
    user_agent: &'static str,
}

/// An answer.
#[derive(Debug)]
pub struct OutboundResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl OutboundHttp {
    /// A client trusting the system's CA bundle and the PEM certificates in `extra_roots`.
    pub fn new(user_agent: &'static str, extra_roots: &[&[u8]]) -> Result<OutboundHttp, String> {
        let mut roots = rustls::RootCertStore::empty();
        let mut add_pem = |pem: &[u8]| {
            for cert in CertificateDer::pem_slice_iter(pem).flatten() {
                let _ = roots.add(cert);
            }
        };
        if let Ok(bundle) = std::fs::read(SYSTEM_BUNDLE) {
            add_pem(&bundle);
        }
        for pem in extra_roots {
            add_pem(pem);
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(OutboundHttp { tls: tokio_rustls::TlsConnector::from(Arc::new(config)), user_agent })
    }

    /// One request on a fresh connection, within `timeout` (connecting, sending and reading the answer).
    /// `http://` URLs are sent in the clear (local endpoints, tests); redirects are not followed.
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(HeaderName, String)],
        body: Option<Bytes>,
        timeout: Duration,
    ) -> Result<OutboundResponse, String> {
        let uri: http::Uri = url.parse().map_err(|_| "not a valid URL".to_string())?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err("not an http(s) URL".to_string()),
        };
        let host = uri.host().ok_or("no host in the URL")?.trim_start_matches('[').trim_end_matches(']').to_string();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let attempt = async {
            let stream = tokio::net::TcpStream::connect((host.as_str(), port))
                .await
                .map_err(|e| format!("connecting to {host}:{port}: {e}"))?;
            let path = uri.path_and_query().map_or("/", |p| p.as_str());
            let authority = uri.authority().map_or(host.as_str(), |a| a.as_str());
            let mut builder = Request::builder()
                .method(method)
                .uri(path)
                .header(header::HOST, authority)
                .header(header::USER_AGENT, self.user_agent);
            for (name, value) in headers {
                let value = HeaderValue::from_str(value).map_err(|_| format!("the {name} header is not valid"))?;
                builder = builder.header(name, value);
            }
            let request = builder.body(Full::new(body.unwrap_or_default())).map_err(|e| e.to_string())?;
            if tls {
                let name = ServerName::try_from(host.clone()).map_err(|e| e.to_string())?;
                let stream = self.tls.connect(name, stream).await.map_err(|e| format!("TLS with {host}: {e}"))?;
                exchange(TokioIo::new(stream), request).await
            } else {
                exchange(TokioIo::new(stream), request).await
            }
        };
        tokio::time::timeout(timeout, attempt).await.map_err(|_| format!("no answer within {} s", timeout.as_secs()))?
    }
}

async fn exchange<S>(io: TokioIo<S>, request: Request<Full<Bytes>>) -> Result<OutboundResponse, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake::<_, Full<Bytes>>(io).await.map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
    let (parts, body) = response.into_parts();
    let body = Limited::new(body, MAX_BODY).collect().await.map_err(|e| format!("reading the answer: {e}"))?.to_bytes();
    Ok(OutboundResponse { status: parts.status, headers: parts.headers, body })
}
