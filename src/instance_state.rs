//! A kept instance's state: its memory, mutable globals and the ABI's host-side state, read
//! (`capture`, a transactional call's shadow) and written back (`restore`, a snapshot's restore,
//! an actor moving to optimized code). Only core modules have state to read; a component's calls
//! are refused here.

use wasmtime::{Global, Memory, Val};

use super::{Entry, GuestInstance};
use crate::abi::extism;
use crate::error::ExecError;
use crate::snapshot::{GlobalValue, State};

/// Bytes of memory copied or compared between two asks of a `_within` function's `go_on`.
const STEP: usize = 4 << 20;

impl GuestInstance {
    fn state_handles(&mut self) -> Result<(Option<Memory>, Vec<Global>), ExecError> {
        let Some(instance) = self.instance else {
            return Err(ExecError::InvalidArgument(
                "a component's state cannot be read or restored (no snapshots, transactional or durable calls for components)".into(),
            ));
        };
        if self.state.is_none() {
            let memory = match &self.state_names.memory {
                Some(name) => Some(
                    instance
                        .get_memory(&mut self.store, name)
                        .ok_or_else(|| ExecError::internal(format!("the instrumented memory export {name:?} is missing")))?,
                ),
                None => None,
            };
            let mut globals = Vec::with_capacity(self.state_names.globals.len());
            for name in &self.state_names.globals {
                globals.push(
                    instance
                        .get_global(&mut self.store, name)
                        .ok_or_else(|| ExecError::internal(format!("the instrumented global {name:?} is missing")))?,
                );
            }
            self.state = Some((memory, globals));
        }
        self.state.clone().ok_or_else(|| ExecError::internal("no state handles"))
    }

    fn global_values(&mut self, globals: &[Global]) -> Result<Vec<GlobalValue>, ExecError> {
        globals
            .iter()
            .map(|g| match g.get(&mut self.store) {
                Val::I32(v) => Ok(GlobalValue::I32(v)),
                Val::I64(v) => Ok(GlobalValue::I64(v)),
                Val::F32(v) => Ok(GlobalValue::F32(v)),
                Val::F64(v) => Ok(GlobalValue::F64(v)),
                Val::V128(v) => Ok(GlobalValue::V128(v.as_u128())),
                other => Err(ExecError::SnapshotInvalid(format!("a mutable global of type {:?} cannot be snapshotted", other.ty(&self.store)))),
            })
            .collect()
    }

    /// The instance's whole state (memory, mutable globals, host-side ABI state), copied.
    pub fn capture(&mut self) -> Result<State, ExecError> {
        self.capture_within(&mut || Ok(()))
    }

    /// `capture`, asking `go_on` every `STEP` bytes of the copy and stopping with its error (a
    /// durable call's deadline and cancel: a GiB's copy takes 0.6-0.8 s here, review AM2F).
    pub fn capture_within(&mut self, go_on: &mut dyn FnMut() -> Result<(), ExecError>) -> Result<State, ExecError> {
        let (memory, globals) = self.state_handles()?;
        let globals = self.global_values(&globals)?;
        // Only the pages that hold data are written into the copy (zeroed memory from the
        // allocator, untouched until written): a memory grown without being used, or claimed by
        // a restored snapshot, was copied whole at every persist (review AA: a 3 KB snapshot
        // claiming 1 GiB made 1 GiB resident and 1.2-1.8 s of host time per call).
        let memory = match memory {
            Some(m) => {
                let src = m.data(&self.store);
                let mut copy = vec![0u8; src.len()];
                for (to, from) in copy.chunks_mut(STEP).zip(src.chunks(STEP)) {
                    go_on()?;
                    crate::snapshot::write_memory(to, 0, from);
                }
                copy
            }
            None => Vec::new(),
        };
        Ok(State { memory, globals, host: self.host_state() })
    }

    /// The ABI's host-side state as bytes (an Extism plugin's vars).
    fn host_state(&self) -> Vec<u8> {
        match self.entry {
            Entry::Extism => self.store.data().extism.encode_vars(),
            _ => Vec::new(),
        }
    }

    /// Whether this instance's state differs from `state` (compared in place, nothing copied),
    /// asking `go_on` every `STEP` bytes compared.
    pub fn differs_within(&mut self, state: &State, go_on: &mut dyn FnMut() -> Result<(), ExecError>) -> Result<bool, ExecError> {
        let (memory, globals) = self.state_handles()?;
        if self.global_values(&globals)? != state.globals || self.host_state() != state.host {
            return Ok(true);
        }
        let Some(m) = memory else { return Ok(!state.memory.is_empty()) };
        let now = m.data(&self.store);
        if now.len() != state.memory.len() {
            return Ok(true);
        }
        for (a, b) in now.chunks(STEP).zip(state.memory.chunks(STEP)) {
            go_on()?;
            if a != b {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Brings `shadow` up to this instance's state, copying only what changed.
    pub fn update_shadow(&mut self, shadow: &mut State) -> Result<usize, ExecError> {
        let (memory, globals) = self.state_handles()?;
        let globals = self.global_values(&globals)?;
        let host = self.host_state();
        let copied = match memory {
            Some(m) => shadow.update_from(m.data(&self.store), &globals, &host),
            None => shadow.update_from(&[], &globals, &host),
        };
        Ok(copied)
    }

    /// Makes this (fresh) instance's state `state`: memory grown to its size and overwritten,
    /// globals set. Checked first: a state that does not fit this module is refused unchanged.
    pub async fn restore(&mut self, state: &State) -> Result<(), ExecError> {
        self.restore_parts(&state.memory, &state.globals, &state.host).await
    }

    /// Makes this (fresh) instance's state `old`'s, copied straight from `old`'s memory (an
    /// instance of the same module bytes, compiled by another compiler: see `call::move_actor`).
    pub async fn take_state_of(&mut self, old: &mut GuestInstance) -> Result<(), ExecError> {
        let (memory, globals) = old.state_handles()?;
        let globals = old.global_values(&globals)?;
        let host = old.host_state();
        let bytes: &[u8] = memory.map_or(&[], |m| m.data(&old.store));
        self.restore_parts(bytes, &globals, &host).await?;
        let peak = old.store.data().limiter.peak_bytes();
        self.store.data_mut().limiter.carry_peak(peak);
        Ok(())
    }

    async fn restore_parts(&mut self, state_memory: &[u8], state_globals: &[GlobalValue], state_host: &[u8]) -> Result<(), ExecError> {
        let (memory, globals) = self.state_handles()?;
        if globals.len() != state_globals.len() {
            return Err(ExecError::SnapshotInvalid(format!(
                "the state has {} mutable globals, the module {}",
                state_globals.len(),
                globals.len()
            )));
        }
        let current = self.global_values(&globals)?;
        if current.iter().zip(state_globals).any(|(a, b)| std::mem::discriminant(a) != std::mem::discriminant(b)) {
            return Err(ExecError::SnapshotInvalid("a global's type differs from the module's".into()));
        }
        if let Some(m) = memory {
            let have = m.data_size(&self.store);
            let want = state_memory.len();
            if want < have {
                return Err(ExecError::SnapshotInvalid(format!(
                    "the state's memory ({want} bytes) is smaller than the module's initial memory ({have} bytes)"
                )));
            }
            if want > have {
                let pages = ((want - have) / 65536) as u64;
                m.grow_async(&mut self.store, pages).await.map_err(|e| match e.downcast_ref::<ExecError>() {
                    Some(e) => e.clone(),
                    None => ExecError::SnapshotInvalid(format!("cannot grow the memory to {want} bytes: {e:#}")),
                })?;
            }
            crate::snapshot::write_memory(m.data_mut(&mut self.store), have, state_memory);
        } else if !state_memory.is_empty() {
            return Err(ExecError::SnapshotInvalid("the state has a memory, the module none".into()));
        }
        if matches!(self.entry, Entry::Extism) {
            self.store.data_mut().extism.replace_vars(extism::Kernel::decode_vars(state_host)?);
        } else if !state_host.is_empty() {
            // Only Extism keeps host-side state: bytes for another ABI are a forgery, which a
            // transactional or durable actor's shadow would otherwise keep, uncounted (review AA:
            // 200 MiB per restore, 2 GiB held under a maxActorMemoryMB of 32).
            return Err(ExecError::SnapshotInvalid(format!(
                "the snapshot has {} bytes of host-side state; this module's ABI keeps none",
                state_host.len()
            )));
        }
        for (g, v) in globals.iter().zip(state_globals) {
            let val = match *v {
                GlobalValue::I32(x) => Val::I32(x),
                GlobalValue::I64(x) => Val::I64(x),
                GlobalValue::F32(x) => Val::F32(x),
                GlobalValue::F64(x) => Val::F64(x),
                GlobalValue::V128(x) => Val::V128(x.into()),
            };
            g.set(&mut self.store, val).map_err(|e| ExecError::SnapshotInvalid(format!("cannot set a global: {e:#}")))?;
        }
        Ok(())
    }
}
