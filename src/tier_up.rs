//! Tier-up: a module compiled for the first time runs on baseline code (Winch) while optimized
//! code (Cranelift) compiles in the background and then takes its cache slot.

use std::sync::{Arc, Mutex, Weak};

use crate::artifacts::ArtifactCache;
use crate::cache_state::State;
use crate::compile::{compile_job, compiles, Urgency};
use crate::digest::{sha256, Digest};
use crate::engine::{engine, EngineKind};
use crate::error::ExecError;
use crate::modules::{CompiledModule, ModuleCache};
use crate::shape::CompileLimits;
use crate::store::BlobSource;

impl ModuleCache {
    /// Tier-up: a core module the optimizing compiler would take a while over is compiled by the
    /// baseline compiler (Winch: several times faster to compile, slower code) for the calls that
    /// wait now, and by Cranelift in the background; when that is done its module takes the
    /// cache slot (calls after that run optimized code; actors created before keep their
    /// instance) and its artifact is stored. The 12 MB JavaScript component: 2.3 s with Winch
    /// against 13 s with Cranelift on 2 busy cores. An optimizing compile of the module already
    /// in flight (another executor's tier-up, say) is joined by the background part, not waited
    /// for: the baseline compile is the sooner answer.
    pub(crate) async fn compile_tiered(
        &self,
        bytes: Vec<u8>,
        digest: Digest,
        kind: EngineKind,
        generation: u64,
    ) -> Result<Arc<CompiledModule>, ExecError> {
        if kind.baseline() {
            return self.compile(bytes, digest, kind).await;
        }
        // One `compileTimeoutMs` for the call, whichever compilers it takes.
        let deadline = tokio::time::Instant::now() + self.limits.compile_timeout;
        let baseline = match self.compile_until(bytes.clone(), digest, kind.with_baseline(true), deadline).await {
            Ok(m) => m,
            // Out of time: no second compile (it could not be stopped either), and the call is
            // refused at its limit, not at twice it.
            Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
            // The baseline compiler cannot take it (or it fails to load): the one compiler, now.
            Err(_) => return self.compile_until(bytes, digest, kind, deadline).await,
        };
        // A shape that needs the baseline compiler stays there: the background compile finds it
        // and refuses (found here, the walk of every instruction delayed the first result: ~60
        // ms for the 12 MB component).
        self.tier_up_later(bytes, digest, kind, generation, &baseline);
        Ok(baseline)
    }

    /// Compiles `bytes` for `kind` in the background and, once done, puts it in the slot where
    /// `placeholder` is (unless the slot changed or the cache was cleared meanwhile). Which
    /// module a definition means is left alone: a load since (of new bytes, for the other engine
    /// kind) may have moved it to other code, and the optimized copy of the old must not take it
    /// back.
    pub(crate) fn tier_up_later(&self, bytes: Vec<u8>, digest: Digest, kind: EngineKind, generation: u64, placeholder: &Arc<CompiledModule>) {
        self.tier_up_parts().start(bytes, digest, kind, generation, placeholder);
    }

    /// `tier_up_later` for a pinned module loaded from its baseline artifact with no download
    /// (the optimized one was not stored yet: the process that compiled it ended first): its
    /// bytes are fetched from `path` in the background and, if they are the pinned module, tier
    /// up. A store that is down, or holds other bytes under the name now, leaves it on baseline
    /// code. Before, the call downloaded first and failed with the store (review AY1). One fetch
    /// per module and engine at a time, stopped by a clear of the whole cache and by `close()`
    /// (review AZ1: a caller clearing the cache between calls had 20,000 fetches of a store that
    /// never answered under way at once, each until `loadTimeoutMs`, after `close()` too).
    pub(crate) fn tier_up_fetching(
        &self,
        source: Arc<dyn BlobSource>,
        path: String,
        digest: Digest,
        kind: EngineKind,
        generation: u64,
        placeholder: &Arc<CompiledModule>,
    ) {
        let Some(rt) = crate::runtime::handle() else { return };
        let mut fetches = self.fetches.lock().unwrap_or_else(|p| p.into_inner());
        fetches.retain(|_, fetch| !fetch.is_finished());
        if fetches.contains_key(&(digest, kind)) {
            return;
        }
        let parts = self.tier_up_parts();
        let placeholder = Arc::downgrade(placeholder);
        let (timeout, max) = (self.limits.load_timeout, self.limits.compile.max_module_bytes);
        let fetch = rt.spawn(async move {
            let Ok(Ok(bytes)) = tokio::time::timeout(timeout, source.fetch(&path, max)).await else { return };
            if bytes.len() as u64 > max || sha256(&bytes) != digest {
                return;
            }
            // Evicted meanwhile, the cache cleared or the executor dropped: no longer of use.
            let Some(placeholder) = placeholder.upgrade() else { return };
            parts.start(bytes, digest, kind, generation, &placeholder);
        });
        fetches.insert((digest, kind), fetch.abort_handle());
    }

    fn tier_up_parts(&self) -> TierUp {
        TierUp {
            state: Arc::downgrade(&self.state),
            compile: self.limits.compile,
            owner: self.compile_owner,
            artifacts: self.artifacts.clone(),
        }
    }

    /// The optimized code of a module whose baseline code runs while it compiles (tier-up),
    /// once it is done and stored; the module itself otherwise.
    pub async fn optimized(&self, module: Arc<CompiledModule>, kind: EngineKind) -> Arc<CompiledModule> {
        if module.kind == kind {
            return module;
        }
        let job = compiles().lock().unwrap_or_else(|p| p.into_inner()).get(&(module.digest, kind, self.limits.compile)).cloned();
        let Some(job) = job else { return module };
        // `precompile` waits for it: not behind other modules' tier-ups.
        job.hurry();
        let mut rx = job.rx;
        let done = match rx.wait_for(|r| r.is_some()).await {
            Ok(r) => r.clone(),
            Err(_) => return module,
        };
        // Its caller (`precompile`) writes it to the tiers next, waiting (review AR1F: a write
        // here sealed it off the call's path, behind every background seal of the process).
        match done {
            Some(Ok(optimized)) => optimized,
            _ => module,
        }
    }
}

/// What a tier-up needs of its module cache, held apart from it: the cache's state weakly (a
/// dropped executor's tier-ups are not kept for it).
struct TierUp {
    state: Weak<Mutex<State>>,
    compile: CompileLimits,
    owner: crate::compile_turns::Owner,
    artifacts: ArtifactCache,
}

impl TierUp {
    /// Compiles `bytes` for `kind` in the background and, once done, puts it in the slot where
    /// `placeholder` is (see `ModuleCache::tier_up_later`).
    fn start(self, bytes: Vec<u8>, digest: Digest, kind: EngineKind, generation: u64, placeholder: &Arc<CompiledModule>) {
        let Some(rt) = crate::runtime::handle() else { return };
        let slot = (digest, kind);
        let state = self.state;
        let placeholder = Arc::downgrade(placeholder);
        // Still of use: the cache not cleared since and the baseline code still held somewhere (in
        // its slot, or by the load that is about to put it there: the job may get its slot before
        // that); not once it was evicted and dropped, the cache cleared or the executor dropped.
        let waits = {
            let (state, placeholder) = (state.clone(), placeholder.clone());
            move || {
                placeholder.strong_count() > 0
                    && state.upgrade().is_some_and(|s| {
                        let st = s.lock().unwrap_or_else(|p| p.into_inner());
                        // A clear since that left the module in its slot (another activity's).
                        st.generation == generation || st.holds(&slot, &placeholder)
                    })
            }
        };
        let mut rx = compile_job(bytes, digest, kind, self.compile, Urgency::Background, self.owner, Some(Arc::new(waits)));
        let artifacts = self.artifacts;
        rt.spawn(async move {
            let done = match rx.wait_for(|r| r.is_some()).await {
                Ok(r) => r.clone(),
                Err(_) => return,
            };
            let Some(Ok(optimized)) = done else { return };
            // To the tiers that lack it: executors that joined one tier-up each get its code, and
            // each wrote it (review AQ2 H4: the store's copy again, about one run in three).
            if let Ok(engine) = engine(optimized.kind) {
                artifacts.save_missing_later(digest, engine, optimized.clone());
            }
            let Some(state) = state.upgrade() else { return };
            let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
            // A clear that dropped the module took it from its slot: `swap` refuses then.
            if st.swap(&slot, &placeholder, optimized) {
                st.stats.tier_ups += 1;
            }
        });
    }
}
