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

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use sha2::{Digest as _, Sha256};
use wasmtime::{Engine, Module};

use crate::compiled_module::Facts;
use crate::modules::{Code, Compiled};

use crate::digest::{hex, same, ArtifactTag, Digest};
use crate::error::ExecError;
use crate::sealed_copy::{in_place, InPlace, SealedCopy};
use crate::store::ObjectSource;

/// The trailer's magic; `LOOMART2` artifacts (HMAC-SHA256 tags) read as invalid and are made again.
pub(crate) const MAGIC: &[u8; 8] = b"LOOMART4";
pub(crate) const TRAILER: usize = 1 + 32 + MAGIC.len();
/// The key file `cacheDir` gets when no `artifactKey` is given.
pub const KEY_FILE: &str = ".loom-artifact-key";
/// Shortest `artifactKey` accepted, in bytes.
pub const MIN_KEY_BYTES: usize = 32;

struct ShaHasher(Sha256);

impl Hasher for ShaHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    fn finish(&self) -> u64 {
        0
    }
}

/// A short, stable name for everything about an engine that changes compiled code.
pub fn fingerprint(engine: &Engine) -> String {
    let mut h = ShaHasher(Sha256::new());
    engine.precompile_compatibility_hash().hash(&mut h);
    h.write(env!("CARGO_PKG_VERSION").as_bytes());
    // What modules are rewritten into before compiling (see `instrument`).
    h.write(b"instrumentation 1");
    // Artifacts before the flag of state outside memory said nothing of it.
    h.write(b"state flag 1");
    // How artifacts are sealed: another format is another name, so two versions sharing a store
    // (a rolling deploy) never overwrite each other's artifacts as invalid.
    h.write(MAGIC);
    hex(&h.0.finalize())[..16].to_string()
}

fn tag(key: &[u8], name: &str, flags: u8, body: &[u8]) -> Digest {
    ArtifactTag::of(key, &[MAGIC, name.as_bytes(), &[flags], body])
}

/// Flags byte: bit 0, the module has a start function; bit 1, it is a component; bit 2, its
/// instructions change tables or drop segments (its state is not all in memory and globals);
/// bits 3-7, the bucket of its instances' metadata (`instance_metadata::bucket`; since
/// `LOOMART4`).
pub(crate) const HAS_START: u8 = 1;
pub(crate) const COMPONENT: u8 = 2;
pub(crate) const STATE_OUTSIDE_MEMORY: u8 = 4;
const INSTANCE_SHIFT: u8 = 3;

/// The facts an artifact's flags hold.
pub(crate) fn facts_of(flags: u8) -> Facts {
    Facts {
        has_start: flags & HAS_START != 0,
        state_in_memory: flags & STATE_OUTSIDE_MEMORY == 0,
        instance_bytes: crate::instance_metadata::charged(flags >> INSTANCE_SHIFT),
    }
}

/// The flags byte of `facts` (of a component if `component`).
pub(crate) fn flags_of(facts: Facts, component: bool) -> u8 {
    (if facts.has_start { HAS_START } else { 0 })
        | if component { COMPONENT } else { 0 }
        | if facts.state_in_memory { 0 } else { STATE_OUTSIDE_MEMORY }
        | crate::instance_metadata::bucket(facts.instance_bytes) << INSTANCE_SHIFT
}

/// Wraps serialized bytes with their flags and tag.
fn seal(key: &[u8], name: &str, mut bytes: Vec<u8>, flags: u8) -> Vec<u8> {
    let mac = tag(key, name, flags, &bytes);
    bytes.push(flags);
    bytes.extend_from_slice(&mac);
    bytes.extend_from_slice(MAGIC);
    bytes
}

/// The serialized bytes and their flags, if the tag holds.
fn unseal<'a>(key: &[u8], name: &str, bytes: &'a [u8]) -> Option<(&'a [u8], u8)> {
    let body_len = bytes.len().checked_sub(TRAILER)?;
    let (body, trailer) = bytes.split_at(body_len);
    let (flags, rest) = trailer.split_at(1);
    let (mac, magic) = rest.split_at(32);
    (magic == MAGIC && same(&tag(key, name, flags[0], body), mac)).then_some((body, flags[0]))
}

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
}

/// How long lookups skip an artifact store after it neither answered one nor sent a byte of it
/// for `REMOTE_ANSWER_WAIT`: a store that stalls costs a cold call the compile it would cost
/// without the store, not `loadTimeoutMs` on top (review AM1: 60 s for a call whose compile took
/// milliseconds). A store that sends a large artifact slowly is not skipped (a tenant's own
/// large module would otherwise turn the store off for everyone's: review AM1F).
pub const REMOTE_STALL_SKIP: std::time::Duration = std::time::Duration::from_secs(60);

/// The longest a store may go without answering a lookup or an ask (its response's head) or
/// sending a byte of its body, unless half of `loadTimeoutMs` is shorter: past it, it stalls.
pub const REMOTE_ANSWER_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Writes to the artifact store in flight for one executor, each holding its sealed artifact,
/// after the calls that compiled them went on; past it, a compile's artifact is not written to
/// the store (a later compile writes it). Per executor: one whose store stalls does not stop
/// another's writes (review AM1F).
const REMOTE_PUTS: usize = 4;

/// An executor's use of its artifact store, shared by the clones of its `ArtifactCache`.
#[derive(Clone)]
pub struct RemoteState {
    /// Until when lookups skip the store.
    stalled: Arc<std::sync::Mutex<Option<std::time::Instant>>>,
    /// Modules whose lookup ran out of time while the store was sending (a large artifact on a
    /// slow store), and until when their lookups skip it: the next calls of that module compile,
    /// others' still look (review AMF2: each cold call paid two lookups' time, every time).
    slow: Arc<std::sync::Mutex<HashMap<Digest, std::time::Instant>>>,
    puts: Arc<tokio::sync::Semaphore>,
    /// What this executor's lookups have received from the store, all together: a store is
    /// judged on that, not on each lookup's share of it (review AN2: six lookups sharing a
    /// 300 KB/s link each fell under the bound, and a working store was turned off).
    received: Arc<std::sync::atomic::AtomicU64>,
    /// The background writes under way, by artifact name: whether each landed (or the store's
    /// error), once it ended (`precompile` waits for its module's rather than writing it again).
    writing: Arc<std::sync::Mutex<HashMap<String, tokio::sync::watch::Receiver<Option<Result<(), String>>>>>>,
    /// What this executor's lookups may hold before their artifacts' tags are checked: its own
    /// (review AO1: with one budget for the process, a store that held it made every other
    /// executor's `cacheDir` loads compile instead; planting junk under this executor's names,
    /// which its store's writer can do anyway, costs what holding this costs).
    unchecked: crate::unchecked_artifacts::UncheckedBytes,
    /// What all executors' lookups may hold together (`unchecked_artifacts::store_reads`), and
    /// this executor counted among them (by `open`, with a store).
    all_stores: crate::unchecked_artifacts::UncheckedBytes,
    sharing: Option<Arc<crate::unchecked_artifacts::Registered>>,
    /// Artifacts the store has (it answered) that a lookup did not read, for want of room: the
    /// compile that follows does not write them again (review AO1: each refused read cost the
    /// store a second upload of what it held).
    unread: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    /// Artifacts whose lookup found no valid tag: the store lacks them, whatever it says it has
    /// (review AP1: after a key rotation, precompile and code taken from another executor took
    /// the old key's artifact, of the same size, for it, and wrote nothing).
    forged: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

impl Default for RemoteState {
    fn default() -> Self {
        RemoteState {
            stalled: Default::default(),
            slow: Default::default(),
            puts: Arc::new(tokio::sync::Semaphore::new(REMOTE_PUTS)),
            received: Default::default(),
            writing: Default::default(),
            unchecked: crate::unchecked_artifacts::UncheckedBytes::with_max(crate::unchecked_artifacts::MAX_UNCHECKED_BYTES),
            all_stores: crate::unchecked_artifacts::store_reads().clone(),
            sharing: None,
            unread: Default::default(),
            forged: Default::default(),
        }
    }
}

/// Modules remembered as slow to look up, at most (past it, the oldest marks go).
const MAX_SLOW: usize = 256;
/// Bytes a second below which a store counts as stalled, over each `answer_wait` of a lookup,
/// all of the executor's lookups together (review AN1: a byte every few seconds kept a store
/// "sending"): at this pace a 4 MiB artifact takes a minute.
const MIN_SENDING_RATE: u64 = 64 * 1024;

impl RemoteState {
    fn skipping(&self) -> bool {
        self.stalled.lock().unwrap_or_else(|p| p.into_inner()).is_some_and(|until| std::time::Instant::now() < until)
    }

    fn stalls(&self) {
        *self.stalled.lock().unwrap_or_else(|p| p.into_inner()) = Some(std::time::Instant::now() + REMOTE_STALL_SKIP);
    }

    fn skipping_module(&self, digest: &Digest) -> bool {
        let now = std::time::Instant::now();
        let mut slow = self.slow.lock().unwrap_or_else(|p| p.into_inner());
        slow.retain(|_, until| *until > now);
        slow.contains_key(digest)
    }

    fn slow_module(&self, digest: &Digest) {
        let mut slow = self.slow.lock().unwrap_or_else(|p| p.into_inner());
        if slow.len() >= MAX_SLOW {
            if let Some(oldest) = slow.iter().min_by_key(|(_, until)| **until).map(|(d, _)| *d) {
                slow.remove(&oldest);
            }
        }
        slow.insert(*digest, std::time::Instant::now() + REMOTE_STALL_SKIP);
    }

    fn unread(&self, name: &str) {
        mark(&self.unread, name);
    }

    /// Whether the store has this artifact unread (and so needs no write of it), forgotten now.
    fn take_unread(&self, name: &str) -> bool {
        take_mark(&self.unread, name)
    }

    fn forged(&self, name: &str) {
        mark(&self.forged, name);
    }

    /// Whether a lookup found what the store has under this name no artifact (forged, or of
    /// another key), forgotten now.
    fn take_forged(&self, name: &str) -> bool {
        take_mark(&self.forged, name)
    }
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

    /// The artifact `name` from the store, its lookup given up at `until` at the latest.
    async fn from_store(&self, digest: &Digest, engine: &Engine, key: Arc<[u8]>, name: String, until: tokio::time::Instant) -> Option<(Compiled, Checked)> {
        let remote = self.remote.as_ref()?;
        // Bounded: a planted giant (a sparse file in a file:// store) is no artifact; and its
        // body is read only if this executor's unchecked bytes have room for it, and the
        // process's for all stores.
        let progress = crate::store::Progress::default();
        let (unchecked, all_stores) = (self.remote_state.unchecked.clone(), self.remote_state.all_stores.clone());
        // The size asked for (a `file://` store's is not in `progress`: review AO2).
        let asked = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let asking = asked.clone();
        let admit = move |n| {
            asking.store(n, std::sync::atomic::Ordering::Release);
            let mine = unchecked.take(n)?;
            // Within this executor's share of what all hold (taken first: it counts this read).
            if unchecked.held() > all_stores.share() {
                return None;
            }
            Some((mine, all_stores.take(n)?))
        };
        let bounds = crate::store::Bounds { max_bytes: crate::sealed_copy::MAX_ARTIFACT_BYTES, max_holes: Some(crate::sealed_copy::MAX_ARTIFACT_HOLES) };
        let get = remote.get_admitted(&name, bounds, &progress, admit);
        let store_received = self.remote_state.received.clone();
        let started = tokio::time::Instant::now();
        let wait = self.answer_wait();
        let answer = async {
            // A store that neither answers nor sends `MIN_SENDING_RATE` for `wait` has all but
            // stopped; one that is sending takes until `until` (review AM1F: a store whose bodies
            // stalled held every cold call twice loadTimeoutMs, 120 s by default; review AN1F: one
            // that sent fast, then a byte every few seconds, passed for sending).
            use std::sync::atomic::Ordering;
            tokio::pin!(get);
            // This lookup's bytes told to the executor's count so far; that count at the window's start.
            let (mut told, mut since) = (0, started);
            let mut seen = store_received.load(Ordering::Acquire);
            loop {
                let tick = (tokio::time::Instant::now() + wait / 4).min(until);
                tokio::select! {
                    got = &mut get => {
                        store_received.fetch_add(progress.received.load(Ordering::Acquire) - told, Ordering::AcqRel);
                        return Ok(got);
                    }
                    () = tokio::time::sleep_until(tick) => {}
                }
                let mine = progress.received.load(Ordering::Acquire);
                store_received.fetch_add(mine - told, Ordering::AcqRel);
                told = mine;
                let now = tokio::time::Instant::now();
                let out_of_time = now >= until;
                // Each `wait`, and the last part of one when the time is up (a part too short to
                // judge a store sending in large parts is not judged).
                if now >= since + wait || (out_of_time && now >= since + wait / 4) {
                    let total = store_received.load(Ordering::Acquire);
                    let sent = total.saturating_sub(seen);
                    if (sent as f64) < MIN_SENDING_RATE as f64 * (now - since).as_secs_f64() {
                        return Err(true);
                    }
                    (seen, since) = (total, now);
                    // At the pace this lookup has had, its artifact cannot all come in time: given
                    // up on now, as a large artifact, not at the deadline (review AN2: a store
                    // sending just over the bound held every new module's cold call loadTimeoutMs).
                    let size = progress.size.load(Ordering::Acquire);
                    let pace = mine as f64 / (now - started).as_secs_f64().max(f64::EPSILON);
                    if size > mine && pace > 0.0 && (size - mine) as f64 / pace > (until - now).as_secs_f64() {
                        return Err(false);
                    }
                }
                if out_of_time {
                    return Err(false);
                }
            }
        };
        let (bytes, admitted) = match answer.await {
            Ok(Ok(Some(read))) => read,
            // No room to read it now: compiled, the store not judged for it, nor written again
            // if room would come (review AO1F: marked whatever its size, an object larger than
            // the whole budget, planted once, kept the compiles from ever writing the artifact).
            Ok(Ok(None)) => {
                if asked.load(std::sync::atomic::Ordering::Acquire) <= self.remote_state.unchecked.max() {
                    self.remote_state.unread(&name);
                }
                return None;
            }
            // Not there (or too large to be an artifact): compiled.
            Ok(Err(ExecError::BlobNotFound { .. } | ExecError::CompileLimit(_))) => return None,
            // A store that fails (500s, each retried by the client: a second of every cold call,
            // review AMF2) is skipped as one that stalls.
            Ok(Err(_)) | Err(true) => {
                self.remote_state.stalls();
                return None;
            }
            // Out of time while the store kept sending: a large artifact (that module's lookups
            // skip the store for a while).
            Err(false) => {
                self.remote_state.slow_module(digest);
                return None;
            }
        };
        // Taken over without a copy where the download is the bytes' only owner.
        let Some((c, checked)) = deserialize(engine, key, name.clone(), Vec::from(bytes)).await else {
            self.remote_state.forged(&name);
            return None;
        };
        drop(admitted);
        if let Some(dir) = &self.dir {
            // The bytes just checked: no second copy of the download.
            let _ = self.write_to_dir(dir, name, checked.clone()).await;
        }
        Some((c, Checked::Bytes(checked)))
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
        match self.sealed(digest, engine, code, facts).await? {
            Some((name, sealed)) => self.write_sealed(name, sealed, wait).await,
            None => Ok(()),
        }
    }

    /// The artifact of `code` under its name, sealed with the key (none: the cache is off).
    async fn sealed(&self, digest: &Digest, engine: &Engine, code: &Code, facts: Facts) -> Result<Option<(String, Vec<u8>)>, ExecError> {
        let Some(key) = self.key.clone().filter(|_| self.is_enabled()) else { return Ok(None) };
        let name = self.name(digest, engine);
        let flags = flags_of(facts, code.is_component());
        let body = code.serialize().map_err(ExecError::internal)?;
        let n = name.clone();
        let sealed = tokio::task::spawn_blocking(move || seal(&key, &n, body, flags)).await.map_err(ExecError::internal)?;
        Ok(Some((name, sealed)))
    }

    /// Whether a lookup of this tier could ever read an artifact of `len` bytes: one larger
    /// than the most its reads may hold unchecked (`unchecked_artifacts`) is never loaded, so
    /// not written (review AO1: every compile uploaded such an artifact again).
    fn readable(budget: &crate::unchecked_artifacts::UncheckedBytes, len: usize) -> bool {
        len as u64 <= budget.max()
    }

    /// Writes a sealed artifact to the tiers (the store's write in the background unless `wait`).
    async fn write_sealed(&self, name: String, sealed: Vec<u8>, wait: bool) -> Result<(), ExecError> {
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
        match background {
            Some(runtime) => {
                if let Ok(permit) = self.remote_state.puts.clone().try_acquire_owned() {
                    let (landed, watch) = tokio::sync::watch::channel(None);
                    let writing = self.remote_state.writing.clone();
                    writing.lock().unwrap_or_else(|p| p.into_inner()).insert(name.clone(), watch);
                    drop(runtime.spawn(async move {
                        let put = remote.put(&name, Bytes::from(sealed)).await;
                        writing.lock().unwrap_or_else(|p| p.into_inner()).remove(&name);
                        let _ = landed.send(Some(put.map_err(|e| e.to_string())));
                        drop(permit);
                    }));
                }
            }
            None => remote.put(&name, Bytes::from(sealed)).await?,
        }
        in_dir
    }

    /// `save`, for code this executor did not make (taken from another executor: `shared_code`):
    /// written to both tiers if either lacks its artifact. The directory lacks it when nothing is
    /// under its name; the store when it does not hold these very bytes as far as `store_holds`
    /// can tell (review AP1F: junk or another key's artifact there, never looked up by this
    /// executor, kept the code from being written), asked within `REMOTE_ANSWER_WAIT` (an ask
    /// that stalled held the call 30 s, review AM1F), not at all while lookups skip the store.
    pub async fn save_missing(&self, digest: &Digest, engine: &Engine, code: &Code, facts: Facts) -> Result<(), ExecError> {
        if !self.is_enabled() {
            return Ok(());
        }
        let name = self.name(digest, engine);
        let dir_lacks = self.dir.as_ref().is_some_and(|d| !d.join(&name).exists());
        let store_may_lack = self.remote.is_some() && !self.remote_state.skipping();
        if !dir_lacks && !store_may_lack {
            return Ok(());
        }
        let Some((name, sealed)) = self.sealed(digest, engine, code, facts).await? else { return Ok(()) };
        let store_lacks = match &self.remote {
            Some(remote) if store_may_lack => match self.store_holds(remote, &name, &sealed).await {
                Some(held) => !held,
                None => {
                    self.remote_state.stalls();
                    false
                }
            },
            _ => false,
        };
        match dir_lacks || store_lacks {
            true => self.write_sealed(name, sealed, false).await,
            false => Ok(()),
        }
    }

    /// Whether the store holds the sealed artifact `sealed`, as far as asking tells without
    /// reading it: no lookup of this executor found its object forged, and the object has the
    /// artifact's size and ends in its trailer (flags, tag, magic: review AP1F, an artifact of the
    /// previous key, after a rotation, has the same size and another tag), read alone. None: the
    /// store did not answer within `answer_wait`. A store that answers with an error lacks it.
    async fn store_holds(&self, remote: &ObjectSource, name: &str, sealed: &[u8]) -> Option<bool> {
        if self.remote_state.take_forged(name) {
            return Some(false);
        }
        let len = sealed.len() as u64;
        let trailer = &sealed[sealed.len().saturating_sub(TRAILER)..];
        let ask = async {
            match remote.size(name).await? {
                Some(size) if size == len => Ok(remote.tail(name, len, trailer.len()).await?.is_some_and(|tail| tail == trailer)),
                _ => Ok::<bool, ExecError>(false),
            }
        };
        match tokio::time::timeout(self.answer_wait(), ask).await {
            Ok(held) => Some(held.unwrap_or(false)),
            Err(_) => None,
        }
    }

    /// The longest the store may take to answer or go without sending: `REMOTE_ANSWER_WAIT`, or
    /// half of `loadTimeoutMs` if shorter.
    fn answer_wait(&self) -> std::time::Duration {
        self.fetch_timeout.map_or(REMOTE_ANSWER_WAIT, |t| (t / 2).min(REMOTE_ANSWER_WAIT))
    }

    /// Writes the artifact to the tiers that lack it, waiting for the store's write
    /// (`precompile`, whose process may exit next): an error if a tier cannot take it
    /// (`BLOB_UNAVAILABLE`), or if none holds it after (`INVALID_ARGUMENT`: a `cacheDir` alone,
    /// whose bound is under the artifact; an artifact larger than any lookup reads). `dir`
    /// holds it when its file is the artifact byte for byte, the store when its object has the
    /// artifact's size and trailer (`store_holds`; review AO1F: a directory planted under the
    /// name passed for the artifact, and the next process compiled again).
    pub async fn save_missing_now(&self, digest: &Digest, engine: &Engine, code: &Code, facts: Facts) -> Result<(), ExecError> {
        let Some((name, sealed)) = self.sealed(digest, engine, code, facts).await? else { return Ok(()) };
        let len = sealed.len() as u64;
        // This executor's compile is writing it already: its outcome is this one's (it was
        // written twice, and a store slow to answer failed a precompile whose write landed:
        // review AMF2).
        let under_way = self.remote_state.writing.lock().unwrap_or_else(|p| p.into_inner()).get(&name).cloned();
        if let Some(mut landed) = under_way {
            let outcome = landed.wait_for(Option::is_some).await.map(|o| o.clone()).ok().flatten();
            match outcome {
                Some(Ok(())) if self.dir.as_ref().is_none_or(|d| is_file_of(&d.join(&name), len)) => return Ok(()),
                // Not written again: a second write would wait as long again (review AN1: a
                // store whose writes stalled held precompile twice its timeoutMs, written twice).
                // With the store's own words (they were lost: noticed in review AN1).
                Some(Err(why)) => {
                    return Err(ExecError::BlobUnavailable { path: name, message: format!("the artifact store did not take the artifact: {why}") })
                }
                _ => {}
            }
        }
        let in_remote = match &self.remote {
            Some(remote) => match self.store_holds(remote, &name, &sealed).await {
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

/// Adds `name` to a set of marked artifact names (at most `MAX_SLOW` of them: past that the set
/// starts over, and a mark forgotten costs a write or a lookup at most).
fn mark(set: &std::sync::Mutex<std::collections::HashSet<String>>, name: &str) {
    let mut set = set.lock().unwrap_or_else(|p| p.into_inner());
    if set.len() >= MAX_SLOW {
        set.clear();
    }
    set.insert(name.to_string());
}

/// Whether `name` was marked in the set, forgotten now.
fn take_mark(set: &std::sync::Mutex<std::collections::HashSet<String>>, name: &str) -> bool {
    set.lock().unwrap_or_else(|p| p.into_inner()).remove(name)
}

/// Whether `path` is a regular file (not a link) of `len` bytes.
fn is_file_of(path: &Path, len: u64) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.is_file() && m.len() == len)
}

/// Whether the regular file at `path` (no link followed, no FIFO waited on) holds exactly `bytes`.
fn holds(path: &Path, bytes: &[u8]) -> bool {
    use std::io::Read;
    let Ok(file) = crate::untrusted_dir::open_regular(path, std::fs::OpenOptions::new().read(true)) else { return false };
    if !file.metadata().is_ok_and(|m| m.is_file() && m.len() == bytes.len() as u64) {
        return false;
    }
    let mut there = Vec::with_capacity(bytes.len());
    file.take(bytes.len() as u64 + 1).read_to_end(&mut there).is_ok() && there == bytes
}

/// Creates `dir` (0700) if missing; refuses one that anybody may write to.
fn secure_dir(dir: &Path) -> Result<(), ExecError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let bad = |why: String| ExecError::InvalidArgument(format!("options.cacheDir {}: {why}", dir.display()));
    if !dir.exists() {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|e| bad(e.to_string()))?;
    }
    let meta = std::fs::metadata(dir).map_err(|e| bad(e.to_string()))?;
    if !meta.is_dir() {
        return Err(bad("not a directory".into()));
    }
    if meta.mode() & 0o002 != 0 {
        return Err(bad("is world-writable: anyone could plant compiled code there (use a private directory)".into()));
    }
    Ok(())
}

/// The directory's key: read from its key file (which only its owner may read), or created.
fn dir_key(dir: &Path) -> Result<Vec<u8>, ExecError> {
    use std::io::Write;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let path = dir.join(KEY_FILE);
    let bad = |why: String| ExecError::InvalidArgument(format!("options.cacheDir key file {}: {why}", path.display()));
    match std::fs::symlink_metadata(&path) {
        Ok(_) => {
            use std::io::Read;
            let plain = |why: String| bad(format!("must be a plain file only its owner (this process's user) can read and write (mode 0600): {why}"));
            // Checked on the file opened (no link followed, no FIFO waited on), not on the name:
            // a swap in between cannot get through, nor a key file of another user's making.
            let file = crate::untrusted_dir::open_regular(&path, std::fs::OpenOptions::new().read(true)).map_err(|e| plain(e.to_string()))?;
            let meta = file.metadata().map_err(|e| bad(e.to_string()))?;
            // SAFETY: geteuid has no preconditions.
            if meta.mode() & 0o077 != 0 || meta.uid() != unsafe { libc::geteuid() } {
                return Err(plain(format!("mode {:o}, owner {}", meta.mode() & 0o7777, meta.uid())));
            }
            let mut key = Vec::new();
            file.take(1 << 16).read_to_end(&mut key).map_err(|e| bad(e.to_string()))?;
            if key.len() < MIN_KEY_BYTES {
                return Err(bad(format!("holds {} bytes, fewer than {MIN_KEY_BYTES}", key.len())));
            }
            Ok(key)
        }
        Err(_) => {
            let mut key = vec![0u8; 32];
            getrandom::fill(&mut key).map_err(|e| bad(format!("no randomness for a key: {e}")))?;
            // A name no other writer uses: threads of one process (workers) share its pid, and a
            // process killed here leaves its file behind for the next one of that pid (a
            // container's Node is often pid 1 every time).
            let (tmp, mut f) = loop {
                let mut nonce = [0u8; 8];
                getrandom::fill(&mut nonce).map_err(|e| bad(format!("no randomness for a name: {e}")))?;
                let tmp = dir.join(format!("{KEY_FILE}.{}.{:016x}.tmp", std::process::id(), u64::from_le_bytes(nonce)));
                match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp) {
                    Ok(f) => break (tmp, f),
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                    Err(e) => return Err(bad(e.to_string())),
                }
            };
            f.write_all(&key).map_err(|e| bad(e.to_string()))?;
            drop(f);
            // Two processes racing: the first link wins and both read what it wrote. Any other
            // failure (a filesystem without hard links) is reported: read again, it would fail
            // the same way, without end.
            if let Err(e) = std::fs::hard_link(&tmp, &path) {
                let _ = std::fs::remove_file(&tmp);
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    return dir_key(dir);
                }
                return Err(bad(format!("cannot create it: {e}")));
            }
            let _ = std::fs::remove_file(&tmp);
            Ok(key)
        }
    }
}

/// An artifact as it was checked when loaded: another engine of its fingerprint (the pooled
/// engine, for code first loaded on its unpooled twin: `unpooled_first`) loads it from here
/// without reading, downloading or checking it again.
#[derive(Clone)]
pub(crate) enum Checked {
    /// Its sealed in-memory copy (an artifact file).
    Sealed(SealedCopy),
    /// Its authenticated bytes (downloaded from the shared store, or read where no sealed copy
    /// can be made): only this process holds them, and nothing writes to them.
    Bytes(Arc<CheckedBytes>),
}

pub(crate) struct CheckedBytes {
    /// The whole artifact, trailer included; the tag over it held.
    sealed: Vec<u8>,
    flags: u8,
}

impl AsRef<[u8]> for CheckedBytes {
    /// The whole artifact as it was checked.
    fn as_ref(&self) -> &[u8] {
        &self.sealed
    }
}

impl CheckedBytes {
    /// Checks `sealed` (an artifact named `name`); None if its tag does not hold.
    fn check(key: &[u8], name: &str, sealed: Vec<u8>) -> Option<CheckedBytes> {
        let (_, flags) = unseal(key, name, &sealed)?;
        Some(CheckedBytes { sealed, flags })
    }

    fn facts(&self) -> Facts {
        facts_of(self.flags)
    }

    /// The code, for `engine`; None if wasmtime refuses it (another fingerprint, say).
    fn load(&self, engine: &Engine) -> Option<Compiled> {
        let body = &self.sealed[..self.sealed.len() - TRAILER];
        // SAFETY: `body` is byte for byte what `Module::serialize` (or `Component::serialize`)
        // produced in a process holding this executor's artifact key, for an engine with this
        // fingerprint, for the module with this digest (the tag over all three held in `check`,
        // and nothing has written to these bytes since); wasmtime checks its own version and
        // settings header again.
        if self.flags & COMPONENT != 0 {
            unsafe { wasmtime::component::Component::deserialize(engine, body) }.ok().map(Compiled::Component)
        } else {
            unsafe { Module::deserialize(engine, body) }.ok().map(Compiled::Core)
        }
    }
}

impl Checked {
    pub(crate) fn facts(&self) -> Facts {
        match self {
            Checked::Sealed(copy) => copy.facts(),
            Checked::Bytes(bytes) => bytes.facts(),
        }
    }

    /// The code, for `engine` (blocking: a copy or a mapping of the whole artifact).
    pub(crate) fn load(&self, engine: &Engine) -> Option<Compiled> {
        match self {
            Checked::Sealed(copy) => copy.load(engine),
            Checked::Bytes(bytes) => bytes.load(engine),
        }
    }
}

/// An artifact file's bytes, for the plain path: a regular file (not followed through a link,
/// not a FIFO that blocks) of at most `MAX_ARTIFACT_BYTES`, read if `unchecked` has room for it
/// (held until its tag is checked).
async fn read_bounded(path: PathBuf, unchecked: crate::unchecked_artifacts::UncheckedBytes) -> Option<(Vec<u8>, crate::unchecked_artifacts::Admitted)> {
    use std::io::Read;
    tokio::task::spawn_blocking(move || {
        let file = crate::untrusted_dir::open_regular(&path, std::fs::OpenOptions::new().read(true)).ok()?;
        let meta = file.metadata().ok()?;
        let len = meta.len();
        if !crate::sealed_copy::one_name(&meta) || len > crate::sealed_copy::MAX_ARTIFACT_BYTES || crate::untrusted_dir::holes_over(&file, len, crate::sealed_copy::MAX_ARTIFACT_HOLES) {
            return None;
        }
        let admitted = unchecked.take(len)?;
        let mut bytes = Vec::new();
        // No more than was admitted, if it grew meanwhile (cut short, its tag fails).
        file.take(len).read_to_end(&mut bytes).ok()?;
        Some((bytes, admitted))
    })
    .await
    .ok()
    .flatten()
}

/// Checks an artifact's bytes and loads them for `engine`, keeping them for another engine.
async fn deserialize(engine: &Engine, key: Arc<[u8]>, name: String, bytes: Vec<u8>) -> Option<(Compiled, Arc<CheckedBytes>)> {
    let engine = engine.clone();
    tokio::task::spawn_blocking(move || {
        let checked = CheckedBytes::check(&key, &name, bytes)?;
        let compiled = checked.load(&engine)?;
        Some((compiled, Arc::new(checked)))
    })
    .await
    .ok()
    .flatten()
}

/// Writes a file whole or not at all: a temporary file in the same directory, then a rename.
pub(crate) async fn write_atomic(dir: PathBuf, name: String, bytes: Arc<dyn AsRef<[u8]> + Send + Sync>) -> Result<(), ExecError> {
    let target = dir.join(&name).display().to_string();
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        // Unique per write: two saves of one artifact in a process (a tier-up's and a
        // `precompile`'s) would otherwise write the same file at once.
        static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = dir.join(format!(".{name}.{}.{n}.tmp", std::process::id()));
        // Writable by its owner alone whatever the umask: what `in_place` requires.
        // Created anew: a link planted under the name (the directory may be writable by its
        // group) is removed, not written through.
        let mut f = crate::untrusted_dir::create_fresh(&tmp, 0o644)?;
        f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
        let written = f.write_all((*bytes).as_ref()).and_then(|()| {
            drop(f);
            std::fs::rename(&tmp, dir.join(&name))
        });
        // Not left behind when the name cannot be taken (a directory planted under it, a full disk).
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written
    })
    .await
    .map_err(ExecError::internal)?
    // Not the executor's fault: the directory was removed, filled or made unwritable under it.
    .map_err(|e| ExecError::BlobUnavailable { path: target, message: format!("cannot write the compiled artifact to cacheDir: {e}") })
}

#[cfg(test)]
#[path = "artifacts_tests.rs"]
mod tests;
