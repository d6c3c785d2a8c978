//! `wasi:http` for components (what componentize-js's `fetch()` uses), with every request sent by
//! the network capability's client under the executor's grant (`network`): wasmtime-wasi-http
//! parses the guest's request and streams its bodies; `send_request` below is ours.
//!
//! A component also gets WASI preview 2 (clocks, random, streams, an empty or granted CLI
//! environment, granted preopens; sockets refused at load): its context holds only what the
//! definition was granted, as for core modules.
//!
//! A request the grant refuses reaches the guest as `HTTP-request-denied` (its `fetch()`
//! rejects) and fails the call with `NETWORK_DENIED` once the guest returns, whatever it did with
//! the rejection: a guest cannot probe the network by catching denials.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

use crate::error::ExecError;
use crate::host::HostState;
use crate::host_functions::HostAccess;
use crate::network::HttpRequest;

/// Resources one component may hold at once: its open files (at most 1024, see `open_files`) and
/// as many again. What the host keeps for each is bounded (a `fields` 128 KiB, a request's body
/// write 64 KiB, its path 16 KiB, its method 64 bytes, its authority 512 bytes), not counted
/// against `maxMemoryMB`: 10,000 had let a component granted the network hold 1.25 GB of
/// `fields` (review Q).
pub const MAX_RESOURCES: usize = 2048;

/// The bytes of `wasi:http` bodies a component's Store holds in the host: requests' bodies being
/// read before they are sent, responses' bodies until the guest drops them (kept across an
/// actor's calls). They count against a budget of the instance's `maxMemoryMB`, apart from its
/// own memory: unbudgeted, 100 requests of 10 MiB in one call, or responses kept unread call
/// after call, held gigabytes outside every cap.
#[derive(Default)]
pub struct HeldBytes {
    bytes: AtomicU64,
    cap: AtomicU64,
}

impl HeldBytes {
    /// Bytes held now.
    pub fn now(&self) -> u64 {
        self.bytes.load(Ordering::SeqCst)
    }
}

/// Bytes charged to `HeldBytes`, given back when dropped.
pub(crate) struct Charge {
    held: Option<Arc<HeldBytes>>,
    n: u64,
}

impl Charge {
    fn new(held: Option<Arc<HeldBytes>>) -> Self {
        Charge { held, n: 0 }
    }

    /// `n` bytes charged to `held`, its budget set to the instance's cap (`limiter`) first;
    /// `OUT_OF_MEMORY` past it (nothing charged then).
    pub(crate) fn of(held: &Arc<HeldBytes>, limiter: &crate::limits::MemoryLimiter, n: u64) -> Result<Charge, ExecError> {
        held.cap.store(limiter.max_bytes(), Ordering::Relaxed);
        let mut charge = Charge::new(Some(held.clone()));
        charge.add(n)?;
        Ok(charge)
    }

    /// Charges `n` more bytes; `OUT_OF_MEMORY` past the budget (nothing charged then).
    fn add(&mut self, n: u64) -> Result<(), ExecError> {
        let Some(held) = &self.held else { return Ok(()) };
        let cap = held.cap.load(Ordering::Relaxed);
        let before = held.bytes.fetch_add(n, Ordering::AcqRel);
        if before.saturating_add(n) > cap {
            held.bytes.fetch_sub(n, Ordering::AcqRel);
            return Err(ExecError::OutOfMemory { limit_bytes: cap, requested_bytes: before.saturating_add(n) });
        }
        self.n += n;
        Ok(())
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        if let Some(held) = &self.held {
            held.bytes.fetch_sub(self.n, Ordering::AcqRel);
        }
    }
}

/// A response body that keeps its bytes charged until the guest drops it.
struct Charged {
    inner: WasiBody,
    _charge: Charge,
}

impl http_body::Body for Charged {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, HttpError>>> {
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A component's WASI state.
pub struct ComponentWasi {
    pub ctx: WasiCtx,
    pub table: ResourceTable,
    pub http: WasiHttpCtx,
    pub held: Arc<HeldBytes>,
    /// The table's slots held for pollables (see `pollables`).
    pub pollables: crate::pollables::PollableSlots,
    /// What the headers and requests the table holds took when last measured (`measure_kept`).
    pub kept: u64,
    /// What the header maps rebuilt smaller gave back (`wasi_http_kept::compact`).
    pub shrunk: u64,
    /// The most values each header map (by its table index) held since it was last rebuilt, as
    /// seen by a `delete` or `set` (`wasi_http_kept::compact`).
    pub map_peaks: std::collections::HashMap<u32, usize>,
}

/// Past this much kept in its table (or given back by its header maps rebuilt smaller), a
/// component's memory is given back to the system once its table goes (`trim`): the allocator
/// kept an evicted actor's 255 MB of headers (review BL2), and 1 GB after maps emptied by
/// `delete` (review BP1).
const TRIM_PAST_BYTES: u64 = 16 << 20;

impl Drop for ComponentWasi {
    fn drop(&mut self) {
        if self.kept.saturating_add(self.shrunk) > TRIM_PAST_BYTES {
            // The table first, then the trim (the rest of the fields go after this body).
            drop(std::mem::replace(&mut self.table, ResourceTable::new()));
            crate::trim::soon();
        }
    }
}

impl ComponentWasi {
    pub fn new(ctx: WasiCtx) -> Self {
        // Resources a guest may hold at once (streams, requests, pollables): bounded.
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_RESOURCES);
        ComponentWasi { ctx, table, http: WasiHttpCtx::new(), held: Default::default(), pollables: Default::default(), kept: 0, shrunk: 0, map_peaks: Default::default() }
    }
}

/// A store's component context: every component store gets its own at instantiation; an empty one
/// stands in.
pub(crate) fn component_wasi(component: &mut Option<Box<ComponentWasi>>) -> &mut ComponentWasi {
    component.get_or_insert_with(|| Box::new(ComponentWasi::new(WasiCtx::builder().build())))
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        let c = component_wasi(&mut self.component);
        WasiCtxView { ctx: &mut c.ctx, table: &mut c.table }
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        let HostState { component, access, limiter, .. } = self;
        let c = component_wasi(component);
        c.held.cap.store(limiter.max_bytes(), Ordering::Relaxed);
        access.http_held = Some(c.held.clone());
        WasiHttpCtxView { hooks: access, table: &mut c.table, ctx: &mut c.http }
    }
}

type Sent = Result<(http::Response<WasiBody>, Box<dyn Future<Output = Result<(), HttpError>> + Send>), HttpError>;

/// What one write to an outgoing body's stream may hold in the host until the request is sent
/// (wasmtime-wasi-http buffers one such write per body; 1 MiB by default: review Q held 2 MiB
/// per unsent body, 6.7 GB from one call).
pub(crate) const BODY_CHUNK_BYTES: usize = 64 * 1024;

/// The longest method name a request may have (wasmtime-wasi-http takes any token: review Q
/// stored 16 MiB per request, 4.9 GB in 10 s).
pub const MAX_METHOD_BYTES: usize = 64;

/// The longest authority (`host:port`) a request may have: a DNS name is at most 253 bytes.
/// wasmtime-wasi-http takes any length (review AB: 120 unsent requests of 40 MiB held 5 GB under
/// a `maxMemoryMB` of 64, kept by an idle actor).
pub const MAX_AUTHORITY_BYTES: usize = 512;

/// The longest path and query a request may have. wasmtime-wasi-http takes 64 KiB: 2,000 unsent
/// requests held 127 MiB per idle actor outside `maxMemoryMB` (follow-up review AB).
pub const MAX_PATH_BYTES: usize = 16 * 1024;

/// Shadows wasi:http's `set-method`, `set-authority` and `set-path-with-query` in a component
/// `linker` (after wasmtime-wasi-http's): a method name past `MAX_METHOD_BYTES`, an authority past
/// `MAX_AUTHORITY_BYTES` or a path past `MAX_PATH_BYTES` is refused (the guest gets `err`).
pub fn shadow(linker: &mut wasmtime::component::Linker<HostState>) -> wasmtime::Result<()> {
    use wasmtime_wasi_http::p2::bindings::http::types::{HostOutgoingRequest as _, Method};
    use wasmtime_wasi_http::p2::types::HostOutgoingRequest;
    linker.allow_shadowing(true);
    let r = linker.instance("wasi:http/types@0.2.12").and_then(|mut types| {
        types.func_wrap(
            "[method]outgoing-request.set-method",
            |mut store: wasmtime::StoreContextMut<'_, HostState>,
             (request, method): (wasmtime::component::Resource<HostOutgoingRequest>, Method)| {
                if matches!(&method, Method::Other(name) if name.len() > MAX_METHOD_BYTES) {
                    return Ok((Err(()),));
                }
                Ok((store.data_mut().http().set_method(request, method)?,))
            },
        )?;
        types.func_wrap(
            "[method]outgoing-request.set-authority",
            |mut store: wasmtime::StoreContextMut<'_, HostState>,
             (request, authority): (wasmtime::component::Resource<HostOutgoingRequest>, Option<String>)| {
                if authority.as_ref().is_some_and(|a| a.len() > MAX_AUTHORITY_BYTES) {
                    return Ok((Err(()),));
                }
                Ok((store.data_mut().http().set_authority(request, authority)?,))
            },
        )?;
        types.func_wrap(
            "[method]outgoing-request.set-path-with-query",
            |mut store: wasmtime::StoreContextMut<'_, HostState>,
             (request, path): (wasmtime::component::Resource<HostOutgoingRequest>, Option<String>)| {
                if path.as_ref().is_some_and(|p| p.len() > MAX_PATH_BYTES) {
                    return Ok((Err(()),));
                }
                Ok((store.data_mut().http().set_path_with_query(request, path)?,))
            },
        )
    });
    linker.allow_shadowing(false);
    r
}

impl WasiHttpHooks for HostAccess {
    fn p2_outgoing_body_chunk_size(&mut self) -> usize {
        BODY_CHUNK_BYTES
    }

    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        _options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> Box<dyn Future<Output = Sent> + Send> {
        // The guest goes on running while its request is out (it polls for the answer): it keeps
        // its concurrency slot.
        let access = HostAccess { permit: None, ..self.clone() };
        Box::new(async move {
            let (parts, body) = request.into_parts();
            // Admitted (counted, URL checked) before any of its body is read.
            let net = match access.admit_request(&parts.uri.to_string()) {
                Ok(net) => net,
                Err(e) => {
                    access.fail_call(e);
                    return Err(HttpError::HttpRequestDenied);
                }
            };
            let max = net.network.config().max_request_bytes;
            // Read frame by frame, each charged as it comes (see `HeldBytes`).
            let mut charge = Charge::new(access.http_held.clone());
            let mut body = Limited::new(body, max as usize);
            let mut bytes = Vec::new();
            while let Some(frame) = body.frame().await {
                let data = match frame {
                    Ok(frame) => frame.into_data().unwrap_or_default(),
                    Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                        let host = parts.uri.host().unwrap_or("").to_string();
                        let message = format!("{host}: the request's body is over maxRequestBytes {max}");
                        access.fail_call(ExecError::NetworkDenied { host, message });
                        return Err(HttpError::HttpRequestBodySize(None));
                    }
                    // The guest's own body failed (what it wrote disagrees with the
                    // Content-Length it set): the request is not sent and the guest is told
                    // why, as wasmtime tells it; no rule of the grant was broken (review BS2:
                    // such a request failed the call with NETWORK_DENIED, "over maxRequestBytes").
                    Err(e) => return Err(e.downcast::<HttpError>().map_or(HttpError::HttpRequestBodySize(None), |e| *e)),
                };
                if let Err(e) = charge.add(data.len() as u64) {
                    access.fail_call(e);
                    return Err(HttpError::InternalError(Some("the bodies held in the host are over maxMemoryMB".into())));
                }
                bytes.extend_from_slice(&data);
            }
            let body = bytes;
            let headers = parts
                .headers
                .iter()
                .map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
                .filter(|(k, _)| !crate::http_client::is_host_owned(k))
                .collect();
            let req = HttpRequest { method: parts.method.to_string(), url: parts.uri.to_string(), headers, body };
            // What the guest's budget has room for when it is this request's turn: a body past it
            // fails once that much came. Its response is charged in its turn.
            let held = access.http_held.clone();
            let room = || held.as_ref().map_or(u64::MAX, |h| h.cap.load(Ordering::Relaxed).saturating_sub(h.bytes.load(Ordering::Relaxed)));
            let keep = |resp: crate::network::HttpResponse| {
                drop(charge);
                let mut charge = Charge::new(access.http_held.clone());
                // Its headers stay in the host with it, read by the guest when it likes.
                let header_bytes: usize = resp.headers.iter().map(|(k, v)| k.len() + v.len()).sum();
                charge.add((resp.body.len() + header_bytes) as u64).map(|()| (resp, charge))
            };
            // A request still out when its call ends goes with it: an actor's guest that returned
            // without awaiting it had it go on downloading, its body uncounted until whole, one
            // more per call (review AC: 30 calls held 240 MiB under maxMemoryMB 16).
            let sent = tokio::select! {
                sent = access.send_admitted(&net, req, room, keep) => sent,
                () = net.ended_wait() => {
                    return Err(HttpError::InternalError(Some("the call that made this request has ended".into())));
                }
            };
            match sent {
                Ok(Err(e)) => {
                    access.fail_call(e);
                    Err(HttpError::InternalError(Some("the bodies held in the host are over maxMemoryMB".into())))
                }
                Ok(Ok((resp, charge))) => {
                    let mut out = http::Response::builder().status(resp.status);
                    for (k, v) in &resp.headers {
                        out = out.header(k, v);
                    }
                    let inner = Full::new(Bytes::from(resp.body)).map_err(|never| match never {}).boxed_unsync();
                    let body = Charged { inner, _charge: charge }.boxed_unsync();
                    let out = out.body(body).map_err(|e| HttpError::InternalError(Some(e.to_string())))?;
                    Ok((out, Box::new(async { Ok(()) }) as Box<dyn Future<Output = Result<(), HttpError>> + Send>))
                }
                Err(ExecError::NetworkError { message, .. }) if message.ends_with("timed out") => Err(HttpError::ConnectionTimeout),
                Err(ExecError::NetworkError { message, .. }) => Err(HttpError::InternalError(Some(message))),
                Err(e) => {
                    access.fail_call(e);
                    Err(HttpError::HttpRequestDenied)
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::capabilities::Capabilities;
    use crate::executor::{CallOptions, Executor};
    use crate::http_client::Network;
    use crate::network::{HostRule, NetworkConfig};
    use crate::options::{Definition, ExecutorOptions};
    use crate::store::MemorySource;
    use crate::test_guests as g;

    fn executor(network: bool) -> (Arc<Executor>, Definition) {
        let source = Arc::new(MemorySource::new());
        source.put("m.wasm", g::http_setter_component(g::RequestPart::Method));
        source.put("a.wasm", g::http_setter_component(g::RequestPart::Authority));
        source.put("p.wasm", g::http_setter_component(g::RequestPart::Path));
        source.put("f.wasm", g::fields_component());
        let config = NetworkConfig { allowed_hosts: vec![HostRule::parse("127.0.0.1").expect("rule")], ..Default::default() };
        let options = ExecutorOptions { network: network.then(|| Network::new(config).expect("network")), ..Default::default() };
        let ex = Arc::new(Executor::new(source, options).expect("executor"));
        let caps = Capabilities { network, ..Default::default() };
        (ex, Definition { name: "m".into(), version: "1".into(), wasm_blob_path: "m.wasm".into(), capabilities: caps, ..Default::default() })
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn wasi_http_types_need_the_network_grant_and_method_names_are_short() {
        // Review Q: a component granted nothing imported wasi:http/types and stored a 16 MiB
        // method name in each of thousands of requests (4.9 GB in 10 s).
        let (ex, def) = executor(false);
        assert_eq!(ex.execute(&def, "3".into(), CallOptions::default()).await.map_err(|e| e.code()).map(|o| o.output), Err("CAPABILITY_DENIED"));
        let (ex, def) = executor(true);
        let set = |n: usize| {
            let (ex, def) = (ex.clone(), def.clone());
            async move { ex.execute(&def, n.to_string(), CallOptions::default()).await.expect("runs").output }
        };
        assert_eq!(set(super::MAX_METHOD_BYTES).await, "1");
        assert_eq!(set(super::MAX_METHOD_BYTES + 1).await, "0");
        assert_eq!(set(60_000).await, "0");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn authorities_are_short() {
        // Review AB: wasmtime-wasi-http kept any authority: 120 unsent requests of 40 MiB held
        // 5 GB in the host under a maxMemoryMB of 64.
        let (ex, mut def) = executor(true);
        def.wasm_blob_path = "a.wasm".into();
        def.name = "a".into();
        let set = |n: usize| {
            let (ex, def) = (ex.clone(), def.clone());
            async move { ex.execute(&def, n.to_string(), CallOptions::default()).await.expect("runs").output }
        };
        assert_eq!(set(super::MAX_AUTHORITY_BYTES).await, "1");
        assert_eq!(set(super::MAX_AUTHORITY_BYTES + 1).await, "0");
        assert_eq!(set(100_000).await, "0");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn paths_are_at_most_16_kib() {
        // Follow-up review AB: 64 KiB paths of 2,000 unsent requests held 127 MiB per idle actor.
        let (ex, mut def) = executor(true);
        def.wasm_blob_path = "p.wasm".into();
        def.name = "p".into();
        let set = |n: usize| {
            let (ex, def) = (ex.clone(), def.clone());
            async move { ex.execute(&def, n.to_string(), CallOptions::default()).await.expect("runs").output }
        };
        assert_eq!(set(super::MAX_PATH_BYTES).await, "1");
        assert_eq!(set(super::MAX_PATH_BYTES + 1).await, "0");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn one_get_random_bytes_asks_for_at_most_1_mib() {
        // Review Q: one 64 MiB ask was a ~230 ms host call, past a 1 ms deadline.
        let source = Arc::new(MemorySource::new());
        source.put("r.wasm", g::random_component());
        let ex = Arc::new(Executor::new(source, ExecutorOptions::default()).expect("executor"));
        let def = Definition { name: "r".into(), version: "1".into(), wasm_blob_path: "r.wasm".into(), ..Default::default() };
        let ask = |n: u64| {
            let (ex, def) = (ex.clone(), def.clone());
            async move { ex.execute(&def, n.to_string(), CallOptions::default()).await.map(|o| o.output).map_err(|e| e.code()) }
        };
        assert_eq!(ask(crate::capabilities::MAX_RANDOM_BYTES).await, Ok("1".to_string()));
        assert_eq!(ask(crate::capabilities::MAX_RANDOM_BYTES + 1).await, Err("TRAP"));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_component_holds_at_most_max_resources() {
        // Review Q: 10,000 `fields` of 128 KiB each were 1.25 GB of host memory.
        let (ex, def) = executor(true);
        let def = Definition { wasm_blob_path: "f.wasm".into(), name: "f".into(), ..def };
        let make = |n: usize| {
            let (ex, def) = (ex.clone(), def.clone());
            async move { ex.execute(&def, n.to_string(), CallOptions::default()).await.map(|o| o.output).map_err(|e| e.code()) }
        };
        assert_eq!(make(super::MAX_RESOURCES - 16).await, Ok("1".to_string()));
        assert_eq!(make(super::MAX_RESOURCES + 1).await, Err("TRAP"));
    }
}
