//! Unpooled first: a module loaded from an artifact before the process's instance pool exists
//! runs on the pool-less twin of the pooled engine while the pool is built in the background;
//! then the pooled engine maps the same sealed copy of the artifact (no second read, copy or
//! check: 30 ms of two cores for the 12 MB component's 37 MB), or deserializes the same checked
//! bytes (an artifact downloaded from the shared store is not downloaded again), and that copy
//! takes the cache slot. Until then the module's calls and actors are not counted against the pool (as
//! `maxFuel` calls are not).
//!
//! Building the pool costs 3-6 ms of system calls (a guard page `mprotect`ed per fiber stack,
//! about 1,300 of them by default), which a fresh process with a warm `cacheDir` would otherwise
//! pay on its first call. The twin has the pooled engine's settings, so its code is the same
//! artifact (the same fingerprint and file); only where instances get their memory and fiber
//! stacks differs. Calls after the swap run pooled; an actor made before it keeps its unpooled
//! instance (the same code: nothing to move).

use std::sync::Arc;

use crate::digest::Digest;
use crate::engine::{engine, EngineKind};
use crate::modules::{prepare, CompiledModule, ModuleCache};
use crate::artifacts::Checked;

impl ModuleCache {
    /// Builds the pool in the background and puts the artifact's pooled copy in the slot where
    /// `placeholder` (its unpooled copy) is, unless the slot changed or the cache was cleared
    /// meanwhile (the definitions' index is left as the loads set it). The pooled copy loads the
    /// artifact as it was checked (its sealed copy, or its checked bytes: no second read, download
    /// or check). Should that fail, the unpooled copy leaves its slot, so that the next call loads
    /// the module anew rather than run outside the pool for good.
    pub(crate) fn pool_later(
        &self,
        digest: Digest,
        placeholder: &Arc<CompiledModule>,
        checked: Checked,
    ) {
        let Some(rt) = crate::runtime::handle() else { return };
        let state = self.state.clone();
        let placeholder = Arc::downgrade(placeholder);
        rt.spawn(async move {
            // Milliseconds of system calls: not on a runtime worker.
            let pooled = match tokio::task::spawn_blocking(|| engine(EngineKind::Plain)).await {
                _ if placeholder.strong_count() == 0 => return,
                Ok(Ok(pooled_engine)) => tokio::task::spawn_blocking(move || {
                    let compiled = checked.load(pooled_engine)?;
                    prepare(compiled, digest, EngineKind::Plain, checked.facts()).ok().map(|m| CompiledModule { from_artifact: true, ..m })
                })
                .await
                .ok()
                .flatten(),
                _ => None,
            };
            let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
            let slot = (digest, EngineKind::Plain);
            // A clear that dropped the module took it from its slot (or a load since put other
            // code there): `swap` and `holds` see that. A clear of another activity changes nothing.
            match pooled {
                Some(pooled) => {
                    let swapped = st.swap(&slot, &placeholder, Arc::new(pooled));
                    st.stats.pooled_later += u64::from(swapped);
                }
                None if st.holds(&slot, &placeholder) => st.remove(&slot),
                None => {}
            }
        });
    }
}
