//! A call from JS: its options read on the JS thread, its promise settled with the guest's output
//! (parsed) or a coded error, at once when the call finished inline.

use std::sync::Arc;

use napi::bindgen_prelude::{Function, Object, Unknown};
use napi::{Env, JsError, JsValue, ValueType};

use super::js_error::to_napi;
use super::{
    abort, args, details, js, js_log, loop_watch, parse_output, stringify_input, Raw,
};
use crate::error::ExecError;
use crate::executor::{Attempt, CallOptions, CheckedDefinition, Definition, Done, Executor};
use crate::instance::CallOutput;

/// The call's place in its signal's hub travels with the call's result, and leaves as it settles.
struct SendHook(Option<abort::AbortHook>);

/// A call's input: a JS value (stringified here), or its JSON text, a JS string (from
/// `fast_paths.js`, which called `JSON.stringify` in JS), copied only if it may be within
/// `maxInputBytes`.
pub(crate) enum Input<'env> {
    Value(Unknown<'env>),
    Json(Unknown<'env>),
}

/// A call's options: the object, read here, or its fields as `fast_paths.js` read them
/// (`OPTION_FIELDS` order; with the getter that threw, if one did).
pub(crate) enum Options<'env> {
    Value(Option<Unknown<'env>>),
    /// The fields, the getter that threw if one did, and the path of the first key of the
    /// definition's objects or the options that none takes, if any (`fast_paths.js` listed them);
    /// with the options object itself (for what only the native side can tell of it).
    Fields([Unknown<'env>; 6], Option<Box<args::Threw>>, Option<String>, Option<Object<'env>>),
}

/// The options a call reads, in order.
pub(crate) const OPTION_FIELDS: [&str; 6] = ["actorId", "transactional", "now", "seed", "onProgress", "signal"];

enum Source<'env> {
    Object(Object<'env>),
    Fields([Unknown<'env>; 6], Option<Box<args::Threw>>, Option<String>, Option<Object<'env>>),
}

impl<'env> Source<'env> {
    fn get(&self, key: &str) -> Result<Option<Unknown<'env>>, ExecError> {
        match self {
            Source::Object(o) => args::prop(o, key, "options"),
            Source::Fields(f, threw, _, _) => {
                args::Threw::check(threw.as_deref(), "options", key)?;
                args::field_of(f, &OPTION_FIELDS, key)
            }
        }
    }

    /// `INVALID_ARGUMENT` for a key no option is (`actorID` would run the call on a fresh
    /// instance, its actor's state silently not kept).
    fn only_known(&self) -> Result<(), ExecError> {
        match self {
            Source::Object(o) => args::KeyCheck::List.check(Some(o), "options", &OPTION_FIELDS),
            Source::Fields(_, threw, unknown, obj) => {
                args::Threw::check_whole(threw.as_deref(), "options")?;
                args::KeyCheck::Found(unknown.as_deref()).check(obj.as_ref(), "options", &OPTION_FIELDS)
            }
        }
    }
}

/// What a call settles with.
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Settle {
    /// The output, parsed.
    Output,
    /// The output and what the call cost (`executeDetailed`).
    Details,
    /// As `Output`, except that a call finished on the spot returns the output's JSON text
    /// itself, not a promise: `fast_paths.js` parses it in JS.
    TextNow,
}

/// Starts a call: reads its options on this thread, then hands it to the core, which polls it
/// once here (most finish on the spot: a promise settled at once) or goes on on a guest thread.
/// `fixed_actor`: the call of an actor handle (its actor, and its definition as checked when the
/// handle was made; `options.actorId` is refused).
pub(crate) fn start_call<'env>(
    inner: &Arc<Executor>,
    env: &'env Env,
    definition: Result<&Definition, ExecError>,
    fixed_actor: Option<(&str, &CheckedDefinition)>,
    input: Input<'env>,
    options: Options<'env>,
    settle: Settle,
) -> napi::Result<Unknown<'env>> {
    let detailed = settle == Settle::Details;
    let mut call = CallOptions::default();
    let mut hook = None;
    let mut progress: Option<Arc<Progress>> = None;
    // Everything that reads JS happens here, on the JS thread; errors reject the promise.
    let prepare = || -> Result<_, ExecError> {
        let def = definition?;
        if let Some((id, checked)) = fixed_actor {
            call.actor_id = Some(id.to_string());
            call.checked = Some(checked.clone());
        }
        let source = match options {
            Options::Value(v) => args::options_object(v)?.map(Source::Object),
            Options::Fields(f, threw, unknown, obj) => Some(Source::Fields(f, threw, unknown, obj)),
        };
        if let Some(o) = source {
            o.only_known()?;
            if let Some(id) = o.get("actorId")? {
                if fixed_actor.is_some() {
                    return Err(ExecError::InvalidArgument("an actor handle's calls run on its own actor: options.actorId is not taken".into()));
                }
                call.actor_id = Some(args::string(id, "options.actorId")?);
            }
            if let Some(t) = o.get("transactional")? {
                call.transactional = Some(args::boolean(t, "options.transactional")?);
            }
            if let Some(n) = o.get("now")? {
                let now = args::number(n, "options.now")?;
                // Date's own range: past it no clock can show the time (and NaN is no time).
                if !(0.0..=8.64e15).contains(&now) {
                    return Err(ExecError::InvalidArgument("options.now must be a time in ms since 1970 within Date's range [0, 8.64e15]".into()));
                }
                call.now = Some(now);
            }
            if let Some(n) = o.get("seed")? {
                let seed = args::number(n, "options.seed")?;
                if !(seed.is_finite()
                    && seed.fract() == 0.0
                    && (0.0..=9.007_199_254_740_991e15).contains(&seed))
                {
                    return Err(ExecError::InvalidArgument(
                        "options.seed must be a whole number in [0, 2^53)".into(),
                    ));
                }
                call.seed = Some(seed);
            }
            if let Some(f) = o.get("onProgress")? {
                if f.get_type().map_err(ExecError::internal)? != ValueType::Function {
                    return Err(ExecError::InvalidArgument(
                        "options.onProgress must be a function".into(),
                    ));
                }
                // The user's function, called on the JS thread with the heartbeat parsed.
                let user: Function<Unknown, Unknown> =
                    unsafe { f.cast() }.map_err(ExecError::internal)?;
                let user = Arc::new(Progress { user: user.create_ref().map_err(ExecError::internal)?, line: Default::default() });
                progress = Some(user.clone());
                let line = user.line.clone();
                let wrapper = env
                    .create_function_from_closure::<u32, (), _>("onProgress", move |ctx| {
                        if let Some(detail) = user.line.sent() {
                            user.deliver(ctx.env, &detail)?;
                        }
                        Ok(())
                    })
                    .map_err(ExecError::internal)?;
                let tsfn = wrapper
                    .build_threadsafe_function::<u32>()
                    .callee_handled::<false>()
                    .weak::<true>()
                    .build()
                    .map_err(ExecError::internal)?;
                call.progress = Some(Arc::new(js_log::JsProgressSink { tsfn, line }));
            }
            if let Some(signal) = o.get("signal")? {
                let signal = args::object(signal, "options.signal")?;
                hook = abort::attach(env, &signal, &call.cancel)?;
            }
        }
        let max = inner.max_input_bytes();
        let text = match input {
            Input::Value(v) => stringify_input(env, v, max)?,
            Input::Json(text) => js::input_text(env.raw(), text.raw(), max)
                .map_err(|()| ExecError::InvalidInput("the input's JSON text could not be read".into()))?,
        };
        // Over `maxInputBytes`: refused by the core in its turn (after the definition's checks).
        let json = text.unwrap_or_else(|size| {
            call.input_bytes = Some(size);
            String::new()
        });
        Ok((def, json))
    };
    let prepared = prepare();
    let actor = call.actor_id.is_some();
    let mut hook = Some(SendHook(hook));
    let mut promise = None;
    // A promise settled from a guest thread: JSON.parse of the output, or the coded error,
    // on the JS thread.
    let make_done = || -> Result<Done, ExecError> {
        let (deferred, p) = env
            .create_deferred::<Raw, _>()
            .map_err(ExecError::internal)?;
        promise = Some(p);
        let hook = hook.take();
        let progress = progress.clone();
        let executor = inner.clone();
        Ok(Box::new(move |result: Result<CallOutput, ExecError>| {
            deferred.resolve(move |env: Env| {
                // A write the call left under way (`persist: 'async'`) keeps the process alive.
                executor.hold_for_writes();
                if let Some(SendHook(Some(h))) = hook {
                    h.detach(&env);
                }
                if let Some(p) = progress {
                    p.flush(&env)?;
                }
                settled_value(&env, result, detailed, actor).map(Raw)
            })
        }))
    };
    let attempt = match prepared {
        Err(e) => Attempt::Finished(Err(e)),
        Ok((def, json)) => {
            loop_watch::before_call(env);
            inner.start(def, json, call, make_done)
        }
    };
    match (attempt, promise) {
        (Attempt::Started, Some(p)) => Ok(p.to_unknown()),
        (Attempt::Finished(result), _) => {
            inner.hold_for_writes();
            // Settled now, on this thread: no hand-off at all.
            if let Some(SendHook(Some(h))) = hook.take() {
                h.detach(env);
            }
            if let Some(p) = progress.take() {
                p.flush(env)?;
            }
            match result {
                // `fast_paths.js` parses the text itself.
                Ok(out) if settle == Settle::TextNow => match js::new_string(env.raw(), &out.output) {
                    // SAFETY: a string napi just made in this scope.
                    Ok(s) => Ok(unsafe { Unknown::from_raw_unchecked(env.raw(), s) }),
                    Err(e) => settled_now(env, Err(to_napi(env, &e))),
                },
                result => settled_now(env, settled_value(env, result, detailed, actor)),
            }
        }
        _ => settled_now(
            env,
            Err(to_napi(
                env,
                &ExecError::internal("a started call has no promise"),
            )),
        ),
    }
}

/// The JS value a call settles with: the parsed output (or details), or the coded error.
fn settled_value(
    env: &Env,
    result: Result<CallOutput, ExecError>,
    detailed: bool,
    actor: bool,
) -> napi::Result<napi::sys::napi_value> {
    let out = result.map_err(|e| to_napi(env, &e))?;
    let value = parse_output(env, &out.output).map_err(|e| to_napi(env, &e))?;
    let value = if detailed {
        details(env, &out, value, actor)?
    } else {
        value
    };
    Ok(value.raw())
}

/// A promise settled as the call that returned `text` would be: for `fast_paths.js`, when its
/// `JSON.parse` of a call's output threw (the coded `INVALID_OUTPUT` error, with its preview).
pub(crate) fn settle_output<'env>(env: &'env Env, text: &str) -> napi::Result<Unknown<'env>> {
    let value = parse_output(env, text).map(|v| v.raw()).map_err(|e| to_napi(env, &e));
    settled_now(env, value)
}

/// A promise already resolved (or rejected) with `value`.
fn settled_now<'env>(
    env: &'env Env,
    value: napi::Result<napi::sys::napi_value>,
) -> napi::Result<Unknown<'env>> {
    use napi::sys;
    let raw = env.raw();
    let mut deferred = std::ptr::null_mut();
    let mut promise = std::ptr::null_mut();
    napi::check_status!(unsafe { sys::napi_create_promise(raw, &mut deferred, &mut promise) })?;
    match value {
        Ok(v) => napi::check_status!(unsafe { sys::napi_resolve_deferred(raw, deferred, v) })?,
        Err(e) => {
            let err = unsafe { JsError::from(e).into_value(raw) };
            napi::check_status!(unsafe { sys::napi_reject_deferred(raw, deferred, err) })?
        }
    }
    // SAFETY: the promise napi just made in this scope.
    Ok(unsafe { Unknown::from_raw_unchecked(raw, promise) })
}

/// A call's `onProgress`: the user's function and the line of its heartbeats.
struct Progress {
    user: napi::bindgen_prelude::FunctionRef<Unknown<'static>, Unknown<'static>>,
    line: Arc<js_log::ProgressLine>,
}

impl Progress {
    /// Calls the user's function with a heartbeat (parsed, else the text); a throw, or a rejection
    /// of a promise it returns (an `async` function's), is the caller's bug: swallowed, never
    /// pending, never an unhandled rejection (`call_quietly.js`).
    fn deliver(&self, env: &Env, detail: &str) -> napi::Result<()> {
        let f = self.user.borrow_back(env)?;
        // One JS string, parsed, or itself if it is not JSON.
        let raw = env.raw();
        let json = js::json_fns(raw).map_err(|e| napi::Error::from_reason(e.to_string()))?;
        let text = js::new_string(raw, detail).map_err(|e| napi::Error::from_reason(e.to_string()))?;
        let value = js::call(raw, json.json, json.parse, &[text]).unwrap_or(text);
        let mut undefined = std::ptr::null_mut();
        unsafe { napi::sys::napi_get_undefined(raw, &mut undefined) };
        if js::call(raw, undefined, json.call_quietly, &[f.raw(), value]).is_err() {
            js::take_exception(raw);
        }
        Ok(())
    }

    /// Delivers the newest heartbeat if the queue has not yet: before the call's promise settles.
    fn flush(&self, env: &Env) -> napi::Result<()> {
        match self.line.undelivered() {
            Some(detail) => self.deliver(env, &detail),
            None => Ok(()),
        }
    }
}
