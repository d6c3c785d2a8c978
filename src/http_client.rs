//! The network capability's HTTP client (see `network` for the grant and its rules): a guest's
//! request as JSON, sent by the executor's reqwest clients (`http_pool`), whose resolver (`resolver`) refuses
//! restricted addresses; redirects followed here, each hop checked as the first; caps and
//! timeouts on the way.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::Url;

use crate::error::ExecError;
use crate::http_pool::{Pool, IDLE_TIMEOUT};
use crate::network::{check_url, NetworkConfig, Refused};

/// A guest's HTTP request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HttpRequest {
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// What the guest gets back.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpRequest {
    /// `{"method"?: "GET", "url": "...", "headers"?: {name: value}, "body"?: "text"}`. Read
    /// without a tree of the whole: other keys are skipped as they are read, a body or header
    /// value that is not a string is taken as its JSON text, as written (parsed into a tree, a 66
    /// MB request of `[0,0,...]` took 1.2 GB of host memory, review AK).
    pub fn from_json(text: &str) -> Result<HttpRequest, ExecError> {
        use serde_json::value::RawValue;
        #[derive(serde::Deserialize)]
        struct Wire<'a> {
            #[serde(borrow)]
            url: Option<&'a RawValue>,
            #[serde(borrow)]
            method: Option<&'a RawValue>,
            #[serde(borrow)]
            headers: Option<&'a RawValue>,
            #[serde(borrow)]
            body: Option<&'a RawValue>,
        }
        let bad = |why: String| ExecError::NetworkDenied { host: String::new(), message: format!("a malformed request: {why}") };
        // A string's text, or `None` for another value; a string that is not text (a lone
        // surrogate escape) is refused, never sent as its JSON source.
        let text_of = |raw: &RawValue, what: &str| match raw.get().starts_with('"') {
            true => serde_json::from_str::<String>(raw.get()).map(Some).map_err(|e| bad(format!("{what}: {e}"))),
            false => Ok(None),
        };
        let string = |raw: &RawValue| serde_json::from_str::<String>(raw.get()).ok();
        let wire: Wire<'_> = match serde_json::from_str(text) {
            Ok(wire) => wire,
            Err(e) if e.is_data() && serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok() => return Err(bad(format!("not a JSON object with one of each key: {e}"))),
            Err(e) => return Err(bad(format!("not JSON: {e}"))),
        };
        let url = wire.url.and_then(string).ok_or_else(|| bad("no \"url\" string".into()))?;
        let method = match wire.method {
            None => "GET".to_string(),
            Some(m) => string(m).ok_or_else(|| bad("\"method\" is not a string".into()))?,
        };
        let headers = match wire.headers {
            None => Vec::new(),
            Some(h) => {
                let entries = serde_json::from_str::<Headers<'_>>(h.get()).map_err(|e| bad(format!("\"headers\": {e}")))?.0;
                let mut headers = std::collections::BTreeMap::new();
                for (k, v) in entries {
                    let v = text_of(v, "a header's value")?.unwrap_or_else(|| v.get().to_string());
                    headers.insert(k, v);
                }
                headers.into_iter().collect()
            }
        };
        let body = match wire.body {
            None => Vec::new(),
            Some(b) => text_of(b, "\"body\"")?.map(String::into_bytes).unwrap_or_else(|| b.get().as_bytes().to_vec()),
        };
        Ok(HttpRequest { method, url, headers, body })
    }
}

/// Request headers the guest's are dropped for: the URL names the host, and the client frames the
/// body and keeps the connection. A guest's `Content-Length: 3` on a 39-byte body had the server
/// read 3 bytes and the call succeed, and `Content-Length: 40` on 3 bytes had the request wait
/// until its timeout (review AX3); `Transfer-Encoding`, `Connection`, `Upgrade` and the rest are
/// hop-by-hop: they speak for a connection the guest does not hold.
pub const HOST_OWNED_HEADERS: [&str; 9] =
    ["host", "content-length", "transfer-encoding", "connection", "keep-alive", "proxy-connection", "te", "trailer", "upgrade"];

/// Whether a guest's request header `name` is one the host sets (`HOST_OWNED_HEADERS`).
pub fn is_host_owned(name: &str) -> bool {
    HOST_OWNED_HEADERS.iter().any(|h| name.eq_ignore_ascii_case(h))
}

/// The most entries a request's `headers` object may have (a request carries at most 100 headers
/// out, `maxHeaderBytes` of them; read into a map first, 6 million keys took 911 MB of host memory
/// and 18 s past a 1 s deadline: review AK's follow-up).
pub const MAX_REQUEST_HEADERS: usize = 1024;

/// A request's `headers` object, read entry by entry up to `MAX_REQUEST_HEADERS`.
struct Headers<'a>(Vec<(String, &'a serde_json::value::RawValue)>);

impl<'de: 'a, 'a> serde::Deserialize<'de> for Headers<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Entries<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Entries<'a> {
            type Value = Headers<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object of at most 1024 headers")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(self, mut map: M) -> Result<Headers<'a>, M::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry::<String, &'de serde_json::value::RawValue>()? {
                    if entries.len() == MAX_REQUEST_HEADERS {
                        return Err(serde::de::Error::custom(format!("more than {MAX_REQUEST_HEADERS} headers")));
                    }
                    entries.push(entry);
                }
                Ok(Headers(entries))
            }
        }
        d.deserialize_map(Entries(std::marker::PhantomData))
    }
}

/// Counts what JSON text written to it would be: UTF-8 bytes and UTF-16 units.
#[derive(Default)]
struct Measure {
    utf8: u64,
    utf16: u64,
}

impl std::io::Write for Measure {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.utf8 += buf.len() as u64;
        // A unit per character (a byte that is no continuation), two for one past U+FFFF.
        self.utf16 += buf.iter().map(|b| match b {
            0x80..=0xBF => 0,
            0xF0..=0xF7 => 2,
            _ => 1,
        }).sum::<u64>();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// How a guest holds text: the unit `to_json_within` measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextUnits {
    /// AssemblyScript strings: two bytes per UTF-16 unit.
    Utf16,
    /// Extism blocks and component strings: UTF-8 bytes.
    Utf8,
}

impl HttpResponse {
    /// `to_json`, when its text fits in `max_bytes` of a guest holding it as `units`, and in
    /// `max_bytes` as the host builds it (UTF-8); else `OUT_OF_MEMORY` before the text is built.
    /// Escaping makes a body up to six times longer (a control byte is `\u0001`): a 10 MiB body
    /// made 60 MiB of host memory per call before the guest's allocator refused it. A byte that
    /// is not UTF-8 is one UTF-16 unit but three bytes here: 120 MiB of them under a guest's
    /// 256 MiB made 1.2 GB of host memory (review AJ; the text was built through a JSON value too).
    pub fn to_json_within(&self, max_bytes: u64, units: TextUnits) -> Result<String, ExecError> {
        let headers = self.merged_headers();
        // Measured from the bytes as they are: the text with U+FFFD in place is made only if it fits.
        // Each valid run's quotes are taken off again: the body has two.
        let mut m = Measure { utf8: 2, utf16: 2 };
        for chunk in self.body.utf8_chunks() {
            let _ = serde_json::to_writer(&mut m, chunk.valid());
            (m.utf8, m.utf16) = (m.utf8 - 2, m.utf16 - 2);
            if !chunk.invalid().is_empty() {
                let _ = std::io::Write::write(&mut m, "\u{fffd}".as_bytes());
            }
        }
        let _ = serde_json::to_writer(&mut m, &headers);
        let bytes = match units {
            TextUnits::Utf16 => m.utf16.saturating_mul(2).max(m.utf8),
            TextUnits::Utf8 => m.utf8,
        }
        .saturating_add(64);
        if bytes > max_bytes {
            return Err(ExecError::OutOfMemory { limit_bytes: max_bytes, requested_bytes: bytes });
        }
        // `m.utf8` is the text's length but for its keys and the status (35 bytes at most).
        Ok(Self::json_text(self.status, &headers, &self.body, m.utf8.saturating_add(40) as usize))
    }

    /// `{"status": 200, "headers": {name: value}, "body": "text"}` (the body as UTF-8, with
    /// U+FFFD for bytes that are not).
    pub fn to_json(&self) -> String {
        Self::json_text(self.status, &self.merged_headers(), &self.body, self.body.len() + 64)
    }

    /// The response's JSON text, written straight from its parts (the body's text with U+FFFD
    /// in place is never made whole on its own) into `capacity` bytes made at once (grown, a
    /// large body's text had taken up to twice its length).
    fn json_text(status: u16, headers: &serde_json::Map<String, serde_json::Value>, body: &[u8], capacity: usize) -> String {
        /// Writes a JSON string's contents: what serde_json writes, but its quotes.
        struct Contents<'a>(&'a mut Vec<u8>, bool);
        impl std::io::Write for Contents<'_> {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                let skip = usize::from(std::mem::take(&mut self.1) && !buf.is_empty());
                self.0.extend_from_slice(&buf[skip..]);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        // The keys in the order they always came (a JSON value's, sorted), for guests that pass
        // the text on as it is.
        let mut out = Vec::with_capacity(capacity);
        out.extend_from_slice(b"{\"body\":\"");
        for chunk in body.utf8_chunks() {
            let _ = serde_json::to_writer(Contents(&mut out, true), chunk.valid());
            out.pop();
            if !chunk.invalid().is_empty() {
                out.extend_from_slice("\u{fffd}".as_bytes());
            }
        }
        out.extend_from_slice(b"\",\"headers\":");
        let _ = serde_json::to_writer(&mut out, headers);
        out.extend_from_slice(format!(",\"status\":{status}}}").as_bytes());
        String::from_utf8(out).unwrap_or_default()
    }

    /// The headers as a JSON object, a repeated name's values joined by ", ".
    fn merged_headers(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut headers = serde_json::Map::new();
        for (k, v) in &self.headers {
            match headers.get_mut(k) {
                Some(serde_json::Value::String(prev)) => {
                    prev.push_str(", ");
                    prev.push_str(v);
                }
                _ => {
                    headers.insert(k.clone(), serde_json::Value::String(v.clone()));
                }
            }
        }
        headers
    }

    pub fn headers_json(&self) -> String {
        let mut headers = serde_json::Map::new();
        for (k, v) in &self.headers {
            headers.insert(k.clone(), serde_json::Value::String(v.clone()));
        }
        serde_json::Value::Object(headers).to_string()
    }
}

/// The executor's network: its grant and its HTTP client (connections pooled across calls, to a
/// bounded number of hosts: `http_pool`).
pub struct Network {
    config: Arc<NetworkConfig>,
    /// Closed by `close`: its pooled connections close with it, not 30 s later when idle.
    pool: Pool,
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Network").field("config", &self.config).finish()
    }
}

impl Network {
    pub fn new(config: NetworkConfig) -> Result<Arc<Network>, ExecError> {
        let config = Arc::new(config);
        // Both of its clients share one resolver (and its cache; see `resolver`).
        let lookups = crate::resolver::Lookups::system();
        let pool = Pool::new(|idle| client(&config, idle, &lookups))?;
        Ok(Arc::new(Network { config, pool }))
    }

    /// Closes the pooled connections; later requests fail with `CLOSED` (the executor's close).
    pub fn close(&self) {
        self.pool.close();
    }
}

/// One client of the network, keeping at most `idle` idle connections per host: names resolved
/// by `resolver::GuardedResolver`; no redirect followed (`send` follows them, each hop checked and sent
/// through its own host's client).
fn client(config: &NetworkConfig, idle: usize, lookups: &crate::resolver::Lookups) -> Result<reqwest::Client, ExecError> {
    reqwest::Client::builder()
        .no_proxy()
        .dns_resolver(Arc::new(crate::resolver::GuardedResolver { lookups: lookups.clone() }))
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(config.timeout)
        .pool_idle_timeout(IDLE_TIMEOUT)
        .pool_max_idle_per_host(idle)
        .build()
        .map_err(|e| ExecError::InvalidArgument(format!("options.network: the HTTP client cannot be built: {e}")))
}

impl Network {
    pub fn config(&self) -> &NetworkConfig {
        &self.config
    }

    /// Checks a URL against the grant's rules (scheme, allowedHosts; DNS is checked when connecting).
    pub fn check(&self, url: &str) -> Result<(), ExecError> {
        let denied = |host: &str, message: String| ExecError::NetworkDenied { host: host.to_string(), message };
        let parsed = Url::parse(url).map_err(|e| denied("", format!("{:?} is not a URL: {e}", preview(url))))?;
        check_url(&self.config, &parsed).map_err(|r| denied(&r.host, r.message))
    }

    /// Sends one request under the grant, finishing by `deadline` at the latest. A body over
    /// `max_body` (what the guest could hold: its memory limit) is `OUT_OF_MEMORY` as soon as that
    /// much has come (or is declared), not read on to `maxResponseBytes`: a call waiting on the
    /// network holds no concurrency slot, so the host memory its body takes must be bounded by
    /// the guest's own (review AA: 250 calls of guests capped at 1 MiB read 2.7 GiB of bodies).
    /// A process-wide budget of bodies in flight was tried and dropped: one tenant's stalled
    /// bodies held all of it, and chunked bodies holding part of it waited on each other.
    pub async fn send(&self, req: HttpRequest, deadline: Instant, max_body: u64) -> Result<HttpResponse, ExecError> {
        let c = &self.config;
        let denied = |host: &str, message: String| ExecError::NetworkDenied { host: host.to_string(), message };
        let url = Url::parse(&req.url).map_err(|e| denied("", format!("{:?} is not a URL: {e}", preview(&req.url))))?;
        check_url(c, &url).map_err(|r| denied(&r.host, r.message))?;
        let mut host = url.host_str().unwrap_or("").to_string();
        // As wasi:http's (review AC: a 4 MiB method went out on the request line, past
        // maxHeaderBytes, from an AssemblyScript or Extism guest).
        if req.method.len() > crate::wasi_http::MAX_METHOD_BYTES {
            return Err(denied(&host, format!("the method is {} bytes, over {}", req.method.len(), crate::wasi_http::MAX_METHOD_BYTES)));
        }
        let method = reqwest::Method::from_bytes(req.method.to_ascii_uppercase().as_bytes())
            .map_err(|_| denied(&host, format!("{:?} is not an HTTP method", preview(&req.method))))?;
        if method == reqwest::Method::CONNECT {
            return Err(denied(&host, "CONNECT requests are not allowed".into()));
        }
        let header_bytes: u64 = req.headers.iter().map(|(k, v)| (k.len() + v.len() + 4) as u64).sum();
        if header_bytes > c.max_header_bytes {
            return Err(denied(&host, format!("the request's headers are {header_bytes} bytes, over maxHeaderBytes {}", c.max_header_bytes)));
        }
        if req.body.len() as u64 > c.max_request_bytes {
            return Err(denied(&host, format!("the request's body is {} bytes, over maxRequestBytes {}", req.body.len(), c.max_request_bytes)));
        }
        let mut headers = reqwest::header::HeaderMap::new();
        // `Host` is the URL's: a guest-chosen one could reach other virtual hosts behind an allowed
        // address (a shared ingress, a CDN). The message's framing and the connection are the
        // client's (`HOST_OWNED_HEADERS`).
        for (k, v) in req.headers.iter().filter(|(k, _)| !is_host_owned(k)) {
            let name = reqwest::header::HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| denied(&host, format!("{:?} is not a header name", preview(k))))?;
            let value = reqwest::header::HeaderValue::from_str(v)
                .map_err(|_| denied(&host, format!("the value of header {k} is not a valid header value")))?;
            headers.append(name, value);
        }
        // A request cut short by the call's deadline ends as the call's TIMEOUT (the executor
        // watches the deadline): its own timeout runs a little past it.
        let left = deadline.saturating_duration_since(Instant::now()) + Duration::from_millis(250);
        let timeout = c.timeout.min(left).max(Duration::from_millis(1));
        let started = Instant::now();
        // Shared, not copied, by each hop's request (a body may be 10 MiB).
        let (mut url, mut method, mut headers, mut body) = (url, method, headers, bytes::Bytes::from(req.body));
        let mut hops = 0;
        // Held until the body has been read: the connection goes back to the pool then.
        let (mut resp, _lease) = loop {
            // A request may open a socket: none numbered into the process's reserve of
            // descriptors (`open_files`), as for a guest's files. Calls waiting on the network
            // hold no concurrency slot, so each held one: under a hard limit of 1,024, 1,000
            // such calls took every descriptor, and Node's own opens failed (review AA).
            if !crate::open_files::process_has_room() {
                return Err(ExecError::NetworkError {
                    host: host.clone(),
                    message: format!("{host}: the process is short of file descriptors (those left are kept for Node and the host)"),
                });
            }
            let lease = self.pool.client_for(&url)?;
            let left = timeout.saturating_sub(started.elapsed()).max(Duration::from_millis(1));
            let sent = lease.client.request(method.clone(), url.clone()).headers(headers.clone()).body(body.clone()).timeout(left).send().await;
            let resp = sent.map_err(|e| self.failure(&host, e))?;
            // Every hop's headers count, a redirect's too.
            let got: u64 = resp.headers().iter().map(|(k, v)| (k.as_str().len() + v.len() + 4) as u64).sum();
            if got > c.max_header_bytes {
                return Err(denied(&host, format!("the response's headers are {got} bytes, over maxHeaderBytes {}", c.max_header_bytes)));
            }
            let Some(next) = redirect_target(&resp) else { break (resp, lease) };
            let next_host = next.host_str().unwrap_or("").to_string();
            if hops >= c.max_redirects {
                return Err(denied(&next_host, format!("more than {} redirects", c.max_redirects)));
            }
            let shown = preview(next.as_str());
            check_url(c, &next).map_err(|r| denied(&r.host, format!("a redirect to {shown}: {}", r.message)))?;
            hops += 1;
            redirected(resp.status(), &mut method, &mut headers, &mut body, &url, &next);
            // Failures from here on are the hop's host's.
            host = next_host;
            url = next;
        };
        let status = resp.status().as_u16();
        let too_big = |n: u64| denied(&host, format!("the response's body is {n} bytes or more, over maxResponseBytes {}", c.max_response_bytes));
        if let Some(len) = resp.content_length().filter(|l| *l > c.max_response_bytes) {
            return Err(too_big(len));
        }
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        let over_guest = |n: u64| ExecError::OutOfMemory { limit_bytes: max_body, requested_bytes: n };
        if let Some(len) = resp.content_length().filter(|l| *l > max_body) {
            return Err(over_guest(len));
        }
        let mut body = Vec::new();
        loop {
            let left = timeout.saturating_sub(started.elapsed());
            let chunk = match tokio::time::timeout(left, resp.chunk()).await {
                Err(_) => return Err(ExecError::NetworkError { host: host.clone(), message: format!("{host}: the response timed out") }),
                Ok(r) => r.map_err(|e| self.failure(&host, e))?,
            };
            let Some(chunk) = chunk else { break };
            let len = body.len() as u64 + chunk.len() as u64;
            if len > c.max_response_bytes {
                return Err(too_big(len));
            }
            if len > max_body {
                return Err(over_guest(len));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(HttpResponse { status, headers, body })
    }

    fn failure(&self, host: &str, e: reqwest::Error) -> ExecError {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(s) = source {
            if let Some(r) = s.downcast_ref::<Refused>() {
                return ExecError::NetworkDenied { host: r.host.clone(), message: r.message.clone() };
            }
            // A head past what the client reads (hyper's buffer, about 400 KiB; 100 headers; a
            // name of 64 KiB; a Content-Length past u64): refused as a head over maxHeaderBytes is,
            // not a failure a retry helps (a 1 MB `Location` was a retryable NETWORK_ERROR).
            if s.downcast_ref::<hyper::Error>().is_some_and(hyper::Error::is_parse_too_large) {
                let max = self.config().max_header_bytes;
                let message = format!("the response's head is more than the client reads (about 400 KiB, 100 headers; maxHeaderBytes {max})");
                return ExecError::NetworkDenied { host: host.to_string(), message };
            }
            source = s.source();
        }
        // Without the URL, which may be long and carry the guest's secrets.
        let what = if e.is_timeout() { "timed out".to_string() } else { chain(&e.without_url()) };
        ExecError::NetworkError { host: host.to_string(), message: format!("{host}: {what}") }
    }
}

/// Where a redirect response sends the request (301, 302, 303, 307, 308 with a `Location` that
/// is a URL, relative to the request's); none for any other response, which is the answer.
fn redirect_target(resp: &reqwest::Response) -> Option<Url> {
    if !matches!(resp.status().as_u16(), 301 | 302 | 303 | 307 | 308) {
        return None;
    }
    let location = resp.headers().get(reqwest::header::LOCATION)?.to_str().ok()?;
    resp.url().join(location).ok()
}

/// The request a redirect makes of the last (as browsers and reqwest do): a 303, and a 301 or 302
/// of a POST, become a GET without a body; credentials go only to the origin they were given for.
fn redirected(status: reqwest::StatusCode, method: &mut reqwest::Method, headers: &mut reqwest::header::HeaderMap, body: &mut bytes::Bytes, from: &Url, to: &Url) {
    use reqwest::header::{AUTHORIZATION, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, COOKIE, PROXY_AUTHORIZATION, TRANSFER_ENCODING, WWW_AUTHENTICATE};
    let to_get = match status.as_u16() {
        303 => *method != reqwest::Method::HEAD,
        301 | 302 => *method == reqwest::Method::POST,
        _ => false,
    };
    if to_get {
        *method = reqwest::Method::GET;
        *body = bytes::Bytes::new();
        for name in [CONTENT_TYPE, CONTENT_LENGTH, CONTENT_ENCODING, TRANSFER_ENCODING] {
            headers.remove(name);
        }
    }
    let origin = |u: &Url| (u.scheme().to_string(), u.host_str().map(str::to_string), u.port_or_known_default());
    if origin(from) != origin(to) {
        for name in [AUTHORIZATION, COOKIE, PROXY_AUTHORIZATION, WWW_AUTHENTICATE] {
            headers.remove(name);
        }
        headers.remove("cookie2");
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

fn preview(s: &str) -> String {
    s.chars().take(100).collect()
}

#[cfg(test)]
#[path = "http_client_tests.rs"]
mod tests;
