//! A live guest: a Store with its instance, and how one call runs on it: as a future whose guest
//! code runs on a wasmtime fiber, so a call may start on one thread and finish on another.
//! A call's budget (deadline, fuel, log lines) is armed once and covers everything the call runs.
//! Its state (capture, restore, moving to another instance) is in `instance_state.rs`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::{Global, Instance, Memory, Store};

use crate::abi::assemblyscript::Exports;
use crate::abi::{component, extism, wasi_command, Abi};
use crate::modules::Code;
use crate::capabilities::Grants;
use crate::digest::Digest;
use crate::engine::{EngineKind, Running};
use crate::error::ExecError;
use crate::host::{HostState, LogSink, Progress};
use crate::replay::Determinism;
use crate::limits::{arm, Budget, CancelFlag, Limits};
use crate::modules::CompiledModule;

/// What one call produced and what it cost.
#[derive(Debug, Clone, PartialEq)]
pub struct CallOutput {
    /// The guest's result: JSON text, not yet parsed.
    pub output: String,
    /// Time the guest ran for this call (instantiation included for a fresh instance).
    pub duration: Duration,
    /// Fuel used, when the call ran with a fuel budget.
    pub fuel_consumed: Option<u64>,
    /// The most memory (all memories and tables) the instance has held.
    pub peak_memory_bytes: u64,
    /// Whether the call ran on an actor instance created for it (its first call, or the first
    /// after its state was lost or dropped).
    pub actor_created: bool,
    /// The memory (all memories and tables) the instance holds after the call.
    pub memory_bytes: u64,
}

/// What a call brings besides its limits: its determinism, its heartbeats, and what its ABI
/// needs (the ABI a definition forces, an Extism plugin's entrypoint and config).
#[derive(Clone, Default)]
pub struct CallContext {
    pub det: Option<Determinism>,
    pub progress: Progress,
    pub abi: Option<Abi>,
    pub entrypoint: String,
    pub config: Arc<std::collections::BTreeMap<String, String>>,
    /// The host functions and network the call may reach.
    pub access: crate::host_functions::HostAccess,
}

/// Below this much memory, resetting an instance's pool slot (a memset of its memory, a few
/// microseconds for 256 KiB) costs no more than handing the instance to the reaper's thread.
pub const DROP_LATER_BYTES: u64 = 256 * 1024;
/// Above this much, an instance is dropped where its call ended: the reaper holds at most
/// `reaper::MAX_QUEUED` of them, and their memory stays resident until dropped.
pub const DROP_HERE_BYTES: u64 = 32 * 1024 * 1024;

/// How a call crosses into this instance.
enum Entry {
    AssemblyScript(Exports),
    Extism,
    WasiCommand,
    Component(component::Execute),
}

pub struct GuestInstance {
    store: Store<HostState>,
    /// The core instance (none for a component: its state is out of reach).
    instance: Option<Instance>,
    entry: Entry,
    pub digest: Digest,
    pub kind: EngineKind,
    /// What its WASI context was built from.
    grants: Grants,
    /// Its WASI context is a deterministic call's (clocks stopped at its `now`, randomness from
    /// its `seed`): the next call gets one of its own, whatever it is.
    wasi_det: bool,
    /// Its memory and mutable globals, for snapshots (resolved on first use).
    state: Option<(Option<Memory>, Vec<Global>)>,
    /// The names those are exported under.
    state_names: Arc<crate::instrument::StateExports>,
    /// Whether the last call failed inside guest code (a trap, or an error a host function
    /// raised while the guest waited on it): the guest stopped midway, its state may be torn.
    stopped_midway: bool,
    /// A move of this actor instance to optimized code failed: it is not tried again.
    pub stays_put: bool,
    /// The instance this one was moved from before the next call (`call::move_actor`), kept
    /// untouched until that call has counted.
    pub moved_from: Option<Box<GuestInstance>>,
    /// Counted among the process's instances outside the pool while it lives (dropped after
    /// the Store: fields drop in order).
    _unpooled: Option<crate::unpooled_slots::UnpooledSlot>,
}

/// The Store's hook on entering and leaving guest code: the stack it runs on (`watch_stack`),
/// and a component's hostcall fuel: its result's (`HostState::result_fuel`) as its guest code
/// returns to the host, wasmtime's default as it calls an import (review AT1: raised for the
/// whole call, an import's `list<list<u8>>` of entries all naming one 1 MiB block had the host
/// copy 900 MB before it ran).
fn on_call_hook(mut store: wasmtime::StoreContextMut<'_, HostState>, hook: wasmtime::CallHook) -> wasmtime::Result<()> {
    store.data_mut().stack.on_hook(hook);
    if let Some(fuel) = store.data().result_fuel {
        match hook {
            wasmtime::CallHook::CallingHost => store.set_hostcall_fuel(component::IMPORT_FUEL),
            wasmtime::CallHook::ReturningFromWasm => store.set_hostcall_fuel(fuel),
            _ => {}
        }
    }
    Ok(())
}

impl GuestInstance {
    /// Instantiates a module in a fresh Store armed with the call's budget (its start function
    /// spends from it).
    pub async fn new(
        module: &CompiledModule,
        limits: &Limits,
        budget: Budget,
        cancel: &CancelFlag,
        log: Option<Arc<dyn LogSink>>,
        grants: &Grants,
        ctx: &CallContext,
    ) -> Result<GuestInstance, ExecError> {
        let engine = module.code.engine();
        let mut host = HostState::new(limits.max_memory_bytes, log);
        // Its metadata, outside its memories and tables, counted as the host memory it is.
        host.limiter.reserve_host(module.instance_bytes)?;
        if !module.wasi_imports.is_empty() {
            host.wasi = Some(Box::new(grants.wasi_context(ctx.det.as_ref())?));
            host.paths = grants.path_lock();
        }
        host.det = ctx.det;
        host.set_progress(ctx.progress.clone());
        host.extism.set_config(ctx.config.clone());
        host.access = ctx.access.clone();
        let abi = module.abi_for(ctx.abi)?;
        let unpooled = match engine.pooling_allocator_metrics() {
            Some(_) => None,
            None => Some(crate::unpooled_slots::UnpooledSlot::take(module.code.unpooled_mappings())?),
        };
        let mut store = Store::new(engine, host);
        store.limiter_async(|s| &mut s.limiter);
        arm(&mut store, limits, budget, cancel, module.kind.metered())?;
        let _running = Running::start()?;
        let (instance, entry) = match &module.code {
            Code::Core(pre) => {
                let instance = pre.instantiate_async(&mut store).await.map_err(|e| instantiate_error(e, limits, module))?;
                let entry = match abi {
                    Abi::AssemblyScript => Entry::AssemblyScript(Exports::new(&instance, &mut store)?),
                    Abi::Extism => {
                        // A WASI reactor's constructors (Extism plugins built for wasm32-wasi).
                        if let Ok(init) = instance.get_typed_func::<(), ()>(&mut store, "_initialize") {
                            init.call_async(&mut store, ()).await.map_err(|e| classify(e, limits))?;
                        }
                        Entry::Extism
                    }
                    Abi::WasiCommand => Entry::WasiCommand,
                    Abi::Component => return Err(ExecError::internal("a component in a core instance")),
                };
                (Some(instance), entry)
            }
            Code::Component(pre) => {
                store.data_mut().component = Some(Box::new(crate::wasi_http::ComponentWasi::new(grants.wasi_p2_context(ctx.det.as_ref())?)));
                store.data_mut().paths = grants.path_lock();
                let instance = pre.instantiate_async(&mut store).await.map_err(|e| instantiate_error(e, limits, module))?;
                store.call_hook(on_call_hook);
                (None, Entry::Component(component::execute_of(&instance, &mut store)?))
            }
        };
        Ok(GuestInstance {
            store,
            instance,
            entry,
            digest: module.digest,
            kind: module.kind,
            grants: grants.clone(),
            wasi_det: ctx.det.is_some(),
            state: None,
            state_names: module.state.clone(),
            stopped_midway: false,
            stays_put: false,
            moved_from: None,
            _unpooled: unpooled,
        })
    }

    /// Readies a kept instance for a new call under the definition's current limits and grants:
    /// the memory cap (an instance already past a lowered cap is refused, `OUT_OF_MEMORY`, and
    /// kept as it is), a WASI context rebuilt from the current grants, a fresh budget.
    pub fn rearm(
        &mut self,
        limits: &Limits,
        budget: Budget,
        cancel: &CancelFlag,
        grants: &Grants,
        ctx: &CallContext,
    ) -> Result<(), ExecError> {
        let held = self.store.data().limiter.total_bytes();
        if held > limits.max_memory_bytes {
            return Err(ExecError::OutOfMemory { limit_bytes: limits.max_memory_bytes, requested_bytes: held });
        }
        // A component's open descriptors live in its resource table beside everything else it
        // holds: a revoked directory cannot be taken back from it (review O: a kept handle read and
        // wrote the directory after the definition dropped `filesystem`). Its filesystem grant is
        // fixed for its life, as its engine is; its environment is rebuilt below as anyone's (a
        // variable of the process that changed between calls had every later call refused:
        // review AZ2).
        if self.store.data().component.is_some() && self.grants.filesystem != grants.filesystem {
            return Err(ExecError::InvalidArgument(
                "a component actor runs under the filesystem grant of its first call: it cannot change while the actor lives (dropActor to change it)".into(),
            ));
        }
        // A deterministic call gets a WASI context of its own (its clocks and randomness), and so
        // does the call after one: a deterministic call's stopped clocks and seeded randomness
        // stayed for the actor's later calls (their "secure" random bytes predictable from a seed
        // the workflow chose). A component keeps its resource table (its open descriptors).
        if self.grants != *grants || ctx.det.is_some() || self.wasi_det {
            let data = self.store.data_mut();
            if data.wasi.is_some() {
                data.wasi = Some(Box::new(grants.wasi_context(ctx.det.as_ref())?));
                data.paths = grants.path_lock();
            }
            if let Some(component) = data.component.as_mut() {
                component.ctx = grants.wasi_p2_context(ctx.det.as_ref())?;
                data.paths = grants.path_lock();
            }
            self.grants = grants.clone();
            self.wasi_det = ctx.det.is_some();
        }
        let data = self.store.data_mut();
        data.det = ctx.det;
        data.set_progress(ctx.progress.clone());
        data.extism.set_config(ctx.config.clone());
        data.access = ctx.access.clone();
        data.limiter.set_max(limits.max_memory_bytes);
        data.log_budget = crate::host::LOG_LINES_PER_CALL;
        if let Err(e) = arm(&mut self.store, limits, budget, cancel, self.kind.metered()) {
            // Kept by its actor, an instance armed for a call that never ran would hold the
            // call's concurrency slot until its next call.
            self.store.data_mut().access = Default::default();
            return Err(e);
        }
        Ok(())
    }

    /// Runs `execute(input)` within the budget armed for this call. After an error the instance
    /// may be torn (a trap midway through guest code): callers discard it unless
    /// `is_reusable_after` says otherwise.
    pub async fn call(&mut self, input: &str, limits: &Limits, started: Instant, ctx: &CallContext) -> Result<CallOutput, ExecError> {
        let output = {
            let _running = Running::start()?;
            let max = limits.max_output_bytes;
            // Every error the ABIs classify comes out of a call into guest code.
            let midway = std::sync::atomic::AtomicBool::new(false);
            let classify = |e| {
                midway.store(true, std::sync::atomic::Ordering::Relaxed);
                classify(e, limits)
            };
            let r = match &self.entry {
                Entry::AssemblyScript(exports) => exports.call_execute(&mut self.store, input, max, classify).await,
                Entry::Extism => match self.instance {
                    Some(i) => extism::call(&mut self.store, &i, &ctx.entrypoint, input, max, classify).await,
                    None => Err(ExecError::internal("an Extism plugin without its instance")),
                },
                Entry::WasiCommand => match self.instance {
                    Some(i) => wasi_command::call(&mut self.store, &i, &self.grants, ctx.det.as_ref(), input, max, classify).await,
                    None => Err(ExecError::internal("a WASI command without its instance")),
                },
                Entry::Component(execute) => component::call(&mut self.store, execute, input, max, classify).await,
            };
            self.stopped_midway = midway.into_inner();
            let data = self.store.data_mut();
            data.flush_progress();
            // The call keeps its last heartbeat (`lastProgress`); an idle actor holds none (review
            // BC1: up to 384 KiB each, uncounted in maxActorMemoryMB, 3x its bound over 533 actors).
            data.set_progress(Default::default());
            // What the call could reach (its concurrency slot among it) ends with it; requests
            // a component left in flight are refused from now on.
            data.access.end();
            data.access = Default::default();
            // What a component keeps in its table, for an actor's count (`held_bytes`).
            if let Some(component) = data.component.as_mut() {
                component.measure_kept();
            }
            r?
        };
        let fuel_consumed = if self.kind.metered() {
            let left = self.store.get_fuel().map_err(ExecError::internal)?;
            limits.max_fuel.map(|max| max.saturating_sub(left))
        } else {
            None
        };
        Ok(CallOutput {
            output,
            duration: started.elapsed(),
            fuel_consumed,
            peak_memory_bytes: self.store.data().limiter.peak_bytes(),
            actor_created: false,
            memory_bytes: self.store.data().limiter.total_bytes(),
        })
    }

    /// Runs the guest runtime's full collection (`__collect`, AssemblyScript's), if it has one,
    /// right after a call, as part of it: within what is left of the call's deadline and fuel,
    /// ended by its cancel (the Store is still armed for it). It had a budget of its own, fresh
    /// time and fuel and a cancel nothing fired: a spinning `__collect` doubled every actor
    /// call's time and fuel, outlived an aborted signal, and held `close()` for its
    /// `maxExecutionMs` (review AL2). An error: it failed, and the instance may be torn (discard
    /// it).
    pub async fn collect(&mut self, limits: &Limits) -> Result<(), ExecError> {
        let Some(instance) = self.instance else { return Ok(()) };
        let Ok(f) = instance.get_typed_func::<(), ()>(&mut self.store, "__collect") else { return Ok(()) };
        let _running = Running::start()?;
        let r = f.call_async(&mut self.store, ()).await.map_err(|e| classify(e, limits));
        // A heartbeat sent from `__collect` reaches no call, and an idle actor keeps none (review
        // BD1: 440 KB per actor, uncounted, after the call's own had been let go).
        self.store.data_mut().set_progress(Default::default());
        r
    }

    /// Puts the call's determinism (its clocks, randomness, WASI contexts) in place of the one
    /// the instance was made under: a deterministic actor's start function runs under
    /// `Determinism::START` (`call::instantiate`).
    pub fn take_call_det(&mut self, grants: &Grants, ctx: &CallContext) -> Result<(), ExecError> {
        let data = self.store.data_mut();
        if data.wasi.is_some() {
            data.wasi = Some(Box::new(grants.wasi_context(ctx.det.as_ref())?));
        }
        if let Some(component) = data.component.as_mut() {
            component.ctx = grants.wasi_p2_context(ctx.det.as_ref())?;
        }
        data.det = ctx.det;
        self.wasi_det = ctx.det.is_some();
        Ok(())
    }

    /// Gives the call its whole `maxFuel` again: an instance made to take an actor's state
    /// (reloaded, rolled back) runs its start function on fuel of its own, so that a step's
    /// outcome does not hang on whether the worker still held the actor (review BK1: a step that
    /// succeeded on the live actor was `OUT_OF_FUEL` on every worker that reloaded it, its start
    /// function's fuel taken out of the step's). The call's deadline stays as it was.
    pub fn refuel(&mut self, limits: &Limits) -> Result<(), ExecError> {
        if let (true, Some(max)) = (self.kind.metered(), limits.max_fuel) {
            self.store.set_fuel(max).map_err(ExecError::internal)?;
        }
        Ok(())
    }

    /// The fuel the call armed by the last `rearm` (or instantiation) has used so far, when
    /// metered.
    pub fn fuel_consumed(&self, limits: &Limits) -> Option<u64> {
        let left = self.store.get_fuel().ok().filter(|_| self.kind.metered())?;
        limits.max_fuel.map(|max| max.saturating_sub(left))
    }

    /// Drops the instance, on the reaper's thread (`reaper`) when resetting its pool slot costs
    /// more than handing it over: its memory is at least `DROP_LATER_BYTES` (the reset zeroes up
    /// to `engine::KEEP_RESIDENT_BYTES` of it, touched or not), it holds at most `DROP_HERE_BYTES`
    /// with what a component holds in the host (`wasi:http` bodies), so that what may wait there
    /// is bounded, and it holds no files (their descriptors count against the process's:
    /// `open_files`).
    pub fn discard(self) {
        let pooled = self.kind == EngineKind::Plain && self._unpooled.is_none();
        let bytes = self.held_bytes();
        if pooled && (DROP_LATER_BYTES..=DROP_HERE_BYTES).contains(&bytes) && self.grants.filesystem.is_none() {
            crate::reaper::drop_later(self);
        }
    }

    /// The last heartbeat its host state holds (none between calls).
    #[cfg(test)]
    pub fn last_heartbeat(&self) -> Option<String> {
        self.store.data().progress.last.lock().ok().and_then(|l| l.clone())
    }

    /// Memory (all memories and tables) the instance holds now.
    /// Sets what its growth is also checked against (an actor's call's `actors::MemoryCap`), or
    /// clears it.
    pub fn set_shared_cap(&mut self, cap: Option<Arc<dyn crate::limits::SharedCap>>) {
        self.store.data_mut().limiter.shared_cap.0 = cap;
    }

    pub fn memory_bytes(&self) -> u64 {
        self.store.data().limiter.total_bytes()
    }

    /// What it holds in all: its memories and tables, what a component holds in the host
    /// (`wasi:http` bodies, pollables), an Extism plugin's vars (review BB1: 1 MiB of vars per
    /// actor went uncounted in `maxActorMemoryMB`, 2,000 actors of a 0-page plugin held 2 GiB
    /// under a 1 MiB bound) and the call's `definition.config` it keeps (review BP2).
    pub fn held_bytes(&self) -> u64 {
        let data = self.store.data();
        let component = data.component.as_ref().map_or(0, |c| c.held.now().saturating_add(c.kept));
        self.memory_bytes().saturating_add(component).saturating_add(data.extism.vars_held_bytes()).saturating_add(data.extism.config_bytes())
    }

    /// Records which fiber stack the instance's guest code runs on, so that `release_stack` can
    /// give its pages back while the instance is idle (for actors: they live between calls).
    pub fn watch_stack(&mut self) {
        let pooled = self.store.engine().pooling_allocator_metrics().is_some();
        self.store.data_mut().stack = crate::fiber_stacks::StackProbe::new(pooled);
        self.store.call_hook(on_call_hook);
    }

    /// Whether the instance has recorded which stack it runs on (`watch_stack`, then a call).
    #[cfg(test)]
    pub fn stack_watched(&self) -> bool {
        self.store.data().stack.address().is_some()
    }

    /// Asks the sweeper to check the instance's fiber stack against the process's maps, so that
    /// `release_stack` needs no read of them (`fiber_stacks::ask_check`).
    pub fn ask_stack_check(&self) {
        crate::fiber_stacks::ask_check(&self.store.data().stack);
    }

    /// How much of the instance's fiber stack is resident now (`fiber_stacks::resident_bytes`).
    pub fn stack_resident_bytes(&self) -> u64 {
        crate::fiber_stacks::resident_bytes(&self.store.data().stack)
    }

    /// Gives back the resident pages of the instance's fiber stack. Only while no call runs on
    /// the instance (the caller holds it: `&mut self`, and no fiber of its Store is suspended).
    /// `None`: the sweep must read the maps first (`Sweep::release`).
    pub fn release_stack(&mut self, sweep: &mut crate::fiber_stacks::Sweep) -> Option<bool> {
        sweep.release(&mut self.store.data_mut().stack)
    }

    /// Whether the instance can serve another call after its last call failed with `err`: only
    /// when the guest itself finished normally (its output was rejected) or never started (its
    /// input was refused). The same kinds raised by a host function while the guest waited on
    /// it stopped the guest midway: its state may be torn.
    /// A `GUEST_ERROR` the guest returned (an Extism plugin's non-zero return or `error_set`, a
    /// component's `err`) leaves it whole too: its state is what it made it (review AT3: such a
    /// call reset the actor, a plain actor's state lost to any bad input). One from a WASI exit
    /// stopped it midway (whatever its code: see `call::run`).
    pub fn is_reusable_after(&self, err: &ExecError) -> bool {
        !self.stopped_midway
            && matches!(
                err,
                ExecError::InvalidOutput { .. } | ExecError::OutputTooLarge { .. } | ExecError::InputTooLarge { .. } | ExecError::GuestError { .. }
            )
    }

    /// Whether its last call's guest code stopped midway (a trap, a WASI exit).
    pub fn stopped_midway(&self) -> bool {
        self.stopped_midway
    }

    /// The ABI it runs under, fixed when it was made.
    pub fn abi(&self) -> Abi {
        match self.entry {
            Entry::AssemblyScript(_) => Abi::AssemblyScript,
            Entry::Extism => Abi::Extism,
            Entry::WasiCommand => Abi::WasiCommand,
            Entry::Component(_) => Abi::Component,
        }
    }
}

#[path = "instance_state.rs"]
mod state;

#[path = "instance_errors.rs"]
mod errors;
pub use errors::classify;
use errors::instantiate_error;
