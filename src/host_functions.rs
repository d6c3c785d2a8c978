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

#[path = "host_function_imports.rs"]
mod imports;
pub use imports::{authorize, host_imports, link, Convention, HostImport, HTTP_IMPORT};

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
