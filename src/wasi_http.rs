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

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

use crate::error::ExecError;
use crate::host::HostState;
use crate::host_functions::HostAccess;
use crate::network::HttpRequest;

/// Resources one component may hold at once.
pub const MAX_RESOURCES: usize = 10_000;

/// A component's WASI state.
pub struct ComponentWasi {
    pub ctx: WasiCtx,
    pub table: ResourceTable,
    pub http: WasiHttpCtx,
}

impl ComponentWasi {
    pub fn new(ctx: WasiCtx) -> Self {
        // Resources a guest may hold at once (streams, requests, pollables): bounded.
        let mut table = ResourceTable::new();
        table.set_max_capacity(MAX_RESOURCES);
        ComponentWasi { ctx, table, http: WasiHttpCtx::new() }
    }
}

impl HostState {
    fn component_wasi(&mut self) -> &mut ComponentWasi {
        // Every component store gets its context at instantiation; an empty one stands in.
        self.component.get_or_insert_with(|| Box::new(ComponentWasi::new(WasiCtx::builder().build())))
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        let c = self.component_wasi();
        WasiCtxView { ctx: &mut c.ctx, table: &mut c.table }
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        let HostState { component, access, .. } = self;
        let c = component.get_or_insert_with(|| Box::new(ComponentWasi::new(WasiCtx::builder().build())));
        WasiHttpCtxView { hooks: access, table: &mut c.table, ctx: &mut c.http }
    }
}

type Sent = Result<(http::Response<WasiBody>, Box<dyn Future<Output = Result<(), HttpError>> + Send>), HttpError>;

impl WasiHttpHooks for HostAccess {
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
            let body = match Limited::new(body, max as usize).collect().await {
                Ok(b) => b.to_bytes().to_vec(),
                Err(_) => {
                    let host = parts.uri.host().unwrap_or("").to_string();
                    let message = format!("{host}: the request's body is over maxRequestBytes {max} (or failed)");
                    access.fail_call(ExecError::NetworkDenied { host, message });
                    return Err(HttpError::HttpRequestBodySize(None));
                }
            };
            let headers = parts
                .headers
                .iter()
                .map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
                .filter(|(k, _)| k != "host")
                .collect();
            let req = HttpRequest { method: parts.method.to_string(), url: parts.uri.to_string(), headers, body };
            match access.send_admitted(&net, req).await {
                Ok(resp) => {
                    let mut out = http::Response::builder().status(resp.status);
                    for (k, v) in &resp.headers {
                        out = out.header(k, v);
                    }
                    let body = Full::new(Bytes::from(resp.body)).map_err(|never| match never {}).boxed_unsync();
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
