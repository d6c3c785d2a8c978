//! Compiled artifacts that outlive the process: `<sha256>-<engine fingerprint>.cwasm` in a
//! directory (`cacheDir`) and/or a shared object store (`artifactStore`), so a restarted worker,
//! or a whole fleet, compiles each module once.
//!
//! A compiled artifact is native code: whoever can write one can run code in this process. So
//! each is authenticated: wasmtime's serialized module, a flags byte, then a MAC (keyed BLAKE3,
//! `ArtifactTag`) over the artifact's name (module digest + engine fingerprint), the flags and the
//! module, with a key
//! only the executor holds: `artifactKey` (required for a shared store, so a fleet shares it), or
//! a key created with mode 0600 in `cacheDir`. Bytes without a valid tag are discarded and
//! recompiled, never handed to wasmtime. Plain `http://` stores and world-writable directories
//! are refused. The fingerprint covers the wasmtime version and every engine setting that
//! changes code, so a stale or foreign artifact is never even looked up.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use wasmtime::Engine;

use crate::compiled_module::Facts;
use crate::modules::{Code, Compiled};

use crate::artifact_dir::{dir_key, ends_in, holds, is_file_of, read_bounded, secure_dir};
pub(crate) use crate::artifact_dir::write_atomic;
pub use crate::artifact_remote::{RemoteState, REMOTE_ANSWER_WAIT, REMOTE_STALL_SKIP};
pub use crate::artifact_seal::fingerprint;
pub(crate) use crate::artifact_seal::{deserialize, facts_of, flags_of, trailer_of, Checked, COMPONENT, MAGIC, TRAILER};
#[cfg(test)]
pub(crate) use crate::artifact_seal::seal;
use crate::digest::{hex, Digest};
use crate::error::ExecError;
use crate::sealed_copy::{in_place, InPlace};
use crate::store::ObjectSource;

/// The key file `cacheDir` gets when no `artifactKey` is given.
pub const KEY_FILE: &str = ".loom-artifact-key";
/// Shortest `artifactKey` accepted, in bytes.
pub const MIN_KEY_BYTES: usize = 32;

/// Where artifacts live and the key that authenticates them.
#[derive(Default, Clone)]
pub struct ArtifactCache {
    pub dir: Option<PathBuf>,
    pub remote: Option<Arc<ObjectSource>>,
    /// `artifactKey`; filled from `dir`'s key file by `open` when not given.
    pub key: Option<Arc<[u8]>>,
    /// `maxCacheDirBytes`: what `dir`'s artifacts and hints may take on disk (`cache_dir_bound`);
    /// `cache_dir_bound::DEFAULT_MAX_BYTES` when not given.
    pub max_dir_bytes: Option<u64>,
    /// The compile limits of the executor: its artifacts are of modules these limits allowed,
    /// and are named for them (`name_for`).
    pub limits: crate::shape::CompileLimits,
    /// The longest a lookup in `remote` may take, its body read included (`loadTimeoutMs`);
    /// none: the store's own timeouts only.
    pub fetch_timeout: Option<std::time::Duration>,
    /// This cache's use of `remote`: whether it stalls, its writes in flight.
    pub remote_state: RemoteState,
    /// What reads of `dir` may hold before their artifacts' tags are checked (the process's
    /// budget; the store's lookups have the executor's own, in `remote_state`).
    pub unchecked: crate::unchecked_artifacts::UncheckedBytes,
    /// Its `dir` writes off calls' paths, which `close()` waits for.
    pub dir_writes: crate::artifact_dir_writes::DirWrites,
}

impl ArtifactCache {
    /// Checks the configuration and settles the key: refuses `http://` stores, a shared store
    /// without `artifactKey`, a short key, a world-writable directory or a key file others can
    /// read; creates the directory (0700) and its key file (0600) when needed.
    pub fn open(mut self) -> Result<ArtifactCache, ExecError> {
        if let Some(key) = &self.key {
            if key.len() < MIN_KEY_BYTES {
                return Err(ExecError::InvalidArgument(format!(
                    "options.artifactKey must hold at least {MIN_KEY_BYTES} bytes, got {}",
                    key.len()
                )));
            }
        }
        if let Some(remote) = &self.remote {
            if remote.is_plain_http() {
                return Err(ExecError::InvalidArgument(
                    "options.artifactStore: plain http:// cannot be trusted with compiled code (use https:// or a cloud store)".into(),
                ));
            }
            if self.key.is_none() {
                return Err(ExecError::InvalidArgument(
                    "options.artifactStore needs options.artifactKey (a secret shared by the fleet) to authenticate compiled code".into(),
                ));
            }
            if self.remote_state.sharing.is_none() {
                self.remote_state.sharing = Some(Arc::new(self.remote_state.all_stores.register()));
            }
        }
        if let Some(dir) = self.dir.take() {
            // Checked and used as the directory it names now: a relative one resolved later (after
            // a `process.chdir`) was another directory, never checked, world-writable perhaps,
            // where artifacts and hints went and the bound pruned (review BX2).
            self.dir = Some(crate::artifact_dir::absolute(&dir, "options.cacheDir")?);
        }
        if let Some(dir) = &self.dir {
            secure_dir(dir)?;
            if self.key.is_none() {
                self.key = Some(dir_key(dir)?.into());
            }
        }
        Ok(self)
    }

    /// Keeps `dir` within its bound from now on (`cache_dir_bound`): called once the executor
    /// that opened it exists, so a constructor that fails prunes nothing.
    pub(crate) fn watch_dir(&self) {
        if let Some(dir) = &self.dir {
            crate::cache_dir_bound::on_open(dir.clone(), self.dir_bound());
        }
    }

    /// Leaves `dir` within its bound before it resolves, keeping (and marking used) the artifact
    /// of `digest` for `engine` (`cache_dir_bound::settle`).
    pub(crate) async fn settle_dir(&self, digest: &Digest, engine: &Engine) {
        if let Some(dir) = &self.dir {
            crate::cache_dir_bound::settle(dir.clone(), self.dir_bound(), Some(self.name(digest, engine))).await;
        }
    }

    /// Marks the `dir` artifacts of these modules (digest, and the engine their code is for) and
    /// the hints of these definitions used now, off the caller's path.
    pub(crate) fn refresh(&self, held: Vec<(Digest, crate::engine::EngineKind)>, named: Vec<crate::modules::DefKey>) {
        let Some(dir) = self.dir.clone() else { return };
        let limits = self.limits;
        let paths = move || {
            let artifacts = held
                .into_iter()
                .filter_map(|(digest, kind)| crate::engine::engine(kind).ok().map(|e| dir.join(Self::name_for(&digest, e, &limits))));
            let hints = named.iter().map(|k| dir.join(crate::artifact_hints::hint_name(&k.name, &k.version, &k.path)));
            artifacts.chain(hints).collect()
        };
        crate::cache_dir_bound::touch_all_later(paths);
    }

    /// What `dir`'s files of ours may take on disk.
    pub(crate) fn dir_bound(&self) -> u64 {
        self.max_dir_bytes.unwrap_or(crate::cache_dir_bound::DEFAULT_MAX_BYTES)
    }

    /// Writes an artifact (or a hint) to `dir` and keeps the directory within its bound; an
    /// artifact over the whole bound is not written.
    pub(crate) async fn write_to_dir(&self, dir: &Path, name: String, bytes: Arc<dyn AsRef<[u8]> + Send + Sync>) -> Result<(), ExecError> {
        let len = (*bytes).as_ref().len() as u64;
        let max = self.dir_bound();
        // As it will be counted: in blocks on disk.
        if len.div_ceil(4096).saturating_mul(4096) > max {
            return Ok(());
        }
        write_atomic(dir.to_path_buf(), name.clone(), bytes).await?;
        crate::cache_dir_bound::wrote(dir, max, &name, len);
        Ok(())
    }

    pub fn is_enabled(&self) -> bool {
        self.key.is_some() && (self.dir.is_some() || self.remote.is_some())
    }

    /// The name of the artifact of `digest` for `engine` this cache reads and writes.
    pub fn name(&self, digest: &Digest, engine: &Engine) -> String {
        Self::name_for(digest, engine, &self.limits)
    }

    /// `<sha256>-<engine fingerprint>.cwasm`, the fingerprint folding in the compile limits the
    /// module was checked against when they are not the defaults (not `maxModuleBytes`, which a
    /// download is checked against whatever is cached): an executor loads only artifacts its
    /// own limits allowed, as with `shareCode` (review AA: a strict executor ran code from a
    /// `cacheDir` that a lenient one had filled, which its `maxFunctions: 1` or
    /// `maxInitInstructions` refused when compiling). The tag covers the name, so the limits too.
    pub fn name_for(digest: &Digest, engine: &Engine, limits: &crate::shape::CompileLimits) -> String {
        let engine_part = fingerprint(engine);
        let defaults = crate::shape::CompileLimits { max_module_bytes: limits.max_module_bytes, ..Default::default() };
        let engine_part = match *limits == defaults {
            true => engine_part,
            false => {
                let l = limits;
                let text = format!(
                    "{engine_part} functions {} function bytes {} locals {} init {}{}",
                    l.max_functions,
                    l.max_function_bytes,
                    l.max_locals,
                    l.max_init_instructions,
                    // Added later: an executor of the default maxCodeBytes keeps the names of before.
                    match l.max_code_bytes == crate::shape::DEFAULT_MAX_CODE_BYTES {
                        true => String::new(),
                        false => format!(" code {}", l.max_code_bytes),
                    }
                );
                hex(&crate::digest::sha256(text.as_bytes()))[..16].to_string()
            }
        };
        format!("{}-{}.cwasm", hex(digest), engine_part)
    }

    /// Compiled code (and what its flags say of the module) from the nearest tier that has an
    /// authentic artifact.
    pub async fn load(&self, digest: &Digest, engine: &Engine) -> Option<(Compiled, Facts)> {
        self.load_sealed(digest, engine).await.map(|(c, checked)| (c, checked.facts()))
    }

    /// The same, with the artifact as checked (its sealed copy, or its authenticated bytes), which
    /// another engine of its fingerprint may load without reading, downloading or checking it again.
    pub(crate) async fn load_sealed(&self, digest: &Digest, engine: &Engine) -> Option<(Compiled, Checked)> {
        self.load_sealed_within(digest, engine, &mut self.lookup_time()).await
    }

    /// The time a cold call's artifact store lookups may take together (`loadTimeoutMs`, or the
    /// store's own timeout): a call looks up its engine's artifact and its baseline twin's, and
    /// each took up to that before (review AO1: a store holding junk under both names, sent at
    /// the pace that just passes, held a cold call twice `loadTimeoutMs`).
    pub(crate) fn lookup_time(&self) -> std::time::Duration {
        match &self.remote {
            Some(remote) => self.fetch_timeout.unwrap_or(remote.timeout()),
            None => std::time::Duration::ZERO,
        }
    }

    /// `load_sealed`, its store lookup within `left` of the call's lookup time, which it takes
    /// what it spends from (none left: the store is not asked).
    pub(crate) async fn load_sealed_within(&self, digest: &Digest, engine: &Engine, left: &mut std::time::Duration) -> Option<(Compiled, Checked)> {
        let key = self.key.clone()?;
        let name = self.name(digest, engine);
        if let Some(dir) = &self.dir {
            let path = dir.join(&name);
            match in_place(engine, key.clone(), name.clone(), path.clone(), self.unchecked.clone()).await {
                InPlace::Loaded(c, sealed) => {
                    // Used now: the last to go when the directory is pruned.
                    crate::cache_dir_bound::touch_later(path);
                    return Some((c, Checked::Sealed(sealed)));
                }
                InPlace::Invalid => {
                    let _ = tokio::fs::remove_file(&path).await;
                }
                InPlace::Missing => {}
                InPlace::NotHere => {
                    if let Some((bytes, admitted)) = read_bounded(path.clone(), self.unchecked.clone()).await {
                        let loaded = deserialize(engine, key.clone(), name.clone(), bytes).await;
                        drop(admitted);
                        match loaded {
                            Some((c, checked)) => {
                                crate::cache_dir_bound::touch_later(path);
                                return Some((c, Checked::Bytes(checked)));
                            }
                            // Forged, corrupt or truncated: never used, removed so it is rewritten.
                            None => {
                                let _ = tokio::fs::remove_file(&path).await;
                            }
                        }
                    }
                }
            }
        }
        if self.remote.is_none() || left.is_zero() || self.remote_state.skipping() || self.remote_state.skipping_module(digest) {
            return None;
        }
        let started = tokio::time::Instant::now();
        let found = self.from_store(digest, engine, key, name, started + *left).await;
        *left = left.saturating_sub(started.elapsed());
        found
    }

    /// A guessed artifact (`artifact_hints`): from `cacheDir` only, through its sealed copy, given
    /// up once `stop` is set. A guess is no reason to touch the directory: an artifact that does
    /// not check (another executor's key, say) is left where it is, and nothing is downloaded.
    /// `stop` goes along into the blocking copy and is let go of only when that has ended (the
    /// caller counts guesses under way by it).
    pub(crate) async fn load_guess<S>(&self, digest: &Digest, engine: &Engine, stop: Arc<S>) -> Option<(Compiled, Checked)>
    where
        S: AsRef<std::sync::atomic::AtomicBool> + Send + Sync + 'static,
    {
        let key = self.key.clone()?;
        let name = self.name(digest, engine);
        let path = self.dir.as_ref()?.join(&name);
        let engine = engine.clone();
        let at = path.clone();
        let unchecked = self.unchecked.clone();
        let loaded =
            tokio::task::spawn_blocking(move || crate::sealed_copy::in_place_unless(&engine, &key, &name, &at, (*stop).as_ref(), &unchecked)).await;
        match loaded {
            Ok(InPlace::Loaded(c, sealed)) => {
                crate::cache_dir_bound::touch_later(path);
                Some((c, Checked::Sealed(sealed)))
            }
            _ => None,
        }
    }

    /// Saves a freshly compiled module to every tier (best effort: a cache that cannot be
    /// written only costs a compile later). The artifact store is written in the background (a
    /// write that stalled held the call that compiled for the store's timeout, review AM1), at
    /// most `REMOTE_PUTS` at once for this executor.
    pub async fn save(&self, digest: &Digest, engine: &Engine, code: &Code, facts: Facts) -> Result<(), ExecError> {
        self.save_to(digest, engine, code, facts, false).await
    }

    /// `save`, the artifact store's write waited for (`precompile`: a process that precompiles
    /// and exits would not see a background write land).
    pub async fn save_now(&self, digest: &Digest, engine: &Engine, code: &Code, facts: Facts) -> Result<(), ExecError> {
        self.save_to(digest, engine, code, facts, true).await
    }

    async fn save_to(&self, digest: &Digest, engine: &Engine, code: &Code, facts: Facts, wait: bool) -> Result<(), ExecError> {
        match self.sealed(digest, engine, code, facts, true).await? {
            Some((name, sealed)) => self.write_sealed(name, sealed, wait).await,
            None => Ok(()),
        }
    }

    /// The artifact of `code` under its name, sealed with the key (none: the cache is off): one
    /// seal for the executors that want it at once (`artifact_sealing`), `urgent` when a call or
    /// `precompile` waits for it.
    async fn sealed(&self, digest: &Digest, engine: &Engine, code: &Code, facts: Facts, urgent: bool) -> Result<Option<(String, Bytes)>, ExecError> {
        let Some(key) = self.key.clone().filter(|_| self.is_enabled()) else { return Ok(None) };
        let name = self.name(digest, engine);
        let flags = flags_of(facts, code.is_component());
        let sealed = crate::artifact_sealing::sealed(key, &name, flags, urgent, code.serializer()).await?;
        Ok(Some((name, sealed)))
    }

    /// Whether a lookup of this tier could ever read an artifact of `len` bytes: one larger
    /// than the most its reads may hold unchecked (`unchecked_artifacts`) is never loaded, so
    /// not written (review AO1: every compile uploaded such an artifact again).
    fn readable(budget: &crate::unchecked_artifacts::UncheckedBytes, len: usize) -> bool {
        len as u64 <= budget.max()
    }

    /// Writes a sealed artifact to the tiers (the store's write in the background unless `wait`).
    async fn write_sealed(&self, name: String, sealed: Bytes, wait: bool) -> Result<(), ExecError> {
        // A directory that cannot be written (removed, full) does not keep the artifact from the
        // store (review AN1F: a worker whose cacheDir went stopped sharing with its fleet); its
        // error is the save's, after that.
        let in_dir = match &self.dir {
            Some(dir) if Self::readable(&self.unchecked, sealed.len()) => self.write_to_dir(dir, name.clone(), Arc::new(sealed.clone())).await,
            _ => Ok(()),
        };
        let Some(remote) = self.remote.clone().filter(|_| Self::readable(&self.remote_state.unchecked, sealed.len())) else { return in_dir };
        if self.remote_state.take_unread(&name) {
            return in_dir;
        }
        // Written over now: no longer what a lookup found forged.
        self.remote_state.take_forged(&name);
        let background = match tokio::runtime::Handle::try_current() {
            Ok(runtime) if !wait => Some(runtime),
            _ => None,
        };
        let trailer: crate::artifact_trailers::Trailer = trailer_of(&sealed).try_into().map_err(ExecError::internal)?;
        // A write of these very bytes to this store under way (another executor's, of the same
        // module and key) is waited for, not made again (`artifact_puts`).
        match background {
            Some(runtime) => {
                if let Ok(permit) = self.remote_state.puts.clone().try_acquire_owned() {
                    let turn = crate::artifact_puts::turn(&remote, &name, &trailer);
                    drop(runtime.spawn(async move {
                        let _ = crate::artifact_puts::put(&remote, &name, &trailer, sealed, turn).await;
                        drop(permit);
                    }));
                }
            }
            None => {
                let turn = crate::artifact_puts::turn(&remote, &name, &trailer);
                crate::artifact_puts::put(&remote, &name, &trailer, sealed, turn).await?
            }
        }
        in_dir
    }

    /// `save`, for code this executor did not make (taken from another executor: `shared_code`):
    /// written to both tiers if either lacks its artifact, told from the length and trailer of
    /// what is under its name (`artifact_trailers`: review AQ1, sealing the module each time to
    /// learn them cost the 12 MB component 0.6 s of CPU per executor); with none noted, the
    /// module is sealed first (off the call's path: `modules`). The directory lacks it when its
    /// file is not of the artifact's length and trailer, or has other names (review AQ1: a file
    /// of the previous key, after a rotation, was kept); the store when `store_holds` says so
    /// (review AP1F: junk or another key's artifact there, never looked up by this executor,
    /// kept the code from being written), asked within `REMOTE_ANSWER_WAIT` (an ask that stalled
    /// held the call 30 s, review AM1F), not at all while lookups skip it.
    pub async fn save_missing(&self, digest: &Digest, engine: &Engine, code: &Code, facts: Facts) -> Result<(), ExecError> {
        self.save_missing_as(digest, engine, code, facts, false).await
    }

    /// `save_missing`, its seal `urgent` or not (`artifact_sealing`).
    async fn save_missing_as(&self, digest: &Digest, engine: &Engine, code: &Code, facts: Facts, urgent: bool) -> Result<(), ExecError> {
        let Some(key) = self.key.clone().filter(|_| self.is_enabled()) else { return Ok(()) };
        let name = self.name(digest, engine);
        let asks_store = self.remote.is_some() && !self.remote_state.skipping();
        if self.dir.is_none() && !asks_store {
            return Ok(());
        }
        let (len, trailer, sealed) = match crate::artifact_trailers::noted(&key, &name) {
            Some((len, trailer)) => (len, trailer, None),
            None => {
                let Some((_, bytes)) = self.sealed(digest, engine, code, facts, urgent).await? else { return Ok(()) };
                (bytes.len() as u64, trailer_of(&bytes).try_into().map_err(ExecError::internal)?, Some(bytes))
            }
        };
        let dir_lacks = match &self.dir {
            Some(dir) => {
                let path = dir.join(&name);
                !tokio::task::spawn_blocking(move || ends_in(&path, len, &trailer)).await.unwrap_or(false)
            }
            None => false,
        };
        let store_lacks = match &self.remote {
            Some(remote) if asks_store => match self.store_holds(remote, &name, len, &trailer).await {
                Some(held) => !held,
                None => {
                    self.remote_state.stalls();
                    false
                }
            },
            _ => false,
        };
        if !dir_lacks && !store_lacks {
            return Ok(());
        }
        let sealed = match sealed {
            Some(sealed) => sealed,
            None => match self.sealed(digest, engine, code, facts, urgent).await? {
                Some((_, sealed)) => sealed,
                None => return Ok(()),
            },
        };
        self.write_sealed(name, sealed, false).await
    }

    /// `save_missing` off the call's path, for code a call did not compile (taken from another
    /// executor, a tier-up's): the directory's part counted among the writes `close()` waits
    /// for (none begins after it), the store's not (bounded by the store's own waits).
    pub fn save_missing_later(&self, digest: Digest, engine: &'static Engine, module: Arc<crate::compiled_module::CompiledModule>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        if !self.is_enabled() {
            return;
        }
        if let Some(begun) = self.dir.as_ref().and_then(|_| self.dir_writes.begin()) {
            let dir = ArtifactCache { remote: None, ..self.clone() };
            let module = module.clone();
            drop(runtime.spawn(async move {
                let (code, facts) = (&module.code, module.facts());
                // Once `close()` waits for it, its seal is urgent (review AR1F: close() waited
                // 3.9 s behind 32 other executors' background seals).
                tokio::select! {
                    _ = dir.save_missing_as(&digest, engine, code, facts, false) => {}
                    _ = begun.closed() => {
                        let _ = dir.save_missing_as(&digest, engine, code, facts, true).await;
                    }
                }
                drop(begun);
            }));
        }
        if self.remote.is_some() {
            let store = ArtifactCache { dir: None, ..self.clone() };
            drop(runtime.spawn(async move {
                let _ = store.save_missing(&digest, engine, &module.code, module.facts()).await;
            }));
        }
    }

    /// Writes the artifact to the tiers that lack it, waiting for the store's write
    /// (`precompile`, whose process may exit next): an error if a tier cannot take it
    /// (`BLOB_UNAVAILABLE`), or if none holds it after (`INVALID_ARGUMENT`: a `cacheDir` alone,
    /// whose bound is under the artifact; an artifact larger than any lookup reads). `dir`
    /// holds it when its file is the artifact byte for byte, the store when its object has the
    /// artifact's size and trailer (`store_holds`; review AO1F: a directory planted under the
    /// name passed for the artifact, and the next process compiled again).
    pub async fn save_missing_now(&self, digest: &Digest, engine: &Engine, code: &Code, facts: Facts) -> Result<(), ExecError> {
        let Some((name, sealed)) = self.sealed(digest, engine, code, facts, true).await? else { return Ok(()) };
        let len = sealed.len() as u64;
        // A compile of this executor's (or another's, of the same key) is writing it to this
        // store already: its outcome is this one's (it was written twice, and a store slow to
        // answer failed a precompile whose write landed: review AMF2).
        let trailer: crate::artifact_trailers::Trailer = trailer_of(&sealed).try_into().map_err(ExecError::internal)?;
        let under_way = self.remote.as_ref().and_then(|remote| Some((remote, crate::artifact_puts::under_way(remote, &name, &trailer)?)));
        if let Some((remote, (landed, started))) = under_way {
            // Within this store's timeoutMs: another executor's may be longer.
            match crate::artifact_puts::outcome(remote, landed).await {
                Some(Ok(())) if self.dir.as_ref().is_none_or(|d| is_file_of(&d.join(&name), len)) => return Ok(()),
                // Not written again after a write that ran this store's timeoutMs: a second write
                // would wait as long again (review AN1: a store whose writes stalled held
                // precompile twice its timeoutMs, written twice). With the store's own words.
                // Counted from the write's start, not from when this joined it: joined late (its
                // seal took a while on a loaded machine), it wrote again.
                Some(Err(why)) if started.elapsed() >= remote.timeout() => {
                    return Err(ExecError::BlobUnavailable { path: name, message: format!("the artifact store did not take the artifact: {why}") })
                }
                // One that failed sooner may have been another executor's (other credentials,
                // or closed midway): this one writes (review AR1F: its precompile failed with
                // the other's error while its own write landed).
                Some(Err(_)) => {}
                None => {
                    return Err(ExecError::BlobUnavailable {
                        path: name,
                        message: format!("the artifact store did not take the artifact within {} ms", remote.timeout().as_millis()),
                    })
                }
                _ => {}
            }
        }
        let in_remote = match &self.remote {
            Some(remote) => match self.store_holds(remote, &name, len, trailer_of(&sealed)).await {
                Some(held) => held,
                None => {
                    return Err(ExecError::BlobUnavailable {
                        path: name,
                        message: format!("the artifact store did not answer within {} ms", self.answer_wait().as_millis()),
                    })
                }
            },
            None => true,
        };
        // The directory holds these very bytes (an artifact of another key, after a rotation,
        // has the same size: review AP1).
        let (sealed, in_dir) = match self.dir.as_ref().map(|d| d.join(&name)) {
            Some(path) => tokio::task::spawn_blocking(move || {
                let held = holds(&path, &sealed);
                (sealed, held)
            })
            .await
            .map_err(ExecError::internal)?,
            None => (sealed, true),
        };
        if in_dir && in_remote {
            return Ok(());
        }
        // The store lacks it, whatever a lookup's refused read marked (review AP1: the mark made
        // this write a no-op, and precompile resolved with junk in the store).
        self.remote_state.take_unread(&name);
        self.write_sealed(name.clone(), sealed, true).await?;
        let dir_reads = Self::readable(&self.unchecked, len as usize);
        let stored = self.remote.is_some() && Self::readable(&self.remote_state.unchecked, len as usize);
        if stored || self.dir.as_ref().is_some_and(|d| dir_reads && is_file_of(&d.join(&name), len)) {
            return Ok(());
        }
        match &self.dir {
            // An artifact over the directory's whole bound is not written there: with no store, no
            // tier holds it, and the next process compiles again (noticed in review AN2: precompile
            // resolved).
            Some(dir) if dir_reads => Err(ExecError::InvalidArgument(format!(
                "the module's artifact is larger than maxCacheDirBytes ({} bytes): it was not written to {}",
                self.dir_bound(),
                dir.display()
            ))),
            _ => {
                let tiers = [self.dir.as_ref().map(|_| self.unchecked.max()), self.remote.as_ref().map(|_| self.remote_state.unchecked.max())];
                Err(ExecError::InvalidArgument(format!(
                    "the module's artifact ({len} bytes) is larger than the {} bytes a lookup may read before checking it: it was not written",
                    tiers.into_iter().flatten().max().unwrap_or_default()
                )))
            }
        }
    }
}

#[cfg(test)]
#[path = "artifacts_tests.rs"]
mod tests;
