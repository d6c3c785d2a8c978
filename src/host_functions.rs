//! Host functions: functions of the embedder (JS functions given as `options.hostFunctions`)
//! a guest calls by import, JSON text in and out. A module imports one as `namespace.name`; a
//! call may reach only those its definition names in `capabilities.hostFunctions` (any other
//! import is `CAPABILITY_DENIED` before the guest starts, named). The same calling path carries
//! the network capability's request function.
//!
//! How a guest passes text depends on the import's type, which is its ABI's convention:
//! - `(i32) -> i32`: AssemblyScript strings (a pointer to a string; the result a string
//!   allocated with the guest's `__new`);
//! - `(i64) -> i64`: Extism memory handles (a block of the kernel's memory, in and out).
//!
//! Components reach them through `loom:activity/host.call` (see `abi::component`).
//!
//! A host call is asynchronous: while it waits, the guest's fiber is suspended, no thread
//! waits, and the call gives back its concurrency slot (`permit`). The call's deadline and
//! cancellation cover the wait; when the call ends mid-wait its future is dropped, which tells
//! the host (the JS function's `ctx.signal` fires).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Instant;

use wasmtime::{Caller, ExternType, FuncType, Linker, Module, Val, ValType};

use crate::error::ExecError;
use crate::host::HostState;
use crate::limits::CancelFlag;
use crate::network::{HttpRequest, Network};
use crate::permit::PermitSlot;
use crate::store::BoxFuture;

/// One call of a host function.
#[derive(Debug, Clone)]
pub struct HostRequest {
    /// `namespace.name`.
    pub name: String,
    /// JSON text.
    pub input: String,
    /// The calling activity's name.
    pub activity: String,
    pub actor_id: Option<String>,
    /// Whether the activity call is over, for a host that starts the function later.
    pub call: CallLife,
    /// The most JSON text the result may be (the call's `maxInputBytes`): a host that holds the
    /// result elsewhere checks it there, before copying it.
    pub max_result_bytes: u64,
}

/// What ends an activity call from outside: its deadline and its cancellation. A host that runs
/// a host function later than asked (the JS thread was busy) asks it first, so a call past its
/// deadline or cancelled does not run it, even before its thread has dropped the call's future.
#[derive(Debug, Clone, Default)]
pub struct CallLife {
    pub deadline: Option<Instant>,
    pub cancel: Option<CancelFlag>,
}

impl CallLife {
    pub fn is_over(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d) || self.cancel.as_ref().is_some_and(|c| c.is_cancelled())
    }
}

/// A host function's failure (a JS throw or rejection): its message and its `code`, if any.
#[derive(Debug, Clone, PartialEq)]
pub struct HostFailure {
    pub message: String,
    pub code: Option<String>,
}

/// What the embedder offers. Dropping a `call` future before it settles aborts the call.
pub trait HostFunctions: Send + Sync {
    fn names(&self) -> Vec<String>;
    fn call(&self, req: HostRequest) -> BoxFuture<'static, Result<String, HostFailure>>;
    /// As `BlobSource::release`: nothing calls after it.
    fn release(&self) {}
}

/// A call's network: the executor's client and the requests this call has made.
pub struct NetworkCall {
    pub network: Arc<Network>,
    pub requests: AtomicU32,
    /// Set when the call ends.
    pub ended: std::sync::atomic::AtomicBool,
    /// Wakes the requests still out when the call ends (`ended_wait`).
    ended_signal: tokio::sync::Notify,
    /// Held while a request is out: one at a time per call.
    pub one_at_a_time: tokio::sync::Mutex<()>,
}

impl NetworkCall {
    pub fn new(network: Arc<Network>) -> Self {
        NetworkCall {
            network,
            requests: AtomicU32::new(0),
            ended: Default::default(),
            ended_signal: Default::default(),
            one_at_a_time: Default::default(),
        }
    }

    /// Resolves once the call has ended.
    pub async fn ended_wait(&self) {
        let notified = self.ended_signal.notified();
        tokio::pin!(notified);
        // Registered before the flag is read: an end between the two still wakes it.
        notified.as_mut().enable();
        if self.ended.load(Ordering::Acquire) {
            return;
        }
        notified.await;
    }
}

/// The most text a guest may hand a host function or the network in one argument (UTF-8 bytes,
/// or UTF-16 bytes for AssemblyScript): far below what V8 can hold in one string.
pub const MAX_HOST_ARG_BYTES: u64 = 64 * 1024 * 1024;

/// What one call's host-function arguments together may cost the JS thread to parse, estimated
/// (`output::js_cost`, nanoseconds): 0.4 s, and a tenth of the time the call has run (an agent's
/// loop passing its conversation each turn runs for as long as it needs; a guest cannot hold the
/// thread more than about a tenth of its call past the first 0.4 s). The first argument is taken
/// whatever its estimate (it is at most `maxInputBytes`, as the call's output is). Each argument
/// was bounded, but not how many a call passed: one of 16 MiB of `[{},{},...]` took 1.6 s to
/// parse, and a guest passing it again and again held the JS thread 95% of its 30 s (review AI);
/// counting values alone missed objects' keys, long numbers and strings (its follow-up: 93%).
pub const MAX_HOST_ARG_COST_NS: u64 = 400_000_000;
/// The share of the call's time that adds to `MAX_HOST_ARG_COST_NS`, as a divisor.
pub const HOST_ARG_COST_SHARE: u32 = 10;

/// What the guest of one call may reach, set on its Store for that call only.
#[derive(Clone, Default)]
pub struct HostAccess {
    pub functions: Option<Arc<dyn HostFunctions>>,
    /// `capabilities.hostFunctions` of the definition.
    pub granted: Arc<Vec<String>>,
    /// The call's activity (its name is what a host function is told).
    pub activity: Option<crate::modules::DefKey>,
    pub actor_id: Option<String>,
    /// The call's concurrency slot, given back while it waits.
    pub permit: Option<Arc<PermitSlot>>,
    /// Present when the definition asked for the network and the executor grants it.
    pub network: Option<Arc<NetworkCall>>,
    /// The call's deadline (a request's timeout ends by it), and its `maxExecutionMs`.
    pub deadline: Option<Instant>,
    pub limit_ms: u64,
    /// The call's cancellation (host functions run later than asked check it).
    pub cancel: Option<CancelFlag>,
    /// The call's `maxInputBytes`: the most JSON a host function is handed or may return.
    pub max_result_bytes: u64,
    /// What fails the call once the guest returns, whatever it did meanwhile (a denied
    /// `wasi:http` request, which the guest sees only as an error code).
    pub failure: Arc<std::sync::Mutex<Option<ExecError>>>,
    /// A component's `wasi:http` bodies held in the host (set by `wasi_http` from its Store).
    pub http_held: Option<Arc<crate::wasi_http::HeldBytes>>,
    /// The instance makes a module's initial image (`durable::initial_image`), which snapshots
    /// are taken against: no call's host functions run there.
    pub making_image: bool,
    /// What the call's host-function arguments so far cost the JS thread (`output::js_cost`),
    /// and when the call started (none: no share of its time adds to the budget).
    pub arg_cost: Arc<std::sync::atomic::AtomicU64>,
    pub started: Option<Instant>,
    /// Set for a call's guest code; the access a Store keeps once its call returned
    /// (`Default`) has it unset.
    pub in_call: bool,
}

impl HostAccess {
    /// How the call ended, if it has (cancelled, or past its deadline): for host work done in
    /// steps, which stops there with the call's own error.
    pub fn ended(&self) -> Option<ExecError> {
        if self.cancel.as_ref().is_some_and(|c| c.is_cancelled()) {
            return Some(ExecError::Cancelled);
        }
        self.deadline.is_some_and(|d| Instant::now() >= d).then_some(ExecError::Timeout { limit_ms: self.limit_ms, during: "" })
    }

    /// Makes the call fail with `e` when the guest returns (the first such error is kept).
    pub fn fail_call(&self, e: ExecError) {
        let mut f = self.failure.lock().unwrap_or_else(|p| p.into_inner());
        f.get_or_insert(e);
    }

    /// Guest code that runs outside a call's host access: the runtime's collection (`__collect`,
    /// run on the call's Store once the guest has returned), a start function run to move or
    /// restore an actor's state. Its calls of host functions and requests are refused as such:
    /// the refusal named the definition's grants, which grant them (review AL2).
    fn outside_call(&self, what: &str) -> Option<ExecError> {
        (!self.in_call && !self.making_image).then(|| {
            ExecError::CapabilityDenied(format!(
                "the guest reached {what} outside a call's own code (its runtime's collection, __collect, after the call returned, or a start function run to move or restore an actor): host functions and the network are reachable only from the call's own code"
            ))
        })
    }

    /// The error the call must fail with, if any.
    pub fn take_failure(&self) -> Option<ExecError> {
        self.failure.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
    /// Waits for `fut` with the call's concurrency slot given back.
    async fn without_slot<F: std::future::Future>(&self, fut: F) -> F::Output {
        crate::permit::without_slot(self.permit.as_deref(), fut).await
    }

    /// Calls host function `name` with JSON text `input`.
    pub async fn call(&self, name: &str, input: String) -> Result<String, ExecError> {
        // The name is the guest's (a component's `call` takes any string): errors show its start.
        let shown = crate::trap_text::short(name);
        if self.making_image {
            // Its answer would be in the image: another process (another answer) restoring a
            // snapshot against its own image would get other memory than was saved. It had been
            // refused as an argument over a maxInputBytes of 0 (INVALID_OUTPUT, review AB).
            return Err(ExecError::CapabilityDenied(format!(
                "the module's start function calls host function {shown}: its state cannot be snapshotted (actorStore, snapshotActor and restoreActor need a start function that calls none)"
            )));
        }
        if let Some(e) = self.outside_call(&format!("host function {shown}")) {
            return Err(e);
        }
        if input.len() as u64 > MAX_HOST_ARG_BYTES {
            return Err(ExecError::InvalidOutput {
                message: format!("the argument of host function {shown} is {} bytes, over the limit of {MAX_HOST_ARG_BYTES}", input.len()),
                preview: String::new(),
            });
        }
        // The JS thread parses the argument: bounded as the call's own input is (a 60 MiB
        // argument held the event loop for over a second).
        if input.len() as u64 > self.max_result_bytes {
            return Err(ExecError::InvalidOutput {
                message: format!(
                    "the argument of host function {shown} is {} bytes, over the call's maxInputBytes {}",
                    input.len(),
                    self.max_result_bytes
                ),
                preview: String::new(),
            });
        }
        if !self.granted.iter().any(|g| g == name) {
            return Err(ExecError::CapabilityDenied(format!(
                "the guest called host function {shown}, which its definition does not name in capabilities.hostFunctions"
            )));
        }
        let Some(functions) = &self.functions else {
            return Err(ExecError::CapabilityDenied(format!("host function {shown}: the executor has no options.hostFunctions")));
        };
        if serde_json::from_str::<serde::de::IgnoredAny>(&input).is_err() {
            return Err(ExecError::InvalidOutput {
                message: format!("the guest passed host function {shown} text that is not JSON"),
                preview: input.chars().take(200).collect(),
            });
        }
        let cost = crate::output::js_cost(&input);
        let before = self.arg_cost.fetch_add(cost, std::sync::atomic::Ordering::Relaxed);
        let share = self.started.map_or(0, |t| (t.elapsed() / HOST_ARG_COST_SHARE).as_nanos() as u64);
        let allowed = MAX_HOST_ARG_COST_NS.saturating_add(share);
        if before > 0 && before.saturating_add(cost) > allowed {
            return Err(ExecError::InvalidOutput {
                message: format!(
                    "the arguments the guest passed host functions in this call would take the JS thread about {} ms to parse, over the {} ms the call may take so far (400 ms and a tenth of the time it has run)",
                    before.saturating_add(cost) / 1_000_000,
                    allowed / 1_000_000
                ),
                preview: String::new(),
            });
        }
        let req = HostRequest {
            name: name.to_string(),
            input,
            activity: self.activity.as_ref().map(|k| k.name.clone()).unwrap_or_default(),
            actor_id: self.actor_id.clone(),
            call: CallLife { deadline: self.deadline, cancel: self.cancel.clone() },
            max_result_bytes: self.max_result_bytes,
        };
        let out = self.without_slot(functions.call(req)).await.map_err(|f| ExecError::HostFunctionError {
            function: name.to_string(),
            message: f.message,
            code: f.code,
        })?;
        if out.len() as u64 > self.max_result_bytes {
            return Err(ExecError::HostFunctionError {
                function: name.to_string(),
                message: format!("its result is {} bytes of JSON, over the call's maxInputBytes {}", out.len(), self.max_result_bytes),
                code: None,
            });
        }
        Ok(out)
    }

    /// The call's network, if this guest code may make a request at all (checked before the
    /// request is read: an Extism plugin without the grant had a malformed or 200 MB request
    /// refused as such, not as the capability it lacks, review BP2).
    pub fn may_request(&self) -> Result<&Arc<NetworkCall>, ExecError> {
        if let Some(e) = self.outside_call("an HTTP request") {
            return Err(e);
        }
        self.network.as_ref().ok_or_else(|| {
            ExecError::CapabilityDenied("the guest made an HTTP request without the network capability (capabilities.network and options.network)".into())
        })
    }

    /// Admits one HTTP request of this call to `url`: the network is granted, the call is still
    /// running and has not been denied a request already (a guest cannot go on probing), it is
    /// under `maxRequestsPerCall`, and the URL passes the grant's rules (DNS is checked when
    /// connecting). Counted here, before anything of the request is read.
    pub fn admit_request(&self, url: &str) -> Result<Arc<NetworkCall>, ExecError> {
        let net = self.may_request()?;
        let host = || reqwest::Url::parse(url).ok().and_then(|u| u.host_str().map(str::to_string)).unwrap_or_default();
        if net.ended.load(Ordering::Acquire) {
            return Err(ExecError::NetworkDenied { host: host(), message: format!("{}: the call that made this request has ended", host()) });
        }
        if self.failure.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
            return Err(ExecError::NetworkDenied { host: host(), message: format!("{}: a request of this call was denied already", host()) });
        }
        let max = net.network.config().max_requests_per_call;
        if net.requests.fetch_add(1, Ordering::Relaxed) >= max {
            return Err(ExecError::NetworkDenied { message: format!("{}: over maxRequestsPerCall ({max} requests per call)", host()), host: host() });
        }
        net.network.check(url)?;
        Ok(net.clone())
    }

    /// Sends an HTTP request under the network grant; a response body over `max_body` (what the
    /// guest can hold) is `OUT_OF_MEMORY` once that much has come.
    pub async fn http(&self, request: HttpRequest, max_body: u64) -> Result<crate::network::HttpResponse, ExecError> {
        let net = self.admit_request(&request.url)?;
        self.send_admitted(&net, request, || max_body, |response| response).await
    }

    /// Sends a request `admit_request` let through, one at a time per call (a guest cannot hold
    /// many bodies in the host at once): its body's most (`max_body`) is taken once it is its
    /// turn, and its response handed to `keep` before the next one's turn (what the guest has room
    /// for counts the one before: two components' requests sent at once were each read as far as
    /// the room before either, 2x `maxMemoryMB`: review AJ).
    pub async fn send_admitted<T>(
        &self,
        net: &NetworkCall,
        request: HttpRequest,
        max_body: impl FnOnce() -> u64,
        keep: impl FnOnce(crate::network::HttpResponse) -> T,
    ) -> Result<T, ExecError> {
        let deadline = self.deadline.unwrap_or_else(|| Instant::now() + net.network.config().timeout);
        let _one = net.one_at_a_time.lock().await;
        if net.ended.load(Ordering::Acquire) {
            return Err(ExecError::NetworkDenied { host: String::new(), message: "the call that made this request has ended".into() });
        }
        self.without_slot(net.network.send(request, deadline, max_body())).await.map(keep)
    }

    /// The call ended: requests still in flight (a component's, which outlive the guest's
    /// return) are refused from now on, and those out are dropped (`ended_wait`).
    pub fn end(&self) {
        if let Some(net) = &self.network {
            net.ended.store(true, Ordering::Release);
            net.ended_signal.notify_waiters();
        }
    }
}

/// How a host import passes text, by its type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Convention {
    /// `(i32) -> i32`: AssemblyScript strings.
    AsString,
    /// `(i64) -> i64`: Extism kernel memory handles.
    ExtismHandle,
}

impl Convention {
    fn of(ty: &FuncType) -> Option<Convention> {
        let params: Vec<ValType> = ty.params().collect();
        let results: Vec<ValType> = ty.results().collect();
        match (params.as_slice(), results.as_slice()) {
            ([ValType::I32], [ValType::I32]) => Some(Convention::AsString),
            ([ValType::I64], [ValType::I64]) => Some(Convention::ExtismHandle),
            _ => None,
        }
    }
}

/// The AssemblyScript import of the network capability: `loom.http(requestJson) -> responseJson`.
pub const HTTP_IMPORT: (&str, &str) = ("loom", "http");

/// A function import the process linker does not satisfy: a host function (or `loom.http`).
#[derive(Debug, Clone, PartialEq)]
pub struct HostImport {
    pub module: String,
    pub name: String,
    /// `module.name`, what `capabilities.hostFunctions` names.
    pub key: String,
    /// `None`: a type no convention fits (refused when the call starts).
    pub convention: Option<Convention>,
    pub ty: String,
}

impl HostImport {
    pub fn is_http(&self) -> bool {
        (self.module.as_str(), self.name.as_str()) == HTTP_IMPORT
    }
}

/// A module's host imports, or `INVALID_MODULE` for an unknown import that is not a function.
pub fn host_imports<'a>(module: &Module, unknown: impl Iterator<Item = (&'a str, &'a str)>) -> Result<Vec<HostImport>, ExecError> {
    let types = import_types(module);
    let mut out = Vec::new();
    for (m, n) in unknown {
        let Some(ty) = types.get(&(m, n)) else { continue };
        let ExternType::Func(ty) = ty.clone() else {
            return Err(ExecError::InvalidModule(format!(
                "unknown import {m}.{n} is not a function (the host provides only functions)"
            )));
        };
        out.push(HostImport {
            module: m.to_string(),
            name: n.to_string(),
            key: format!("{m}.{n}"),
            convention: Convention::of(&ty),
            ty: ty.to_string(),
        });
    }
    Ok(out)
}

/// The type of each import by its module and name (the first, for a name imported twice). Looked
/// up by a scan of the imports per import, a module of 80,000 imports (672 KB) took over two
/// minutes of compile thread, on past its call's `compileTimeoutMs` and `close()` (review AE).
fn import_types(module: &Module) -> HashMap<(&str, &str), ExternType> {
    let mut types = HashMap::new();
    for i in module.imports() {
        types.entry((i.module(), i.name())).or_insert_with(|| i.ty());
    }
    types
}

/// Before a call starts: every host import must be granted by the definition and offered by the
/// executor (else `CAPABILITY_DENIED`, named), and of a type its ABI's convention fits. (The
/// network import is `network::authorize`'s.)
pub fn authorize(imports: &[HostImport], granted: &[String], offered: &[String]) -> Result<(), ExecError> {
    if imports.is_empty() {
        return Ok(());
    }
    for (names, whose) in [(granted, "its definition does not grant (capabilities.hostFunctions)"), (offered, "the executor does not offer (options.hostFunctions)")] {
        // A set: looked up in the list per import, 10,000 granted imports held the JS thread
        // ~200 ms per call (review AE's follow-up).
        let names: std::collections::HashSet<&str> = names.iter().map(String::as_str).collect();
        let outside: Vec<&str> =
            imports.iter().filter(|i| !i.is_http() && !names.contains(i.key.as_str())).map(|i| i.key.as_str()).collect();
        if !outside.is_empty() {
            return Err(ExecError::CapabilityDenied(format!("the module imports {}, which {whose}", crate::trap_text::name_list(&outside, 20))));
        }
    }
    if let Some(bad) = imports.iter().find(|i| i.convention.is_none() || (i.is_http() && i.convention != Some(Convention::AsString))) {
        return Err(ExecError::InvalidModule(format!(
            "host import {} has type {}; a host function takes and returns JSON text as (i32) -> i32 (an AssemblyScript string) or (i64) -> i64 (an Extism memory handle)",
            crate::trap_text::short(&bad.key),
            crate::trap_text::short(&bad.ty)
        )));
    }
    Ok(())
}

/// A linker for a module with host imports: the process linker plus one async function per
/// import, which dispatches on the Store's `HostAccess` at call time.
pub fn link(base: &Linker<HostState>, module: &Module, imports: &[HostImport]) -> Result<Linker<HostState>, ExecError> {
    let mut linker = base.clone();
    let types = import_types(module);
    for imp in imports {
        let Some(ExternType::Func(ty)) = types.get(&(imp.module.as_str(), imp.name.as_str())).cloned() else {
            continue;
        };
        let import = Arc::new(imp.clone());
        linker
            .func_new_async(&imp.module, &imp.name, ty, move |caller, params, results| {
                let import = import.clone();
                Box::new(async move { dispatch(caller, &import, params, results).await })
            })
            .map_err(|e| ExecError::InvalidModule(format!("cannot link {}: {e:#}", imp.key)))?;
    }
    Ok(linker)
}

async fn dispatch(mut caller: Caller<'_, HostState>, imp: &HostImport, params: &[Val], results: &mut [Val]) -> wasmtime::Result<()> {
    let convention = imp.convention.ok_or_else(|| wasmtime::Error::new(ExecError::InvalidModule(format!("host import {} has type {}", imp.key, imp.ty))))?;
    if caller.data().in_guest_for_host {
        // Unrefused, a guest whose `__new` calls a host function nests without end, a fiber
        // stack (two mappings) per level: ~31,000 levels exhausted the process's mappings.
        return Err(wasmtime::Error::new(ExecError::Trap {
            kind: "host_reentry".into(),
            message: format!("host import {} was called from the guest's `__new` while the host was handing back a host function's result", imp.key),
        }));
    }
    let input = match (convention, params.first()) {
        (Convention::AsString, Some(Val::I32(ptr))) => read_as(&mut caller, *ptr, &imp.key)?,
        (Convention::ExtismHandle, Some(Val::I64(off))) => caller.data().extism.read_text_capped(*off as u64, MAX_HOST_ARG_BYTES)?,
        _ => return Err(wasmtime::Error::new(ExecError::internal("a host import called with the wrong arguments"))),
    };
    let access = caller.data().access.clone();
    let output = if imp.is_http() {
        // `authorize` admits the network import as `(i32) -> i32` only (an Extism plugin reaches
        // the network through the kernel's `http_request`): its text goes to the guest's own
        // heap, whose free space the host cannot see (a memory at its cap may be mostly free:
        // review AN1F had every response refused, 10 bytes too), so it may take the whole cap.
        let request = HttpRequest::from_json(&input).map_err(wasmtime::Error::new)?;
        let cap = caller.data().limiter.max_bytes();
        let response = access.http(request, cap).await.map_err(wasmtime::Error::new)?;
        response.to_json_within(cap, crate::http_client::TextUnits::Utf16).map_err(wasmtime::Error::new)?
    } else {
        access.call(&imp.key, input).await.map_err(wasmtime::Error::new)?
    };
    results[0] = match convention {
        Convention::AsString => Val::I32(write_as(&mut caller, &output).await?),
        Convention::ExtismHandle => {
            let d = caller.data_mut();
            Val::I64(d.extism.write_bytes(output.as_bytes(), &mut d.limiter)? as i64)
        }
    };
    Ok(())
}

fn memory(caller: &mut Caller<'_, HostState>) -> wasmtime::Result<wasmtime::Memory> {
    caller
        .get_export("memory")
        .and_then(|e| e.into_memory())
        .ok_or_else(|| wasmtime::Error::new(ExecError::MissingExport("a host function needs the guest's exported `memory`".into())))
}

fn read_as(caller: &mut Caller<'_, HostState>, ptr: i32, key: &str) -> wasmtime::Result<String> {
    let mem = memory(caller)?;
    crate::abi::assemblyscript::read_string(mem.data(&*caller), ptr, MAX_HOST_ARG_BYTES).map_err(|e| {
        wasmtime::Error::new(match e {
            ExecError::InvalidOutput { message, preview } => {
                ExecError::InvalidOutput { message: format!("the argument of host import {key}: {message}"), preview }
            }
            ExecError::OutputTooLarge { size, limit } => ExecError::InvalidOutput {
                message: format!("the argument of host import {key} is {size} bytes, over the limit of {limit}"),
                preview: String::new(),
            },
            other => other,
        })
    })
}

/// Allocates an AssemblyScript string with the guest's `__new` and fills it.
async fn write_as(caller: &mut Caller<'_, HostState>, text: &str) -> wasmtime::Result<i32> {
    let new = caller
        .get_export("__new")
        .and_then(|e| e.into_func())
        .ok_or_else(|| wasmtime::Error::new(ExecError::MissingExport("a host function returning text needs the guest's `__new` (asc --exportRuntime)".into())))?
        .typed::<(i32, i32), i32>(&*caller)?;
    let byte_len = crate::text::utf16_len_bytes(text);
    if byte_len > crate::abi::assemblyscript::MAX_AS_OBJECT_BYTES {
        return Err(wasmtime::Error::new(ExecError::InputTooLarge { size: byte_len, limit: crate::abi::assemblyscript::MAX_AS_OBJECT_BYTES }));
    }
    // The call runs on a fiber stack of its own, which the Store keeps (its one cached stack)
    // until the call's own fiber ends (`engine::STACKS_PER_INSTANCE`).
    caller.data_mut().in_guest_for_host = true;
    let ptr = new.call_async(&mut *caller, (byte_len as i32, crate::abi::assemblyscript::STRING_CLASS_ID)).await;
    caller.data_mut().in_guest_for_host = false;
    let ptr = ptr?;
    let mem = memory(caller)?;
    crate::abi::assemblyscript::write_utf16(mem.data_mut(&mut *caller), ptr, text, byte_len).map_err(wasmtime::Error::new)?;
    Ok(ptr)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn import(key: &str, convention: Option<Convention>) -> HostImport {
        let (m, n) = key.split_once('.').unwrap();
        HostImport { module: m.into(), name: n.into(), key: key.into(), convention, ty: "(func)".into() }
    }

    #[test]
    fn authorize_names_what_is_denied() {
        let crm = import("crm.lookup", Some(Convention::AsString));
        let granted = vec!["crm.lookup".to_string()];
        assert!(authorize(&[crm.clone()], &granted, &granted).is_ok());
        let e = authorize(&[crm.clone()], &[], &granted).unwrap_err();
        assert_eq!(e.code(), "CAPABILITY_DENIED");
        assert!(e.to_string().contains("crm.lookup"), "{e}");
        let e = authorize(&[crm.clone()], &granted, &[]).unwrap_err();
        assert!(e.to_string().contains("options.hostFunctions"), "{e}");
        let http = import("loom.http", Some(Convention::AsString));
        assert!(authorize(&[http], &[], &[]).is_ok(), "the network grant is checked apart");
        let odd = import("crm.lookup", None);
        assert_eq!(authorize(&[odd], &granted, &granted).unwrap_err().code(), "INVALID_MODULE");
        // Many denied, with long names: the message names 20, each cut (review AE's follow-up:
        // 2,000 names of 99 KB were joined whole, on the JS thread, at every call).
        let long: Vec<HostImport> = (0..50).map(|i| import(&format!("m.{i}{}", "x".repeat(10_000)), Some(Convention::AsString))).collect();
        let e = authorize(&long, &[], &[]).unwrap_err().to_string();
        assert!(e.contains(", and 30 more") && e.len() < 20 * 300 + 200, "{}", e.len());
    }

    struct Echo;

    impl HostFunctions for Echo {
        fn names(&self) -> Vec<String> {
            vec!["crm.lookup".into()]
        }
        fn call(&self, req: HostRequest) -> BoxFuture<'static, Result<String, HostFailure>> {
            Box::pin(async move { Ok(req.input.len().to_string()) })
        }
    }

    #[tokio::test]
    async fn a_calls_host_function_arguments_together_cost_the_js_thread_at_most_a_budget() {
        let access = || HostAccess {
            functions: Some(Arc::new(Echo)),
            granted: Arc::new(vec!["crm.lookup".into()]),
            max_result_bytes: 16 << 20,
            in_call: true,
            ..Default::default()
        };
        // Review AI: 16 MiB of `[{},{},...]` passed again and again (1.6 s of JSON.parse each).
        let objects = |n: usize| format!("[{}{{}}]", "{},".repeat(n - 1));
        let a = access();
        assert!(a.call("crm.lookup", objects(500_000)).await.is_ok());
        assert!(a.call("crm.lookup", objects(500_000)).await.is_ok());
        let e = a.call("crm.lookup", objects(500_000)).await.expect_err("past the call's budget");
        assert_eq!(e.code(), "INVALID_OUTPUT");
        assert!(e.to_string().contains("ms to parse"), "{e}");
        // Its follow-up: an object's keys are dearer than its values.
        let a = access();
        let text = format!("\"{}\"", "x".repeat(1 << 20));
        for _ in 0..25 {
            assert!(a.call("crm.lookup", text.clone()).await.is_ok(), "a string costs little a byte");
        }
        let keys = format!("{{{}\"k\":0}}", (0..300_000).map(|k| format!("\"k{k}\":0,")).collect::<String>());
        assert!(a.call("crm.lookup", keys.clone()).await.is_err());
        // A tenth of the time the call has run adds to it (review AI's second follow-up: an agent
        // passing its 200 KB conversation at each of 300 turns was refused at the 130th).
        let a = HostAccess { started: Some(Instant::now() - std::time::Duration::from_secs(10)), ..access() };
        for _ in 0..8 {
            assert!(a.call("crm.lookup", objects(500_000)).await.is_ok(), "0.4 s and 1 s of 10 s");
        }
        assert!(a.call("crm.lookup", objects(500_000)).await.is_err());
        // The first argument goes whatever its cost (it is at most maxInputBytes).
        let a = access();
        assert!(a.call("crm.lookup", objects(1_300_000)).await.is_ok());
        assert!(a.call("crm.lookup", "1".into()).await.is_err());
    }

    #[test]
    fn a_call_is_over_past_its_deadline_or_once_cancelled() {
        let soon = Instant::now() + std::time::Duration::from_millis(30);
        let cancel = CancelFlag::new();
        let life = CallLife { deadline: Some(soon), cancel: Some(cancel.clone()) };
        assert!(!life.is_over());
        cancel.cancel();
        assert!(life.is_over(), "cancelled");
        let life = CallLife { deadline: Some(soon), cancel: Some(CancelFlag::new()) };
        std::thread::sleep(std::time::Duration::from_millis(40));
        assert!(life.is_over(), "past its deadline");
        assert!(!CallLife::default().is_over(), "no deadline, no cancel: a call that only its own end ends");
    }
}
