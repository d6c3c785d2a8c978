//! The HTTP client of the network object stores (`s3://`, `az://`, `gs://`, `http(s)://`):
//! object_store's own (reqwest, its `ClientOptions`), with every answer's body bounded. One that
//! is not a success is read to at most `MAX_ERROR_BODY` bytes: object_store reads such a body
//! whole into its error's message, bounded by nothing but the store's `timeoutMs`, and a store
//! answering 404 with an endless body took the process to 5 GB of memory in 6 s (review BD2),
//! through a download, an artifact lookup or write, or an actor store's first-use check. A
//! success's body fails past what it stated (`Content-Length`), or, stating nothing, past
//! `MAX_UNSTATED_BODY` (a `GET`) or `MAX_OTHER_BODY` (any other method): object_store reads some
//! whole too, a bulk delete's answer and a credentials endpoint's (review BE1: an endless 200 to
//! the actor store's probe delete, 4 GB in 3.5 s).

use async_trait::async_trait;
use object_store::client::{HttpClient, HttpConnector, HttpError, HttpErrorKind, HttpRequest, HttpResponse, HttpResponseBody, HttpService, ReqwestConnector};
use object_store::ClientOptions;
use std::sync::Arc;

/// The most bytes of an error answer's body read (the rest is not: the connection is dropped).
pub const MAX_ERROR_BODY: usize = 64 * 1024;

/// The most bytes of a `GET` answer that states no length (object_store refuses a download
/// without one; lists and credentials are small).
pub const MAX_UNSTATED_BODY: u64 = 16 << 20;
/// The most bytes of the answer to any other method (a bulk delete's, a token's), whatever it states.
pub const MAX_OTHER_BODY: u64 = 1 << 20;

/// The most redirects a store opened for a definition's URL follows (each under a prefix).
pub const MAX_REDIRECTS: usize = 5;

/// Builds the stores' clients (`with_http_connector`). The executor's own stores (blob, artifact,
/// actor), which the operator names, follow redirects as reqwest does (up to 10, anywhere). A store
/// opened for a definition's absolute URL (`allowedBlobUrls`) follows one only to a URL under one
/// of those prefixes, at most `MAX_REDIRECTS`; any other is an error, not a request: with
/// reqwest's default a prefix on a host with an open redirect reached every host the process
/// could, and the first 64 KiB of an error page there came back in the error's message (review BD2).
#[derive(Debug, Default, Clone)]
pub struct Connector {
    within: Option<Arc<[String]>>,
}

impl Connector {
    /// A connector whose clients follow redirects only to URLs starting with one of `prefixes`.
    pub fn within(prefixes: Arc<[String]>) -> Self {
        Connector { within: Some(prefixes) }
    }
}

impl HttpConnector for Connector {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        let inner = match &self.within {
            None => ReqwestConnector::default().connect(options)?,
            Some(prefixes) => HttpClient::new(client(options, redirects_within(prefixes.clone()))?),
        };
        Ok(HttpClient::new(Capped(inner)))
    }
}

fn redirects_within(prefixes: Arc<[String]>) -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(move |attempt| {
        let to = attempt.url().as_str();
        if attempt.previous().len() > MAX_REDIRECTS {
            let why = format!("more than {MAX_REDIRECTS} redirects");
            return attempt.error(why);
        }
        // An escaped `/` or `\\` is one segment to this check and may be two to the server (review
        // BF1: nginx decodes `%2F` before it resolves `..`).
        let escaped = attempt.url().path().to_ascii_lowercase();
        if escaped.contains("%2f") || escaped.contains("%5c") {
            let shown: String = to.chars().take(200).collect();
            return attempt.error(format!("a redirect to {shown:?}, whose path has an escaped / or \\"));
        }
        if prefixes.iter().any(|p| to.starts_with(p.as_str())) {
            return attempt.follow();
        }
        let shown: String = to.chars().take(200).collect();
        let why = format!("a redirect to {shown:?}, which is under no allowedBlobUrls prefix");
        attempt.error(why)
    })
}

/// The client object_store builds from `options` (`ClientOptions::client`, which is not public),
/// read back through `get_config_value`, with `redirect` as its policy. What is not a config key
/// (root certificates, default headers) the builders never set from a URL or the environment,
/// which is all a store opened for a definition's URL has. `randomize_addresses` is ignored.
fn client(options: &ClientOptions, redirect: reqwest::redirect::Policy) -> object_store::Result<reqwest::Client> {
    use object_store::ClientConfigKey as K;
    let bad = |what: String| object_store::Error::Generic { store: "HTTP", source: what.into() };
    let get = |k: K| options.get_config_value(&k);
    let flag = |k: K| -> object_store::Result<bool> {
        match get(k).map(|v| v.to_ascii_lowercase()).as_deref() {
            None | Some("0" | "false" | "off" | "no" | "n") => Ok(false),
            Some("1" | "true" | "on" | "yes" | "y") => Ok(true),
            Some(v) => Err(bad(format!("failed to parse {v:?} as boolean"))),
        }
    };
    let duration = |k: K| -> object_store::Result<Option<std::time::Duration>> {
        get(k).map(|v| humantime::parse_duration(&v).map_err(|_| bad(format!("failed to parse {v:?} as a duration")))).transpose()
    };
    let built = |e: reqwest::Error| bad(e.to_string());
    let user_agent = get(K::UserAgent).unwrap_or_else(|| concat!("object_store/", "0.13").to_string());
    let mut b = reqwest::Client::builder().user_agent(user_agent).redirect(redirect);
    if let Some(proxy) = get(K::ProxyUrl) {
        let mut proxy = reqwest::Proxy::all(proxy).map_err(built)?;
        if let Some(pem) = get(K::ProxyCaCertificate) {
            b = b.add_root_certificate(reqwest::tls::Certificate::from_pem(pem.as_bytes()).map_err(built)?);
        }
        if let Some(excludes) = get(K::ProxyExcludes) {
            proxy = proxy.no_proxy(reqwest::NoProxy::from_string(&excludes));
        }
        b = b.proxy(proxy);
    }
    if let Some(t) = duration(K::Timeout)? {
        b = b.timeout(t);
    }
    if let Some(t) = duration(K::ConnectTimeout)? {
        b = b.connect_timeout(t);
    }
    if let Some(t) = duration(K::PoolIdleTimeout)? {
        b = b.pool_idle_timeout(t);
    }
    if let Some(n) = get(K::PoolMaxIdlePerHost) {
        b = b.pool_max_idle_per_host(n.parse().map_err(|_| bad(format!("failed to parse {n:?} as a number")))?);
    }
    if let Some(t) = duration(K::Http2KeepAliveInterval)? {
        b = b.http2_keep_alive_interval(t);
    }
    if let Some(t) = duration(K::Http2KeepAliveTimeout)? {
        b = b.http2_keep_alive_timeout(t);
    }
    if flag(K::Http2KeepAliveWhileIdle)? {
        b = b.http2_keep_alive_while_idle(true);
    }
    if let Some(n) = get(K::Http2MaxFrameSize) {
        b = b.http2_max_frame_size(Some(n.parse().map_err(|_| bad(format!("failed to parse {n:?} as a number")))?));
    }
    if flag(K::Http1Only)? {
        b = b.http1_only();
    }
    if flag(K::Http2Only)? {
        b = b.http2_prior_knowledge();
    }
    if flag(K::AllowInvalidCertificates)? {
        b = b.danger_accept_invalid_certs(true);
    }
    // As object_store: no compression, which would hide the stated length.
    b = b.no_gzip().no_brotli().no_zstd().no_deflate();
    b.https_only(!flag(K::AllowHttp)?).build().map_err(built)
}

#[derive(Debug)]
struct Capped(HttpClient);

#[async_trait]
impl HttpService for Capped {
    async fn call(&self, req: HttpRequest) -> Result<HttpResponse, HttpError> {
        let get = req.method() == http::Method::GET;
        let response = self.0.execute(req).await.map_err(with_reason)?;
        if response.status().is_success() {
            let stated = response
                .headers()
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            let max = match (get, stated) {
                (true, Some(n)) => n,
                (true, None) => MAX_UNSTATED_BODY,
                (false, n) => n.unwrap_or(MAX_OTHER_BODY).min(MAX_OTHER_BODY),
            };
            let (parts, body) = response.into_parts();
            return Ok(HttpResponse::from_parts(parts, HttpResponseBody::new(Bounded { body, left: max })));
        }
        let (parts, body) = response.into_parts();
        let mut stream = body.bytes_stream();
        let mut kept: Vec<u8> = Vec::new();
        while kept.len() < MAX_ERROR_BODY {
            match std::future::poll_fn(|cx| futures_core::Stream::poll_next(stream.as_mut(), cx)).await {
                Some(Ok(part)) => kept.extend_from_slice(&part[..part.len().min(MAX_ERROR_BODY - kept.len())]),
                // What came before the failure is what the message shows.
                Some(Err(_)) | None => break,
            }
        }
        Ok(HttpResponse::from_parts(parts, HttpResponseBody::from(bytes::Bytes::from(kept))))
    }
}

/// reqwest's "error following redirect" keeps why (the policy's own message) in its sources,
/// which object_store's message does not show: put it in.
fn with_reason(e: HttpError) -> HttpError {
    let mut reasons = Vec::new();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        reasons.push(s.to_string());
        source = s.source();
    }
    match reasons.last() {
        Some(why) if reasons.iter().any(|r| r.contains("error following redirect")) => {
            HttpError::new(e.kind(), std::io::Error::other(format!("error following redirect: {why}")))
        }
        _ => e,
    }
}

/// A success's body, failing once it passes `left` more bytes.
#[derive(Debug)]
struct Bounded {
    body: HttpResponseBody,
    left: u64,
}

impl http_body::Body for Bounded {
    type Data = bytes::Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, HttpError>>> {
        let polled = std::pin::Pin::new(&mut self.body).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Ok(frame))) = &polled {
            let n = frame.data_ref().map_or(0, |d| d.len() as u64);
            match self.left.checked_sub(n) {
                Some(left) => self.left = left,
                None => {
                    let e = HttpError::new(HttpErrorKind::Decode, std::io::Error::other("the answer's body is longer than it may be"));
                    return std::task::Poll::Ready(Some(Err(e)));
                }
            }
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::Bounded;
    use bytes::Bytes;
    use object_store::client::HttpResponseBody;

    #[tokio::test]
    async fn a_body_fails_past_what_it_may_be_and_passes_whole_within_it() {
        let over = HttpResponseBody::new(Bounded { body: HttpResponseBody::from(Bytes::from(vec![7u8; 101])), left: 100 });
        assert!(over.bytes().await.is_err(), "one byte past its bound");
        let within = HttpResponseBody::new(Bounded { body: HttpResponseBody::from(Bytes::from(vec![7u8; 100])), left: 100 });
        assert_eq!(within.bytes().await.expect("whole").len(), 100);
    }
}
