//! Where durable actors keep their snapshots (`options.actorStore`), with the one operation that
//! makes ownership work: a conditional write. A worker saves an actor's next snapshot only if the
//! stored one is still the version it loaded (or, for a new actor, only if there is none), so two
//! workers can never both advance one actor: the loser gets `ACTOR_CONFLICT` and reloads.
//!
//! - object stores (`memory://`, `az://`, `gs://`, `s3://` with `conditional_put`): object_store's
//!   `PutMode::Create` / `PutMode::Update` with the ETag or version read at load;
//! - `file://`: object_store's local store cannot update conditionally, so `file_actor_store`
//!   writes its own files, each with a version in its header, under a lock.
//!
//! A write whose answer was lost may still have landed: object_store retries a `PUT` after a 5xx
//! or a timeout, and the retry then fails its condition on our own write. So each object write
//! carries an id in the object's metadata, with the ids of the writes before it; a failed write
//! reads the object's metadata back and counts as done if its id is there (the call then returns
//! its result instead of a spurious `ACTOR_CONFLICT` whose step was stored all the same).
//!
//! A store that cannot do conditional writes is refused: `http(s)://` (read-only), `s3://` without
//! `conditional_put`, and any store whose endpoint accepts a create-only write twice (checked
//! once, on first use: s3rver does, for one).

use std::sync::Arc;

use object_store::{Attribute, Attributes, GetOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use tokio::sync::OnceCell;

use crate::digest::{hex, sha256};
use crate::error::ExecError;
use crate::modules::DefKey;
use crate::store::{BoxFuture, ObjectSource};

/// The version of a stored snapshot, as the store identifies it (`e_tag`, `version`), with the
/// ids of the writes that made it, newest first, where the store keeps them (object stores).
#[derive(Debug, Clone, Default)]
pub struct Version {
    pub e_tag: Option<String>,
    pub version: Option<String>,
    pub writes: Vec<String>,
}

/// Two versions are the same stored object whatever the write ids read with them.
impl PartialEq for Version {
    fn eq(&self, other: &Version) -> bool {
        (&self.e_tag, &self.version) == (&other.e_tag, &other.version)
    }
}
impl Eq for Version {}

/// What a save did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Saved {
    /// Stored; this is the stored version now.
    Current(Version),
    /// Stored, but another worker has already stored a newer state on top of it (the write's
    /// answer was lost, and by the time it was checked the actor had moved on): the call
    /// counts, and the actor's state here is stale (reloaded on its next call).
    Superseded,
}

impl Saved {
    /// The stored version, if it is still the newest.
    pub fn current(self) -> Option<Version> {
        match self {
            Saved::Current(v) => Some(v),
            Saved::Superseded => None,
        }
    }
}

/// The metadata entry holding an object's write ids (lowercase letters only: Azure wants an
/// identifier, S3 lowercases names).
const WRITES: &str = "loomwrites";
/// How many write ids an object keeps: a lost answer is recognised as long as fewer other
/// writes have landed on top of it by the time it is checked.
const KEPT_WRITES: usize = 16;

/// The snapshot bytes an executor's loads from its actor store may hold at once while they are
/// read and checked: its `maxActorMemoryMB`, the memory its live actors may hold together (review
/// BF2: whoever could write the store planted sparse files of the largest size a definition's
/// `maxMemoryMB` allows, valid headers and junk after them, and ten loads at once held 3.3 GiB
/// under a `maxActorMemoryMB` of 64 before each was refused). A load takes the size its object
/// states before it reads any of it, and waits while other loads hold the rest; one larger than
/// the whole waits for all others, then goes alone.
#[derive(Clone, Default)]
pub struct Loading(Option<(Arc<tokio::sync::Semaphore>, u32)>);

/// `Loading` counts in units of this many bytes (a semaphore's permits are counted in `u32`).
const LOADING_UNIT: u64 = 64 << 10;

impl Loading {
    /// A gate of `max_bytes`.
    pub fn new(max_bytes: u64) -> Self {
        let units = (max_bytes / LOADING_UNIT).clamp(1, u32::MAX as u64 / 2) as u32;
        Loading(Some((Arc::new(tokio::sync::Semaphore::new(units as usize)), units)))
    }

    /// Room for a load of `bytes`, held until the result is dropped (none for an ungated store).
    pub async fn admit(&self, bytes: u64) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let (slots, units) = self.0.as_ref()?;
        let n = bytes.div_ceil(LOADING_UNIT).min(*units as u64) as u32;
        slots.clone().acquire_many_owned(n).await.ok()
    }

    /// Room for `bytes` now, or `None` if it has not that much free (`Some(None)`: ungated).
    pub fn try_admit(&self, bytes: u64) -> Option<Option<tokio::sync::OwnedSemaphorePermit>> {
        let Some((slots, units)) = self.0.as_ref() else { return Some(None) };
        let n = bytes.div_ceil(LOADING_UNIT).min(*units as u64) as u32;
        slots.clone().try_acquire_many_owned(n).ok().map(Some)
    }

    /// Bytes of its room not held now (tests).
    pub fn free(&self) -> u64 {
        self.0.as_ref().map_or(u64::MAX, |(s, _)| s.available_permits() as u64 * LOADING_UNIT)
    }
}

/// A load's room in its executor's `Loading`, to hold until its bytes are checked and kept or
/// dropped (review BG1: given back as the read ended, a load's 328 MiB then waited, outside the
/// gate, for its call's concurrency slot or its checksum, and eight loads held 2.7 GiB under a
/// `maxActorMemoryMB` of 64).
pub type Room = Option<tokio::sync::OwnedSemaphorePermit>;

/// A loaded snapshot: its bytes, their version, and the room they take.
pub type Loaded = (Vec<u8>, Version, Room);

pub trait ActorStore: Send + Sync {
    /// The stored snapshot and its version, if there is one; `SNAPSHOT_INVALID` without reading it
    /// if it is over `max_bytes` (what the actor's memory limit allows: `snapshot::max_encoded_len`).
    /// Its bytes are read only once `loading` has room for them.
    fn load_gated<'a>(&'a self, key: &'a str, max_bytes: u64, loading: &'a Loading) -> BoxFuture<'a, Result<Option<Loaded>, ExecError>>;
    /// `load_gated` without a gate.
    fn load<'a>(&'a self, key: &'a str, max_bytes: u64) -> BoxFuture<'a, Result<Option<(Vec<u8>, Version)>, ExecError>> {
        static NONE: Loading = Loading(None);
        Box::pin(async move { Ok(self.load_gated(key, max_bytes, &NONE).await?.map(|(bytes, version, _)| (bytes, version))) })
    }
    /// Stores `bytes` if the stored version is still `expected` (`None`: only if there is none).
    /// `ACTOR_CONFLICT` otherwise; what it did on success.
    fn save<'a>(&'a self, key: &'a str, bytes: Vec<u8>, expected: Option<&'a Version>) -> BoxFuture<'a, Result<Saved, ExecError>>;
    /// As `save`, for a write no call waits on (`persist: 'async'`): one whose answer was lost is
    /// read back once, not waited on while the store cannot be read (an outage held `close()`
    /// and the actor's line 30 s, with a read every half second per write: review AK's follow-up).
    fn save_unwaited<'a>(&'a self, key: &'a str, bytes: Vec<u8>, expected: Option<&'a Version>) -> BoxFuture<'a, Result<Saved, ExecError>> {
        self.save(key, bytes, expected)
    }
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), ExecError>>;
    /// Deletes the stored snapshot only if it is still `version` (a dropped actor's, whose first
    /// delete failed): true if none of that version is stored any more (deleted now, or gone),
    /// false if another is stored (another worker's since, which stays). This default compares,
    /// then deletes: a write landing between the two is lost (object stores have no conditional
    /// delete); the file store does both under the actor's lock.
    fn delete_if<'a>(&'a self, key: &'a str, version: &'a Version) -> BoxFuture<'a, Result<bool, ExecError>> {
        Box::pin(async move {
            match self.version(key).await? {
                None => Ok(true),
                Some(now) if now == *version => self.delete(key).await.map(|()| true),
                Some(_) => Ok(false),
            }
        })
    }
    /// The stored snapshot's version, if there is one, without reading the snapshot (what a
    /// restore writes over, whatever its size).
    fn version<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Version>, ExecError>>;
    /// Where it is, for messages.
    fn describe(&self) -> String;
    /// Resolves once no operation whose caller left goes on in this process (a write on a
    /// blocking thread runs to its end whoever waits for it): `close()` waits for it.
    fn settled(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// The store key of an actor: readable by activity name, unique by a digest of everything that
/// identifies it (a well-formed string of any length or content maps to a key every store takes).
pub fn actor_key(def: &DefKey, actor_id: &str) -> String {
    let readable: String =
        def.name.chars().take(48).map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
    let mut id = Vec::new();
    for part in [&def.name, &def.version, &def.path, &actor_id.to_string()] {
        id.extend_from_slice(&(part.len() as u64).to_le_bytes());
        id.extend_from_slice(part.as_bytes());
    }
    format!("actors/{}/{}.snap", if readable.is_empty() { "_" } else { &readable }, hex(&sha256(&id)))
}

pub(crate) fn conflict(key: &str, why: impl std::fmt::Display) -> ExecError {
    ExecError::ActorConflict(format!("{key}: {why}; another worker advanced this actor (its state here is dropped and reloaded on the next call)"))
}

/// A file version other than `current` and 0, from the OS's randomness.
pub(crate) fn fresh_version(current: Option<u64>) -> Result<u64, ExecError> {
    loop {
        let mut b = [0u8; 8];
        getrandom::fill(&mut b).map_err(ExecError::internal)?;
        let v = u64::from_le_bytes(b);
        if v != 0 && Some(v) != current {
            return Ok(v);
        }
    }
}

pub(crate) fn unavailable(key: &str, e: impl std::fmt::Display) -> ExecError {
    ExecError::BlobUnavailable { path: key.to_string(), message: e.to_string() }
}

pub(crate) fn too_large(key: &str, size: u64, max_bytes: u64) -> ExecError {
    ExecError::SnapshotInvalid(format!(
        "{key}: the stored snapshot is {size} bytes, more than an actor within this memory limit can need ({max_bytes})"
    ))
}

/// How long a write whose answer said it failed is read back while the store cannot be read.
pub const READ_BACK_PATIENCE: std::time::Duration = std::time::Duration::from_secs(30);

/// An actor store on object_store.
pub struct ObjectActorStore {
    source: Arc<ObjectSource>,
    checked: OnceCell<Result<(), ExecError>>,
    /// The last probe that failed on the way, and when: the uses within `PROBE_AGAIN` of it get
    /// its error instead of a probe each (one after another, 20 calls during an outage failed at
    /// 1, 2, ... 18 s, and `close()` waited for the drops' probes: review AK's follow-up).
    failed: std::sync::Mutex<Option<(std::time::Instant, ExecError)>>,
}

/// How long a probe that failed on the way answers for the uses after it.
const PROBE_AGAIN: std::time::Duration = std::time::Duration::from_secs(1);

impl ObjectActorStore {
    /// Refuses stores that cannot do conditional writes (as far as can be told without a request).
    pub fn open(source: Arc<ObjectSource>) -> Result<ObjectActorStore, ExecError> {
        let url = source.url().to_string();
        if !source.is_writable() {
            return Err(ExecError::InvalidArgument(format!("options.actorStore {url}: read-only; an actor store must take conditional writes")));
        }
        if (url.starts_with("s3://") || url.starts_with("s3a://")) && !source.has_option("conditional_put") {
            return Err(ExecError::InvalidArgument(format!(
                "options.actorStore {url}: S3 needs conditional writes for actor ownership: pass the store option conditional_put: 'etag' (S3 supports If-Match since 2024)"
            )));
        }
        Ok(ObjectActorStore { source, checked: OnceCell::new(), failed: Default::default() })
    }

    /// Once per store: a create-only write made twice must be refused the second time, and an
    /// update expecting a version the object does not have must be refused, or the store ignores
    /// conditions and ownership cannot hold (one that took create-only writes and ignored
    /// `If-Match`, as S3 did until late 2024, passed a check of the first alone: two workers both
    /// advanced an actor, 34 of 61 steps stored, review AK's follow-up). Only an answer is kept
    /// (the store takes conditions, or it ignores them); a failure on the way is tried again
    /// after `PROBE_AGAIN` (kept, one outage at an executor's start, or one lost answer, had its
    /// actor store fail every call until a restart: review AK).
    async fn ensure_conditional(&self) -> Result<(), ExecError> {
        let probe = || async {
            let recent = self.failed.lock().unwrap_or_else(|p| p.into_inner()).clone();
            if let Some((_, e)) = recent.filter(|(at, _)| at.elapsed() < PROBE_AGAIN) {
                return Err(e);
            }
            let answer = self.probe_conditional().await;
            if let Err(e) = &answer {
                *self.failed.lock().unwrap_or_else(|p| p.into_inner()) = Some((std::time::Instant::now(), e.clone()));
            }
            answer
        };
        self.checked.get_or_try_init(probe).await?.clone()
    }

    /// The probe: `Ok(answer)`, or the failure that kept it from one.
    async fn probe_conditional(&self) -> Result<Result<(), ExecError>, ExecError> {
        let mut nonce = [0u8; 8];
        getrandom::fill(&mut nonce).map_err(ExecError::internal)?;
        let key = format!("actors/.conditional-probe-{}", hex(&nonce));
        let store = self.source.object_store();
        let path = self.source.path(&key)?;
        let put = |mode| self.within(store.put_opts(&path, PutPayload::from_static(b"probe"), PutOptions { mode, ..Default::default() }));
        let refused = |e: &object_store::Error| matches!(e, object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. });
        let answer = async {
            // Created (or refused: its answer lost, the client's retry met this probe's own
            // object; decided by what follows, whatever the store said here).
            match put(PutMode::Create).await {
                Err(e) if !refused(&e) => return Err(unavailable(&key, e)),
                _ => {}
            }
            let ignores = |what: &str| {
                Ok(Err(ExecError::InvalidArgument(format!(
                    "options.actorStore {}: the store accepted {what}; it ignores conditional writes, so two workers could both advance an actor",
                    self.source.url()
                ))))
            };
            match put(PutMode::Create).await {
                Err(e) if refused(&e) => {}
                Err(object_store::Error::NotImplemented { .. }) | Ok(_) => return ignores("a create-only write of an existing object"),
                Err(e) => return Err(unavailable(&key, e)),
            }
            // No object has this version (a generation of 1, an ETag no store makes).
            let wrong = UpdateVersion { e_tag: Some("\"loom-no-such-version\"".into()), version: Some("1".into()) };
            match put(PutMode::Update(wrong)).await {
                Err(e) if refused(&e) => Ok(Ok(())),
                Err(object_store::Error::NotImplemented { .. }) | Ok(_) => ignores("a write expecting a version the object does not have"),
                Err(e) => Err(unavailable(&key, e)),
            }
        }
        .await;
        let _ = self.within(store.delete(&path)).await;
        answer
    }
}

impl ActorStore for ObjectActorStore {
    fn load_gated<'a>(&'a self, key: &'a str, max_bytes: u64, loading: &'a Loading) -> BoxFuture<'a, Result<Option<Loaded>, ExecError>> {
        Box::pin(async move {
            self.ensure_conditional().await?;
            let path = self.source.path(key)?;
            let started = std::time::Instant::now();
            let r = match self.within(self.source.object_store().get(&path)).await {
                Ok(r) => r,
                Err(object_store::Error::NotFound { .. }) => return Ok(None),
                Err(e) => return Err(unavailable(key, e)),
            };
            if r.meta.size > max_bytes {
                return Err(too_large(key, r.meta.size, max_bytes));
            }
            // Held by the caller until it has checked the bytes (see `Room`). The wait for it is
            // the call's (its deadline, close()), not the store's `timeoutMs`: a healthy store
            // was reported unavailable when other loads held the room (review BH1).
            let waited = std::time::Instant::now();
            let room = loading.admit(r.meta.size).await;
            let version = Version { e_tag: r.meta.e_tag.clone(), version: r.meta.version.clone(), writes: writes_of(&r.attributes) };
            // Read as a stream, to the size it stated and no further (review BD2: a store
            // stating 100 bytes and sending endless chunks filled memory, 2.65 GB in 3 s), within
            // what the request left of `timeoutMs`.
            let size = r.meta.size;
            let left = self.source.timeout().saturating_sub(waited.duration_since(started));
            let body = async {
                let mut parts = r.into_stream();
                let mut body = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
                while let Some(part) = std::future::poll_fn(|cx| futures_core::Stream::poll_next(parts.as_mut(), cx)).await {
                    let part = part?;
                    if (body.len() + part.len()) as u64 > size {
                        return Err(object_store::Error::Generic { store: "actor store", source: "more bytes than the snapshot's stated size".into() });
                    }
                    body.extend_from_slice(&part);
                }
                Ok(body)
            };
            let body = match tokio::time::timeout(left, body).await {
                Ok(read) => read.map_err(|e| unavailable(key, e))?,
                Err(_) => {
                    let e = object_store::Error::Generic { store: "actor store", source: format!("timed out after {} ms", self.source.timeout().as_millis()).into() };
                    return Err(unavailable(key, e));
                }
            };
            Ok(Some((body, version, room)))
        })
    }

    fn save<'a>(&'a self, key: &'a str, bytes: Vec<u8>, expected: Option<&'a Version>) -> BoxFuture<'a, Result<Saved, ExecError>> {
        Box::pin(self.save_reading_back(key, bytes, expected, READ_BACK_PATIENCE))
    }

    fn save_unwaited<'a>(&'a self, key: &'a str, bytes: Vec<u8>, expected: Option<&'a Version>) -> BoxFuture<'a, Result<Saved, ExecError>> {
        Box::pin(self.save_reading_back(key, bytes, expected, std::time::Duration::ZERO))
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), ExecError>> {
        Box::pin(async move { self.source.delete(key).await })
    }

    fn version<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Version>, ExecError>> {
        Box::pin(async move {
            self.ensure_conditional().await?;
            let path = self.source.path(key)?;
            self.head(&path).await.map_err(|e| unavailable(key, e))
        })
    }

    fn describe(&self) -> String {
        self.source.url().to_string()
    }
}

impl ObjectActorStore {
    /// `save`, reading a write whose answer said it failed back for up to `patience`.
    async fn save_reading_back(&self, key: &str, bytes: Vec<u8>, expected: Option<&Version>, patience: std::time::Duration) -> Result<Saved, ExecError> {
        self.ensure_conditional().await?;
        let path = self.source.path(key)?;
        let mode = match expected {
            None => PutMode::Create,
            Some(v) => PutMode::Update(UpdateVersion { e_tag: v.e_tag.clone(), version: v.version.clone() }),
        };
        let mut nonce = [0u8; 8];
        getrandom::fill(&mut nonce).map_err(ExecError::internal)?;
        let id = hex(&nonce);
        let before = expected.map(|v| v.writes.as_slice()).unwrap_or_default();
        let writes: Vec<String> = std::iter::once(&id).chain(before.iter().take(KEPT_WRITES - 1)).cloned().collect();
        let mut attributes = Attributes::new();
        attributes.insert(Attribute::Metadata(WRITES.into()), writes.join(",").into());
        let put = PutOptions { mode, attributes, ..Default::default() };
        // Past `timeoutMs` its outcome is unknown as after a lost answer: read back below.
        match self.within(self.source.object_store().put_opts(&path, PutPayload::from(bytes), put)).await {
            Ok(r) => Ok(Saved::Current(Version { e_tag: r.e_tag, version: r.version, writes })),
            // Failed as far as this answer says; but a retry meeting our own first attempt
            // fails its condition, and a lost answer may hide a write that landed.
            Err(e) => match self.stored_by(&path, &id, patience).await {
                Ok(Some(saved)) => Ok(saved),
                Ok(None) if matches!(e, object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => Err(conflict(key, e)),
                Ok(None) => Err(unavailable(key, e)),
                Err(unread) => Err(unavailable(
                    key,
                    format!("{e}; whether the write landed could not be read back ({unread}): it may have"),
                )),
            },
        }
    }

    /// One operation under the store's `timeoutMs` (object_store's client bounds its retries by
    /// it, not a request that hangs: review AK saw a held write take 12 s under `timeoutMs: 1000`).
    async fn within<T>(&self, op: impl std::future::Future<Output = Result<T, object_store::Error>>) -> Result<T, object_store::Error> {
        let limit = self.source.timeout();
        match tokio::time::timeout(limit, op).await {
            Ok(done) => done,
            Err(_) => Err(object_store::Error::Generic { store: "actor store", source: format!("timed out after {} ms", limit.as_millis()).into() }),
        }
    }

    /// The stored object's version, with its write ids (`None`: none stored).
    async fn head(&self, path: &object_store::path::Path) -> Result<Option<Version>, object_store::Error> {
        match self.within(self.source.object_store().get_opts(path, GetOptions { head: true, ..Default::default() })).await {
            Ok(r) => Ok(Some(Version { e_tag: r.meta.e_tag.clone(), version: r.meta.version.clone(), writes: writes_of(&r.attributes) })),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether the write `id` landed, read back after its answer said it failed: `Current` if it
    /// is the stored object, `Superseded` if writes of other workers have landed on top of it;
    /// `None` if it is not among the stored object's writes. A read that fails is tried again
    /// for `patience` (a call's deadline may end the wait sooner): taken as "not
    /// stored", a write that had landed was reported failed and its retry applied it twice
    /// (review AK: 11 for 10 steps).
    async fn stored_by(&self, path: &object_store::path::Path, id: &str, patience: std::time::Duration) -> Result<Option<Saved>, object_store::Error> {
        let started = std::time::Instant::now();
        let mut pause = std::time::Duration::from_millis(50);
        let stored = loop {
            match self.head(path).await {
                Ok(stored) => break stored,
                Err(e) if started.elapsed() + pause > patience => return Err(e),
                Err(_) => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(std::time::Duration::from_secs(2));
                }
            }
        };
        let Some(stored) = stored else { return Ok(None) };
        Ok(match stored.writes.iter().position(|w| w == id) {
            Some(0) => Some(Saved::Current(stored)),
            Some(_) => Some(Saved::Superseded),
            None => None,
        })
    }
}

/// An object's write ids, newest first, from its metadata (none from a store that drops it).
fn writes_of(attributes: &Attributes) -> Vec<String> {
    match attributes.get(&Attribute::Metadata(WRITES.into())) {
        Some(v) => v.as_ref().split(',').filter(|w| w.len() == 16 && w.bytes().all(|b| b.is_ascii_hexdigit())).take(KEPT_WRITES).map(str::to_string).collect(),
        None => Vec::new(),
    }
}

/// The actor store a URL names (`file://` gets the file store with its own conditional writes).
pub fn open(source: Arc<ObjectSource>) -> Result<Arc<dyn ActorStore>, ExecError> {
    match source.local_dir() {
        Some(dir) => Ok(Arc::new(crate::file_actor_store::FileActorStore::open(dir)?)),
        None => Ok(Arc::new(ObjectActorStore::open(source)?)),
    }
}

#[cfg(test)]
#[path = "actor_store_tests.rs"]
mod tests;
