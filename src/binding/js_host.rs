//! `options.hostFunctions` as the core's `HostFunctions`: a small JS dispatcher
//! (`host_dispatch.js`, compiled once per executor) runs each call on the JS thread and settles
//! it through one native `done(id, error, text)`; Rust waits on a oneshot per call, so no thread
//! waits while a host Promise is pending. Both directions go through weak ThreadsafeFunctions
//! (they never keep Node alive). A call whose future is dropped before it settles (timeout,
//! cancellation, close) fires the function's `ctx.signal`.
//!
//! A guest running inline on the JS thread does not go through the ThreadsafeFunction: its host
//! call is deferred (see `inline`) and run by this thread's runner right after the poll, outside
//! the guest's fiber (V8 must run on the thread's own stack); a sync function's answer is there
//! for the next poll, so the whole call stays on the JS thread.

use std::collections::{HashMap, VecDeque};
use std::ptr;
use std::time::{Duration, Instant};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use napi::bindgen_prelude::{FnArgs, FromNapiValue, Function, FunctionRef, Object, Unknown};
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi::{sys, Env, JsValue, Status};

use super::js;
use super::turns::{Nudges, FROM_GUESTS};
use crate::error::ExecError;
use crate::host_functions::{CallLife, HostFailure, HostFunctions, HostRequest};
use crate::store::BoxFuture;

const DISPATCHER: &str = include_str!("host_dispatch.js");

type Settled = Result<String, HostFailure>;
/// Host calls sent to the JS thread and not settled yet, with what ends their activity call.
type Pending = Arc<Mutex<HashMap<u64, (tokio::sync::oneshot::Sender<Settled>, CallLife)>>>;

type CallArgs = FnArgs<Args>;
type AbortArgs = FnArgs<(f64, String)>;
type AbortFn = ThreadsafeFunction<AbortArgs, (), AbortArgs, Status, false, true>;

/// A napi reference made on a JS thread, only ever used on that thread (deferred calls run on the
/// thread that made their executor: `call` checks the env).
#[derive(Clone, Copy)]
struct JsThreadRef(sys::napi_ref, sys::napi_env);
// SAFETY: dereferenced only on its own JS thread (see above); elsewhere it is just carried.
unsafe impl Send for JsThreadRef {}
unsafe impl Sync for JsThreadRef {}

/// A host call's arguments for the dispatcher's `call`: name, input, activity, actor id, id, and
/// the most its result may be.
type Args = (String, String, String, Option<String>, f64, f64);

/// A host call deferred to this thread's runner.
struct Deferred {
    dispatcher_call: JsThreadRef,
    args: Args,
    pending: Pending,
}

thread_local! {
    /// The environments of this thread whose executors have host functions (usually one; the
    /// addon loaded again into the same Node environment registers with another).
    static ENVS: std::cell::RefCell<Vec<usize>> = const { std::cell::RefCell::new(Vec::new()) };
    static QUEUE: std::cell::RefCell<Vec<Deferred>> = const { std::cell::RefCell::new(Vec::new()) };
    /// Weak references to dispatchers' `call`, deleted once their executor is gone.
    static REFS: std::cell::RefCell<Vec<(std::sync::Weak<()>, sys::napi_ref)>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs the deferred host calls on the JS thread (the runner `inline` calls between polls).
fn run_deferred() -> bool {
    let calls = QUEUE.with(|q| std::mem::take(&mut *q.borrow_mut()));
    for d in &calls {
        // The environment of the dispatcher that asked for it.
        let env = d.dispatcher_call.1;
        let mut f = ptr::null_mut();
        let ok = !env.is_null() && unsafe { sys::napi_get_reference_value(env, d.dispatcher_call.0, &mut f) } == sys::Status::napi_ok && !f.is_null();
        dispatch(env, ok.then_some(f), &d.args, &d.pending);
    }
    !calls.is_empty()
}

/// Hands one host call to the dispatcher's `call` (`f`), on the JS thread of `env`.
fn dispatch(env: sys::napi_env, f: Option<sys::napi_value>, call: &Args, pending: &Pending) {
    let (name, input, activity, actor_id, id, max_result) = call;
    let mut args = [ptr::null_mut(); 6];
    let made = f.is_some()
        && [name, input, activity].iter().enumerate().all(|(i, s)| unsafe {
            sys::napi_create_string_utf8(env, s.as_ptr().cast(), s.len() as isize, &mut args[i]) == sys::Status::napi_ok
        })
        && unsafe {
            match actor_id {
                Some(a) => sys::napi_create_string_utf8(env, a.as_ptr().cast(), a.len() as isize, &mut args[3]),
                None => sys::napi_get_null(env, &mut args[3]),
            }
        } == sys::Status::napi_ok
        && unsafe { sys::napi_create_double(env, *id, &mut args[4]) } == sys::Status::napi_ok
        && unsafe { sys::napi_create_double(env, *max_result, &mut args[5]) } == sys::Status::napi_ok;
    let mut undefined = ptr::null_mut();
    unsafe { sys::napi_get_undefined(env, &mut undefined) };
    // The dispatcher settles through `done` (at once for a sync function); it never throws,
    // but should it, the call fails rather than hang.
    let failed = match (made, f) {
        (true, Some(f)) => js::call(env, undefined, f, &args).err(),
        _ => Some("the host function dispatcher is gone".into()),
    };
    if let Some(message) = failed {
        let tx = pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&(*id as u64));
        if let Some((tx, _)) = tx {
            let _ = tx.send(Err(HostFailure { message, code: None }));
        }
    }
}

/// Host calls handed to the JS thread at most per turn of its event loop, and the time spent on
/// them: the rest wait for its next turn. Each call was its own call of a thread-safe function,
/// which Node runs up to 1,000 of per turn: two guests calling a sync host function of 1 ms in a
/// loop held the loop 1.1-1.3 s at a time, one of 5 ms 5.3 s (review AX1).
const CALLS_PER_TURN: usize = 256;
const TIME_PER_TURN: Duration = Duration::from_millis(2);

/// Host calls from guest threads waiting for the JS thread, and whether it was woken for them.
#[derive(Default)]
struct CallQueue {
    state: Mutex<(VecDeque<Args>, bool)>,
}

impl CallQueue {
    /// Queues a call; true if the JS thread must be woken for it.
    fn push(&self, call: Args) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.0.push_back(call);
        !std::mem::replace(&mut s.1, true)
    }

    /// The next call; `None` when there is none (the next call queued wakes the JS thread again).
    fn next(&self) -> Option<Args> {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let call = s.0.pop_front();
        s.1 = call.is_some();
        call
    }

    /// Whether calls wait (if none, the next call queued wakes the JS thread again).
    fn waiting(&self) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.1 = !s.0.is_empty();
        s.1
    }

    /// The JS thread could not be woken: the next call queued tries again.
    fn not_woken(&self) {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).1 = false;
    }
}

/// On the JS thread: queued calls' way to the dispatcher, a turn's budget at a time.
struct Delivery {
    queue: Arc<CallQueue>,
    /// The dispatcher's `call`, held while the functions waking this one live (until `release`).
    call: FunctionRef<CallArgs, ()>,
    pending: Pending,
    /// Weak: the functions hold this one.
    nudges: std::sync::Weak<Mutex<Option<Nudges>>>,
}

impl Delivery {
    fn turn(&self, env: &Env, woken_by: u32) {
        let f = self.call.borrow_back(env).ok().map(|f| f.raw());
        let started = Instant::now();
        let spent = |n| n == CALLS_PER_TURN || started.elapsed() >= TIME_PER_TURN;
        super::turns::turn(&self.nudges, woken_by, || self.queue.waiting(), spent, || {
            let Some(call) = self.queue.next() else { return false };
            dispatch(env.raw(), f, &call, &self.pending);
            true
        });
    }
}

pub struct JsHostFunctions {
    names: Vec<String>,
    /// A weak reference to the dispatcher's `call` (valid while `Delivery`, which `nudges` hold,
    /// holds it), for deferred calls on the JS thread.
    dispatcher_call: JsThreadRef,
    /// Held while the executor lives: its reference is deleted after (see REFS).
    _alive: Arc<()>,
    /// What wakes the JS thread for queued calls (`Delivery`, which holds the dispatcher's
    /// `call`) and the dispatcher's `abort`, until the executor is closed (`release`): they hold
    /// the host functions, which may hold the executor (review AE: an executor reachable from
    /// its own host functions was never collected, closed or not).
    nudges: Arc<Mutex<Option<Nudges>>>,
    queue: Arc<CallQueue>,
    abort: Mutex<Option<Arc<AbortFn>>>,
    pending: Pending,
    next: AtomicU64,
}

/// The JS error's `message` and, when it is a string, its `code`.
fn failure(env: sys::napi_env, error: sys::napi_value) -> HostFailure {
    let message = js::describe(env, error);
    let mut code = None;
    let mut t = 0;
    unsafe { sys::napi_typeof(env, error, &mut t) };
    if t == sys::ValueType::napi_object || t == sys::ValueType::napi_function {
        let mut c = ptr::null_mut();
        if unsafe { sys::napi_get_named_property(env, error, c"code".as_ptr(), &mut c) } == sys::Status::napi_ok {
            let mut ct = 0;
            unsafe { sys::napi_typeof(env, c, &mut ct) };
            if ct == sys::ValueType::napi_string {
                code = js::read_text(env, c).ok();
            } else if ct == sys::ValueType::napi_number {
                let mut n = 0f64;
                unsafe { sys::napi_get_value_double(env, c, &mut n) };
                code = Some(n.to_string());
            }
        }
        js::take_exception(env);
    }
    HostFailure { message, code }
}

impl JsHostFunctions {
    /// Reads `options.hostFunctions` (an object of functions keyed `namespace.name`).
    pub fn new(env: &Env, fns: Object) -> Result<JsHostFunctions, ExecError> {
        let raw = env.raw();
        let pending: Pending = Arc::default();
        let for_done = pending.clone();
        let done = env
            .create_function_from_closure::<(), (), _>("done", move |ctx| {
                let id: f64 = ctx.get(0)?;
                let error: Unknown = ctx.get(1)?;
                let settled = match error.get_type()? {
                    napi::ValueType::Null | napi::ValueType::Undefined => {
                        let text: Option<String> = ctx.get(2)?;
                        Ok(text.unwrap_or_else(|| "null".into()))
                    }
                    _ => Err(failure(ctx.env.raw(), error.raw())),
                };
                let tx = for_done.lock().unwrap_or_else(|p| p.into_inner()).remove(&(id as u64));
                if let Some((tx, _)) = tx {
                    let _ = tx.send(settled);
                }
                Ok(())
            })
            .map_err(ExecError::internal)?;
        let for_wanted = pending.clone();
        let wanted = env
            .create_function_from_closure::<(), bool, _>("wanted", move |ctx| {
                let id: f64 = ctx.get(0)?;
                // Not wanted once its call ended, or is past its deadline or cancelled (its
                // thread, busy or starved, may not have dropped the call yet).
                Ok(for_wanted.lock().unwrap_or_else(|p| p.into_inner()).get(&(id as u64)).is_some_and(|(_, life)| !life.is_over()))
            })
            .map_err(ExecError::internal)?;
        let factory: Unknown = env.run_script(DISPATCHER).map_err(|e| {
            js::take_exception(raw);
            ExecError::internal(format!("the host function dispatcher does not compile: {e}"))
        })?;
        let mut undefined = ptr::null_mut();
        unsafe { sys::napi_get_undefined(raw, &mut undefined) };
        let dispatcher = js::call(raw, undefined, factory.raw(), &[fns.raw(), done.raw(), wanted.raw()])
            .map_err(ExecError::InvalidArgument)?;
        let get_fn = |key: &str| -> Result<sys::napi_value, ExecError> {
            js::get(raw, dispatcher, key, "the host function dispatcher")
        };
        let call_raw = get_fn("call")?;
        let call: Function<CallArgs, ()> = unsafe { Function::from_napi_value(raw, call_raw) }.map_err(ExecError::internal)?;
        let queue = Arc::new(CallQueue::default());
        let nudges: Arc<Mutex<Option<Nudges>>> = Arc::default();
        let delivery = Delivery {
            queue: queue.clone(),
            call: call.create_ref().map_err(ExecError::internal)?,
            pending: pending.clone(),
            nudges: Arc::downgrade(&nudges),
        };
        let deliver = env
            .create_function_from_closure::<u32, (), _>("hostCalls", move |ctx| {
                delivery.turn(ctx.env, ctx.get::<u32>(0).unwrap_or(FROM_GUESTS));
                Ok(())
            })
            .map_err(ExecError::internal)?;
        *nudges.lock().unwrap_or_else(|p| p.into_inner()) = Some(Nudges::new(&deliver).map_err(ExecError::internal)?);
        let mut dispatcher_call = ptr::null_mut();
        if unsafe { sys::napi_create_reference(raw, call_raw, 0, &mut dispatcher_call) } != sys::Status::napi_ok {
            return Err(ExecError::internal("cannot reference the host function dispatcher"));
        }
        let alive = Arc::new(());
        REFS.with(|refs| {
            let mut refs = refs.borrow_mut();
            // References of executors gone since are deleted here, on the thread that made them.
            refs.retain(|(owner, r)| {
                let live = owner.strong_count() > 0;
                if !live {
                    unsafe { sys::napi_delete_reference(raw, *r) };
                }
                live
            });
            refs.push((Arc::downgrade(&alive), dispatcher_call));
        });
        ENVS.with(|e| {
            let mut envs = e.borrow_mut();
            if !envs.contains(&(raw as usize)) {
                envs.push(raw as usize);
            }
        });
        crate::inline::install_runner(Box::new(run_deferred));
        let abort: Function<AbortArgs, ()> = unsafe { Function::from_napi_value(raw, get_fn("abort")?) }.map_err(ExecError::internal)?;
        let abort = abort
            .build_threadsafe_function::<AbortArgs>()
            .callee_handled::<false>()
            .weak::<true>()
            .build()
            .map_err(ExecError::internal)?;
        let names_value = js::get(raw, dispatcher, "names", "the host function dispatcher")?;
        let names = super::args::string_list(unsafe { Unknown::from_napi_value(raw, names_value) }.map_err(ExecError::internal)?, "options.hostFunctions")?;
        let dispatcher_call = JsThreadRef(dispatcher_call, raw);
        Ok(JsHostFunctions {
            names,
            dispatcher_call,
            _alive: alive,
            nudges,
            queue,
            abort: Mutex::new(Some(Arc::new(abort))),
            pending,
            next: AtomicU64::new(1),
        })
    }
}

/// Aborts its call on the JS side when dropped before the call settled.
struct AbortOnDrop {
    id: u64,
    settled: bool,
    pending: Pending,
    abort: Option<Arc<AbortFn>>,
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        // Settled on the JS side already (its answer not read yet): nothing to abort. Otherwise
        // the dispatcher aborts the call; one it has not run yet is no longer `wanted`, and skipped.
        if self.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.id).is_none() {
            return;
        }
        let reason = "the activity call ended (timeout, cancellation or close) before the host function settled".to_string();
        if let Some(abort) = &self.abort {
            abort.call(FnArgs { data: (self.id as f64, reason) }, ThreadsafeFunctionCallMode::NonBlocking);
        }
    }
}

impl HostFunctions for JsHostFunctions {
    fn names(&self) -> Vec<String> {
        self.names.clone()
    }

    fn release(&self) {
        self.nudges.lock().unwrap_or_else(|p| p.into_inner()).take();
        self.abort.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    fn call(&self, req: HostRequest) -> BoxFuture<'static, Result<String, HostFailure>> {
        let nudges = self.nudges.lock().unwrap_or_else(|p| p.into_inner());
        let Some(nudges) = nudges.as_ref() else {
            return Box::pin(std::future::ready(Err(HostFailure { message: "the executor is closed".into(), code: None })));
        };
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).insert(id, (tx, req.call.clone()));
        let on_own_thread = ENVS.with(|e| e.borrow().contains(&(self.dispatcher_call.1 as usize)));
        if on_own_thread && crate::inline::defer_to_caller() {
            let args = (req.name, req.input, req.activity, req.actor_id, id as f64, req.max_result_bytes as f64);
            QUEUE.with(|q| q.borrow_mut().push(Deferred { dispatcher_call: self.dispatcher_call, args, pending: self.pending.clone() }));
            return self.settled(id, rx);
        }
        // Handed over a turn's budget at a time (`Delivery`).
        let args = (req.name, req.input, req.activity, req.actor_id, id as f64, req.max_result_bytes as f64);
        if self.queue.push(args) && !nudges.wake() {
            // Its place in the queue is no longer `wanted` (skipped, should the thread wake).
            self.queue.not_woken();
            self.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
            let message = "the host function could not be called (the JS environment is closing)".to_string();
            return Box::pin(std::future::ready(Err(HostFailure { message, code: None })));
        }
        self.settled(id, rx)
    }
}

impl JsHostFunctions {
    /// The call's answer; dropped before it comes, the call is aborted on the JS side.
    fn settled(&self, id: u64, rx: tokio::sync::oneshot::Receiver<Settled>) -> BoxFuture<'static, Result<String, HostFailure>> {
        let abort = self.abort.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let guard = AbortOnDrop { id, settled: false, pending: self.pending.clone(), abort };
        Box::pin(async move {
            // The whole guard moves into the future (not only the field it sets).
            let mut guard = guard;
            let r = rx.await;
            guard.settled = true;
            r.unwrap_or_else(|_| Err(HostFailure { message: "the host function's result was lost (the JS environment went away)".into(), code: None }))
        })
    }
}
