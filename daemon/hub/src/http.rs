//! A small HTTP/1.1 client for the Hub: one connection per request (plain TCP or rustls with
//! the system's roots), redirects followed (relative ones too), the token sent only to the
//! Hub's own address — never to the storage host a `resolve` redirects to — and every wait
//! bounded.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::HubError;

/// Connecting (TCP and TLS) gives up after this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// Waiting for response headers, or for the next piece of a body, gives up after this long.
pub(crate) const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Redirects followed per request.
const MAX_REDIRECTS: usize = 10;
/// An API answer (a file list) larger than this is refused.
const MAX_JSON_BYTES: usize = 32 << 20;

/// The client: the Hub's address, the token and the TLS configuration.
#[derive(Clone)]
pub(crate) struct Http {
    endpoint: Uri,
    token: Option<String>,
    tls: Arc<rustls::ClientConfig>,
}

fn tls_config() -> Result<Arc<rustls::ClientConfig>, HubError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| HubError::http("TLS", e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Io for T {}

fn same_origin(a: &Uri, b: &Uri) -> bool {
    a.scheme() == b.scheme() && a.authority() == b.authority()
}

/// `location` (absolute, or a path on `base`'s host) as an absolute address.
pub(crate) fn resolve_location(base: &Uri, location: &str) -> Result<Uri, String> {
    if location.starts_with("http://") || location.starts_with("https://") {
        return location.parse().map_err(|e| format!("redirect to '{location}': {e}"));
    }
    let (scheme, authority) = match (base.scheme_str(), base.authority()) {
        (Some(s), Some(a)) => (s, a.as_str()),
        _ => return Err(format!("redirect to '{location}' from a relative address")),
    };
    let path = if location.starts_with('/') {
        location.to_string()
    } else {
        let dir = base.path().rsplit_once('/').map(|(d, _)| d).unwrap_or("");
        format!("{dir}/{location}")
    };
    format!("{scheme}://{authority}{path}").parse().map_err(|e| format!("redirect to '{location}': {e}"))
}

impl Http {
    /// A client for `endpoint` (`https://huggingface.co`, or a mirror's address).
    pub(crate) fn new(endpoint: &str, token: Option<String>) -> Result<Self, HubError> {
        let endpoint: Uri =
            endpoint.trim_end_matches('/').parse().map_err(|e| HubError::http(endpoint, format!("not an http(s) address: {e}")))?;
        match endpoint.scheme_str() {
            Some("http") | Some("https") if endpoint.host().is_some() => {}
            _ => return Err(HubError::http(&endpoint.to_string(), "not an http(s) address")),
        }
        Ok(Self { endpoint, token, tls: tls_config()? })
    }

    /// The Hub's address, without a trailing slash.
    pub(crate) fn endpoint(&self) -> String {
        self.endpoint.to_string().trim_end_matches('/').to_string()
    }

    async fn connect(&self, uri: &Uri) -> Result<Box<dyn Io>, HubError> {
        let url = uri.to_string();
        let host = uri.host().ok_or_else(|| HubError::http(&url, "no host"))?.trim_start_matches('[').trim_end_matches(']');
        let tls = uri.scheme_str() == Some("https");
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((host, port)))
            .await
            .map_err(|_| HubError::http(&url, format!("no connection within {} s", CONNECT_TIMEOUT.as_secs())))?
            .map_err(|e| HubError::http(&url, e))?;
        let _ = tcp.set_nodelay(true);
        if !tls {
            return Ok(Box::new(tcp));
        }
        let name = rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|e| HubError::http(&url, e))?;
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, tokio_rustls::TlsConnector::from(self.tls.clone()).connect(name, tcp))
            .await
            .map_err(|_| HubError::http(&url, "TLS handshake timed out"))?
            .map_err(|e| HubError::http(&url, format!("TLS: {e}")))?;
        Ok(Box::new(stream))
    }

    async fn send_once(&self, method: &hyper::Method, uri: &Uri, range_from: Option<u64>) -> Result<Response<Incoming>, HubError> {
        let url = uri.to_string();
        let io = self.connect(uri).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await.map_err(|e| HubError::http(&url, e))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let host = uri.authority().map(|a| a.as_str().to_string()).unwrap_or_default();
        let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let mut builder = Request::builder()
            .method(method.clone())
            .uri(path)
            .header(hyper::header::HOST, host)
            .header(hyper::header::USER_AGENT, concat!("qwenedge/", env!("CARGO_PKG_VERSION")))
            .header(hyper::header::ACCEPT_ENCODING, "identity");
        if let (Some(token), true) = (&self.token, same_origin(uri, &self.endpoint)) {
            builder = builder.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        if let Some(from) = range_from.filter(|&n| n > 0) {
            builder = builder.header(hyper::header::RANGE, format!("bytes={from}-"));
        }
        let request = builder.body(Empty::<Bytes>::new()).map_err(|e| HubError::http(&url, e))?;
        tokio::time::timeout(READ_TIMEOUT, sender.send_request(request))
            .await
            .map_err(|_| HubError::http(&url, format!("no answer within {} s", READ_TIMEOUT.as_secs())))?
            .map_err(|e| HubError::http(&url, e))
    }

    /// Sends `method` to `url` (a path on the Hub, or an absolute address) and follows
    /// redirects; `range_from` asks for the bytes from that offset on. Returns the final
    /// response and its address.
    pub(crate) async fn send(
        &self,
        method: hyper::Method,
        url: &str,
        range_from: Option<u64>,
    ) -> Result<(Response<Incoming>, Uri), HubError> {
        let mut uri = if url.starts_with('/') {
            resolve_location(&self.endpoint, url).map_err(|e| HubError::http(url, e))?
        } else {
            url.parse().map_err(|e| HubError::http(url, e))?
        };
        for _ in 0..=MAX_REDIRECTS {
            let response = self.send_once(&method, &uri, range_from).await?;
            let status = response.status();
            if !status.is_redirection() || status == StatusCode::NOT_MODIFIED {
                return Ok((response, uri));
            }
            let location = response
                .headers()
                .get(hyper::header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| HubError::http(&uri.to_string(), format!("{status} without a Location")))?;
            uri = resolve_location(&uri, location).map_err(|e| HubError::http(&uri.to_string(), e))?;
        }
        Err(HubError::http(url, format!("more than {MAX_REDIRECTS} redirects")))
    }

    /// GETs a JSON document from the Hub; `Err` carries the response for statuses other than 200.
    pub(crate) async fn get_json(&self, path: &str) -> Result<Result<(serde_json::Value, hyper::HeaderMap), Failure>, HubError> {
        let (response, uri) = self.send(hyper::Method::GET, path, None).await?;
        let url = uri.to_string();
        let status = response.status();
        let headers = response.headers().clone();
        let body = read_limited(response.into_body(), &url, MAX_JSON_BYTES).await?;
        if status != StatusCode::OK {
            return Ok(Err(Failure::new(status, &headers, &body)));
        }
        let value = serde_json::from_slice(&body).map_err(|e| HubError::http(&url, format!("not JSON: {e}")))?;
        Ok(Ok((value, headers)))
    }
}

/// A response other than success, with what the Hub said about it.
#[derive(Debug)]
pub(crate) struct Failure {
    pub status: StatusCode,
    /// `X-Error-Code` (`RepoNotFound`, `RevisionNotFound`, `EntryNotFound`, `GatedRepo`).
    pub code: String,
    /// `X-Error-Message`, else the body's `error`, else its text.
    pub message: String,
}

impl Failure {
    pub(crate) fn new(status: StatusCode, headers: &hyper::HeaderMap, body: &[u8]) -> Self {
        let header = |k: &str| headers.get(k).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        let message = Some(header("x-error-message")).filter(|m| !m.is_empty()).unwrap_or_else(|| {
            serde_json::from_slice::<serde_json::Value>(body)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(200)]).trim().to_string())
        });
        Self { status, code: header("x-error-code"), message }
    }
}

/// Reads a whole body of at most `limit` bytes.
pub(crate) async fn read_limited(mut body: Incoming, url: &str, limit: usize) -> Result<Vec<u8>, HubError> {
    let mut out = Vec::new();
    while let Some(frame) = next_frame(&mut body, url).await? {
        if out.len() + frame.len() > limit {
            return Err(HubError::http(url, format!("answer larger than {} MiB", limit >> 20)));
        }
        out.extend_from_slice(&frame);
    }
    Ok(out)
}

/// The next piece of `body` (`None` at its end), waiting at most [`READ_TIMEOUT`].
pub(crate) async fn next_frame(body: &mut Incoming, url: &str) -> Result<Option<Bytes>, HubError> {
    loop {
        let frame = tokio::time::timeout(READ_TIMEOUT, body.frame())
            .await
            .map_err(|_| HubError::http(url, format!("no data for {} s", READ_TIMEOUT.as_secs())))?;
        match frame {
            None => return Ok(None),
            Some(Err(e)) => return Err(HubError::http(url, format!("transfer cut: {e}"))),
            Some(Ok(f)) => {
                if let Ok(data) = f.into_data() {
                    return Ok(Some(data));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_resolve_against_the_answering_host() {
        let base: Uri = "https://huggingface.co/org/m/resolve/main/onnx/a.onnx".parse().unwrap();
        assert_eq!(resolve_location(&base, "/api/resolve-cache/x").unwrap().to_string(), "https://huggingface.co/api/resolve-cache/x");
        assert_eq!(resolve_location(&base, "https://cdn.example/x?sig=1").unwrap().to_string(), "https://cdn.example/x?sig=1");
        assert_eq!(resolve_location(&base, "b.onnx").unwrap().to_string(), "https://huggingface.co/org/m/resolve/main/onnx/b.onnx");
    }

    #[test]
    fn the_token_goes_to_the_hub_only() {
        let hub: Uri = "https://huggingface.co".parse().unwrap();
        assert!(same_origin(&"https://huggingface.co/api/models/a/b".parse().unwrap(), &hub));
        assert!(!same_origin(&"https://cas-bridge.xethub.hf.co/x".parse().unwrap(), &hub));
        assert!(!same_origin(&"http://huggingface.co/x".parse().unwrap(), &hub));
    }
}
