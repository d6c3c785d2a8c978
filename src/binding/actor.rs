//! `executor.actor(definition, actorId)`: a handle on one actor. Its definition is read once, so
//! each call skips reading it again (a dozen property reads and string conversions); calls run in
//! the actor's line like `execute(definition, input, { actorId })`.

use std::sync::Arc;

use napi::bindgen_prelude::Unknown;
use napi::Env;
use napi_derive::napi;

use super::call::{start_call, Input, Options, Settle};
use crate::executor::{CheckedDefinition, Definition, Executor};

/// One actor of one activity (from `WasmActivityExecutor.actor`).
#[napi]
pub struct WasmActor {
    pub(crate) inner: Arc<Executor>,
    pub(crate) def: Definition,
    /// `def`, validated when the handle was made, its key and config made once for its calls.
    pub(crate) checked: CheckedDefinition,
    pub(crate) actor_id: String,
}

#[napi]
impl WasmActor {
    /// The actor's id.
    #[napi(getter)]
    pub fn actor_id(&self) -> String {
        self.actor_id.clone()
    }

    /// Runs the activity on this actor: as `executor.execute(definition, input, { ...options, actorId })`.
    #[napi(
        ts_generic_types = "T = any",
        ts_args_type = "input: unknown, options?: ActorExecuteOptions",
        ts_return_type = "Promise<T>"
    )]
    pub fn execute<'env>(
        &self,
        env: &'env Env,
        input: Unknown<'env>,
        options: Option<Unknown<'env>>,
    ) -> napi::Result<Unknown<'env>> {
        start_call(&self.inner, env, Ok(&self.def), Some((&self.actor_id, &self.checked)), Input::Value(input), Options::Value(options), Settle::Output)
    }

    /// `execute` for `fast_paths.js`, which stringified the input: the output's JSON text when
    /// the call finished on the spot, else the call's promise. Taken off the prototype by
    /// `fast_paths.js` (only its `execute` calls it).
    #[napi(js_name = "__executeJson", skip_typescript)]
    pub fn execute_json<'env>(&self, env: &'env Env, json: Unknown<'env>, options: Option<Unknown<'env>>) -> napi::Result<Unknown<'env>> {
        start_call(&self.inner, env, Ok(&self.def), Some((&self.actor_id, &self.checked)), Input::Json(json), Options::Value(options), Settle::TextNow)
    }

    /// Like `execute`, and also reports what the call cost.
    #[napi(
        ts_generic_types = "T = any",
        ts_args_type = "input: unknown, options?: ActorExecuteOptions",
        ts_return_type = "Promise<ExecutionDetails<T>>"
    )]
    pub fn execute_detailed<'env>(
        &self,
        env: &'env Env,
        input: Unknown<'env>,
        options: Option<Unknown<'env>>,
    ) -> napi::Result<Unknown<'env>> {
        start_call(&self.inner, env, Ok(&self.def), Some((&self.actor_id, &self.checked)), Input::Value(input), Options::Value(options), Settle::Details)
    }

    /// Drops the actor's instance and state (as `executor.dropActor`); true if there was one. The
    /// handle stays usable: its next call starts a fresh actor. After `close()`, throws `CLOSED`.
    #[napi]
    pub fn drop(&self, env: Env) -> napi::Result<bool> {
        if self.inner.is_closed() {
            return Err(super::js_error::to_napi(&env, &crate::error::ExecError::Closed));
        }
        let had = self.inner.drop_actor(&self.def, &self.actor_id);
        self.inner.hold_for_writes();
        Ok(had)
    }
}
