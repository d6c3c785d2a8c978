//! Where a load finds a module's code besides compiling its bytes: another executor of the
//! process (`shareCode`), the artifact tiers, the module a definition named last time (its
//! artifact loaded while the download runs); and the compile when none has it.
use super::*;

impl ModuleCache {
    /// Code another executor of the process holds for these bytes and this engine (`shareCode`),
    /// cached here as its own (under `key` too, if the bytes were downloaded for it), and written
    /// to this executor's artifact tiers if they lack it, as code it compiled would be. Baseline
    /// code of a tier-up in progress only with the bytes to tier up (`tier_bytes`): this slot
    /// joins that tier-up's compile.
    pub(super) async fn take_shared(
        &self,
        digest: &Digest,
        kind: EngineKind,
        key: Option<&DefKey>,
        generation: u64,
        tier_bytes: Option<&Vec<u8>>,
    ) -> Option<Arc<CompiledModule>> {
        let shared = {
            let mut st = self.state();
            let shared = if st.share { crate::shared_code::find(digest, kind, &st.compile_limits)? } else { return None };
            if shared.kind != kind && tier_bytes.is_none() {
                return None;
            }
            st.stats.shared_hits += 1;
            if st.unchanged_for(generation, key.map(|k| k.name.as_str())) {
                st.insert(key, (*digest, kind), shared.clone());
            }
            shared
        };
        if let (true, Some(bytes)) = (shared.kind != kind, tier_bytes) {
            self.tier_up_later(bytes.clone(), *digest, kind, generation, &shared);
        }
        // Best effort, as after a compile: a cache that cannot be written costs a compile later.
        // Both tiers in the background, the module sealed if nothing is known of it (review AQ1:
        // a directory holding the previous key's artifact was kept). Not on the call's path:
        // asking the store held the call (30 s for a store that stalls, review AM1F), and sealing
        // the 12 MB component for the directory held it 0.1 s, 1.5 s with sixteen executors
        // taking it at once.
        if let Ok(engine) = engine(shared.kind) {
            self.artifacts.save_missing_later(*digest, engine, shared.clone());
        }
        Some(shared)
    }

    /// A module from the artifact tiers, for the engine (unless `tried` already) or its baseline
    /// twin; each looked for once, also when the engine is its own twin.
    pub(super) async fn from_artifact(&self, digest: Digest, kind: EngineKind, tried: bool, left: &mut std::time::Duration) -> Option<(Arc<CompiledModule>, Checked)> {
        module_artifacts::from_artifact(&self.artifacts, self.pool_ready, digest, kind, tried, None, left).await
    }

    /// The first of these engines' artifacts of a module that loads (`module_artifacts::load_artifact`).
    pub(super) async fn load_artifact(&self, digest: Digest, kinds: &[EngineKind], left: &mut std::time::Duration) -> Option<(Arc<CompiledModule>, Checked)> {
        module_artifacts::load_artifact(&self.artifacts, self.pool_ready, digest, kinds, None, left).await
    }

    /// The digest `key`'s bytes had last time (`artifact_hints`, in `cacheDir`) and, unless that
    /// module's code is at hand already (cached here, or held by another executor) or the last
    /// download failed, the load of its artifact, under way (`Guess`).
    pub(super) async fn speculate(&self, key: &DefKey, kind: EngineKind) -> (Option<Digest>, Option<module_artifacts::Guess>) {
        let Some(dir) = self.artifacts.dir.as_ref().filter(|_| self.artifacts.is_enabled()) else { return (None, None) };
        let Some(hint) = crate::artifact_hints::read(dir, &key.name, &key.version, &key.path).await else { return (None, None) };
        let at_hand = {
            let st = self.state();
            st.lru.peek(&(hint, kind)).is_some()
                || (st.share && crate::shared_code::find(&hint, kind, &st.compile_limits).is_some())
        };
        if at_hand || self.unfetched.lock().unwrap_or_else(|p| p.into_inner()).contains(&self.unfetched_keys.hash_one(key)) {
            return (Some(hint), None);
        }
        (Some(hint), module_artifacts::Guess::start(&self.artifacts, self.pool_ready, hint, kind))
    }

    pub(crate) async fn compile(&self, bytes: Vec<u8>, digest: Digest, kind: EngineKind) -> Result<Arc<CompiledModule>, ExecError> {
        self.compile_until(bytes, digest, kind, tokio::time::Instant::now() + self.limits.compile_timeout).await
    }

    /// `compile`, waited for until `deadline` (what is left of a call's `compileTimeoutMs`).
    pub(crate) async fn compile_until(
        &self,
        bytes: Vec<u8>,
        digest: Digest,
        kind: EngineKind,
        deadline: tokio::time::Instant,
    ) -> Result<Arc<CompiledModule>, ExecError> {
        let mut rx = compile_job(bytes, digest, kind, self.limits.compile, Urgency::Now, self.compile_owner, None);
        let wait = rx.wait_for(|r| r.is_some());
        let compiled = match tokio::time::timeout_at(deadline, wait).await {
            Ok(Ok(r)) => r.clone().unwrap_or_else(|| Err(ExecError::internal("compile finished without a result")))?,
            Ok(Err(_)) => return Err(ExecError::internal("the compile was dropped")),
            Err(_) => {
                return Err(ExecError::CompileLimit(format!(
                    "compiling took longer than {} ms (compileTimeoutMs); it goes on in the background and a later call may find it cached",
                    self.limits.compile_timeout.as_millis()
                )))
            }
        };
        // Best effort: a cache that cannot be written costs a compile later, not this call.
        if let Ok(engine) = engine(compiled.kind) {
            let _ = self.artifacts.save(&digest, engine, &compiled.code, compiled.facts()).await;
        }
        Ok(compiled)
    }
}
