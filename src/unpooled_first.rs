//! Unpooled first: a module loaded from an artifact before the process's instance pool exists
//! runs on the pool-less twin of the pooled engine while the pool is built in the background;
//! then the artifact is loaded again for the pooled engine and that copy takes the cache slot.
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
use crate::modules::{artifact_module, CompiledModule, DefKey, ModuleCache};

impl ModuleCache {
    /// Builds the pool in the background and puts the artifact's pooled copy in the slot where
    /// `placeholder` (its unpooled copy) is, unless the slot changed or the cache was cleared
    /// meanwhile. An artifact that is gone or changed by then leaves the unpooled copy in place.
    pub(crate) fn pool_later(&self, key: Option<&DefKey>, digest: Digest, generation: u64, placeholder: &Arc<CompiledModule>) {
        let Some(rt) = crate::runtime::handle() else { return };
        let state = self.state.clone();
        let artifacts = self.artifacts.clone();
        let key = key.cloned();
        let placeholder = Arc::downgrade(placeholder);
        rt.spawn(async move {
            // Milliseconds of system calls: not on a runtime worker.
            if !matches!(tokio::task::spawn_blocking(|| engine(EngineKind::Plain).is_ok()).await, Ok(true)) {
                return;
            }
            if placeholder.strong_count() == 0 {
                return;
            }
            let Some(Ok(pooled)) = artifact_module(&artifacts, digest, EngineKind::Plain).await else { return };
            let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
            let slot = (digest, EngineKind::Plain);
            let still = st.lru.peek(&slot).is_some_and(|m| placeholder.upgrade().is_some_and(|p| Arc::ptr_eq(m, &p)));
            if st.generation == generation && still {
                st.insert(key.as_ref(), slot, Arc::new(pooled));
                st.stats.pooled_later += 1;
            }
        });
    }
}
