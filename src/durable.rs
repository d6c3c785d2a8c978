//! Durable actors: an actor's state as a snapshot that outlives the process and moves between
//! workers. `snapshotActor` / `restoreActor` hand snapshots to the caller; with an actor store,
//! every call that changes an actor writes its snapshot (before the call resolves, with
//! `persist: 'sync'`), an actor not in memory is restored from the store on its next call, and the
//! store's conditional writes decide who owns an actor (see `actor_store`).
//!
//! What is saved: the instance's linear memory (pages that differ from the module's initial
//! image), its mutable globals and the ABI's host-side state. A call that fails leaves the stored
//! state as it was: the next call starts from the last stored snapshot, never a torn instance.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use crate::actor_store::{actor_key, ActorStore, Saved};
use crate::actors::{ActorKey, Held};
use crate::call::{instantiate, Prepared};
use crate::error::ExecError;
use crate::executor::{Definition, Executor, Lined};
use crate::host::LogSink;
use crate::initial_images::Image;
use crate::instance::GuestInstance;
use crate::limits::{Budget, CancelFlag};
use crate::modules::CompiledModule;
use crate::snapshot;

pub use crate::durable_pending::{NextRetry, Pending, PendingWrite, Persist, RetryClaim, MAX_RETRY_LOOPS};

/// A durable actor's place in the store.
#[derive(Clone)]
pub struct Durable {
    pub store: Arc<dyn ActorStore>,
    pub key: String,
    pub persist: Persist,
    /// The executor's writes under way (see `Pending`).
    pub pending: Arc<Pending>,
    /// The executor's room for snapshots being loaded.
    pub loading: crate::actor_store::Loading,
}

impl Durable {
    pub fn new(store: Arc<dyn ActorStore>, key: &ActorKey, persist: Persist, pending: Arc<Pending>, loading: crate::actor_store::Loading) -> Durable {
        Durable { store, key: actor_key(&key.def, &key.actor_id), persist, pending, loading }
    }
}

/// The module's memory right after instantiation under these grants: what snapshots are taken
/// against. One per set of grants: an initializer may copy the environment or files it is granted
/// into memory, and the module object is shared by executors of other tenants (`shareCode`) and
/// by concurrent loads that joined one compile. Made once under the first asker's grants, it held
/// what the initializer read from them (review S: one tenant's `TOKEN` came back in another
/// tenant's restored actor). Not made with nothing granted instead (review T): snapshots already
/// stored were taken against these images, an initializer may need its grants (it then trapped on
/// every snapshot and durable call) and a stopped clock may never move. The module keeps the
/// images of its `MAX_INITIAL_IMAGES` most recently used sets of grants, and the process
/// `MAX_IMAGE_BYTES` of images together (`initial_images`); another is made again.
///
/// `cancel` ends the making as it ends the call that asked (its `signal`, `close()`): made on a
/// durable actor's first call, a start function that spun held the call, its concurrency slot
/// and `close()` until its own deadline (review AD's follow-up).
pub(crate) async fn initial_image(module: &CompiledModule, p: &Prepared, budget: Budget, cancel: &CancelFlag) -> Result<Arc<Image>, ExecError> {
    let images = &module.initial_images;
    let cell = images.cell(&p.grants);
    let image = cell
        .get_or_try_init(|| async {
            // The initial image is the module's own: no call's heartbeats, and the same in every
            // process, its start function's clocks at 0 and its randomness seeded with 0.
            // Snapshots leave out the pages equal to it and restores fill them from it, so an
            // image made on real time and randomness differed between workers, and so did one
            // snapshot's restored memory (review BK1: eight workers restoring one snapshot of a
            // deterministic actor, whose start function kept a `Math.random()` bit, answered 0
            // five times and 1 three times; one that kept `Date.now()` answered by the minute).
            let mut ctx = crate::instance::CallContext { det: Some(crate::replay::Determinism::START), ..Default::default() };
            ctx.access.making_image = true;
            let mut i = GuestInstance::new(module, &p.limits, budget, cancel, None, &p.grants, &ctx).await?;
            Ok::<_, ExecError>(images.image(without_zero_tail(i.capture()?.memory)))
        })
        .await?
        .clone();
    images.used(&p.grants, &cell);
    Ok(image)
}

/// The image without its zero pages at the end: snapshots compare, and restores fill, the
/// memory past an image with zeros. A module's initial memory is mostly zeros past its data;
/// held whole, each image cost its initial memory, outside every bound (review K: 40 modules of
/// 10 MiB initial memory, each snapshotted once, held +499 MiB).
fn without_zero_tail(mut memory: Vec<u8>) -> Vec<u8> {
    let used = memory.iter().rposition(|b| *b != 0).map_or(0, |last| (last + 1).next_multiple_of(snapshot::PAGE));
    memory.truncate(used.min(memory.len()));
    memory.shrink_to_fit();
    memory
}

/// Loads an actor's last stored snapshot (if any) as its shadow.
pub(crate) async fn load(held: &mut Held, module: &CompiledModule, p: &Prepared, d: &Durable, budget: Budget, cancel: &CancelFlag) -> Result<(), ExecError> {
    // The image first, before anything the call runs: one that cannot be made (a start function
    // calling a host function) fails the call before the guest's start function and `execute`
    // have called the host, whose effects a retry would repeat (review AB).
    let image = initial_image(module, p, budget, cancel).await?;
    // Dropped, but its delete failed: delete first; the call fails while it cannot (a dropped
    // actor's state must not come back).
    if off_slot(p, delete_dropped(d)).await? == Dropped::Deleted {
        held.guard.persisted = None;
        return Ok(());
    }
    // Read and decoded without the call's concurrency slot, the room its bytes take held until
    // they are decoded into the shadow (or refused), and not while the call waits for its slot
    // again (review BH1: held then, another actor's load waited for room behind other tenants'
    // long calls until its store's timeoutMs, and failed BLOB_UNAVAILABLE from a healthy store).
    let loaded = off_slot(p, async {
        let Some((bytes, version, room)) = d.store.load_gated(&d.key, snapshot::max_encoded_len(p.limits.max_memory_bytes), &d.loading).await? else {
            return Ok(None);
        };
        // Off the runtime's threads: a checksum of up to hundreds of MiB (review BG1: another
        // executor's calls waited up to 316 ms behind one), with the room, which goes when the
        // bytes do whether or not this call still waits.
        let (digest, max, globals, image) = (module.digest, p.limits.max_memory_bytes, module.state.globals.len(), image.clone());
        let decode = move || {
            let _room = room;
            let state = snapshot::decode(&bytes, &digest, &image, max, globals);
            drop(bytes);
            give_back_after(state.as_ref().map_or(0, |s| s.memory.len()));
            state
        };
        let state = tokio::task::spawn_blocking(decode).await.map_err(|e| crate::compile::panicked("decoding a snapshot", &e.to_string()))??;
        Ok::<_, ExecError>(Some((state, version)))
    })
    .await?;
    let Some((state, version)) = loaded else {
        held.guard.persisted = None;
        return Ok(());
    };
    held.guard.shadow = Some((module.digest, state));
    held.guard.pristine = false;
    held.guard.persisted = Some(version);
    Ok(())
}

/// Store I/O of a call, without its concurrency slot: `maxConcurrency` counts calls running guest
/// code (held, 20 durable calls writing to a slow store held up a stateless call 3.2 s at
/// `maxConcurrency: 2`: review AK).
async fn off_slot<F: Future>(p: &Prepared, io: F) -> F::Output {
    match &p.ctx.access.permit {
        Some(slot) => slot.without(io).await,
        None => io.await,
    }
}

/// What `delete_dropped` found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Dropped {
    /// The actor's stored state was not left over from a failed drop.
    No,
    /// It was, and is deleted now.
    Deleted,
    /// It was, but what is stored now is newer than what was dropped (another worker's steps
    /// since): that is the actor's state, and stays.
    Superseded,
}

/// Deletes a dropped actor's stored state whose delete failed (in the actor's line: a call's
/// load, or a background retry); an error while the store still cannot. Only the version that
/// was dropped is deleted (`ActorStore::delete_if`); when that version is not known (the store
/// could not say at the drop), whatever is stored, which only a call's load does (the caller
/// asked for the actor after dropping it), never a background retry.
pub(crate) async fn delete_dropped(d: &Durable) -> Result<Dropped, ExecError> {
    let Some(dropped) = d.pending.undeleted(&d.key) else { return Ok(Dropped::No) };
    let gone = match &dropped {
        Some(version) => d.store.delete_if(&d.key, version).await?,
        None => d.store.delete(&d.key).await.map(|()| true)?,
    };
    d.pending.set_undeleted(&d.key, None);
    Ok(if gone { Dropped::Deleted } else { Dropped::Superseded })
}

/// What a durable call was doing when its deadline passed in its write.
const WRITING_STATE: &str = " while storing the actor's state (its snapshot holds every page changed since the module \
     started, compared, copied, compressed and checksummed within the call's time: raise maxExecutionMs for an actor \
     this large; it keeps its last stored state)";

/// After a successful call: stores the actor's new state if it changed, then keeps the instance.
/// A conflict (another worker advanced the actor) or a store failure undoes the call here (the
/// instance goes; the last stored state stays, or is reloaded after a conflict).
pub(crate) async fn persist(
    mut held: Held,
    mut instance: GuestInstance,
    module: &CompiledModule,
    p: &Prepared,
    d: &Durable,
    budget: Budget,
    cancel: &CancelFlag,
    log: Option<Arc<dyn LogSink>>,
) -> Result<(), ExecError> {
    // The state's comparison, copy and encoding are the call's work, within its deadline and
    // ended by its cancel, checked every few MiB of each (a 200 MiB memory took a 100 ms call to
    // 1.3 s, review AM2). Stopped, the call fails before anything is stored, and the actor goes
    // back to its last good state.
    let mut go_on = || -> Result<(), ExecError> {
        if cancel.is_cancelled() {
            return Err(ExecError::Cancelled);
        }
        if Instant::now() >= budget.deadline {
            return Err(budget.timeout_in(WRITING_STATE));
        }
        Ok(())
    };
    let changed = match &held.guard.shadow {
        Some((_, s)) => instance.differs_within(s, &mut go_on)?,
        None => true,
    };
    if !changed && held.guard.persisted.is_some() {
        held.guard.instance = Some(instance);
        return Ok(());
    }
    let state = instance.capture_within(&mut go_on)?;
    go_on()?;
    // An image pushed out since the load is made again within the call's deadline (it had one of
    // its own: a start function spinning there made a 1 s call succeed after 1.6 s, review AL2F).
    let image = initial_image(module, p, budget, cancel).await?;
    let bytes = snapshot::encode_within(&module.digest, &state, &image, &mut go_on)?;
    let expected = held.guard.persisted.clone();
    // No guest code runs after this: the slot goes to the next call while the store writes.
    if let Some(slot) = &p.ctx.access.permit {
        slot.release();
    }
    match d.persist {
        Persist::Sync => {
            let unsure = Unsure(Some(&mut held));
            let size = state.memory.len();
            let saved = d.store.save(&d.key, bytes, expected.as_ref()).await;
            unsure.disarm();
            give_back_after(size);
            settle(&mut held, saved, instance, (module.digest, state))
        }
        Persist::Async => {
            let store = d.store.clone();
            let key = d.key.clone();
            let digest = module.digest;
            let write = d.pending.start();
            // Ordered: the task holds the actor's line until the write is done.
            let job = async move {
                let _write = write;
                let size = state.memory.len();
                let saved = store.save_unwaited(&key, bytes, expected.as_ref()).await;
                give_back_after(size);
                if let Err(e) = settle(&mut held, saved, instance, (digest, state)) {
                    if let Some(sink) = log {
                        sink.warn(&format!("actor snapshot {key} was not stored (persist: 'async'): {e}"));
                    }
                }
            };
            crate::threads::spawn(job)
        }
    }
}

/// A snapshot's memory past which its encode or decode asks for a trim once its buffers are gone.
const GIVE_BACK_PAST: usize = 4 << 20;

/// Gives the memory a snapshot of `memory` bytes made and freed back to the system when it is
/// large: glibc keeps it in the freeing thread's arena (review BR2: 330-400 MB stayed resident
/// under 200 durable actors of 8 MiB, level; `trim` explains).
fn give_back_after(memory: usize) {
    if memory >= GIVE_BACK_PAST {
        crate::trim::soon();
    }
}

/// Armed while a write is in flight. Dropped armed (the call ended mid-write: its deadline, a
/// cancel), the write may or may not have landed, so the actor forgets its state here and its
/// next call reloads the store's; keeping the old one would make that call's write a spurious
/// `ACTOR_CONFLICT` whenever the write landed.
struct Unsure<'a>(Option<&'a mut Held>);

impl Unsure<'_> {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for Unsure<'_> {
    fn drop(&mut self) {
        if let Some(held) = self.0.take() {
            held.guard.shadow = None;
            held.guard.persisted = None;
        }
    }
}

/// How many times a restore is stored over a newer state before it gives up (other workers
/// storing in between each time).
const RESTORE_TRIES: u32 = 4;

/// Applies the outcome of a snapshot write to the actor.
fn settle(
    held: &mut Held,
    saved: Result<Saved, ExecError>,
    instance: GuestInstance,
    state: (crate::digest::Digest, snapshot::State),
) -> Result<(), ExecError> {
    match saved {
        Ok(Saved::Current(version)) => {
            held.guard.persisted = Some(version);
            held.guard.shadow = Some(state);
            held.guard.instance = Some(instance);
            Ok(())
        }
        Ok(Saved::Superseded) => {
            // Stored (the call counts), and another worker has stored a newer state since: ours
            // is stale; the next call reloads the store's.
            held.guard.shadow = None;
            held.guard.persisted = None;
            Ok(())
        }
        Err(e @ ExecError::ActorConflict(_)) => {
            // Our state is stale: forget it all; the next call reloads the store's.
            held.guard.shadow = None;
            held.guard.persisted = None;
            Err(e)
        }
        // Not stored, or not known to be (its outcome could not be read back): the call fails,
        // and the actor's next call reloads the store's state, the last stored one or this one
        // if it landed after all (kept here, the shadow made that call's write a spurious
        // `ACTOR_CONFLICT` whenever it had: review AK).
        Err(e) => {
            held.guard.shadow = None;
            held.guard.persisted = None;
            Err(e)
        }
    }
}

impl Executor {
    /// The actor's state as a snapshot (in line: after the calls made before it, before those
    /// made after it; the place is taken when this is called).
    pub fn snapshot_actor(self: &Arc<Self>, def: &Definition, actor_id: &str) -> impl Future<Output = Result<Vec<u8>, ExecError>> + Send + 'static {
        let lined = self.line_up(def, actor_id);
        let (this, def, actor_id) = (self.clone(), def.clone(), actor_id.to_string());
        async move { this.snapshot_in_line(&def, &actor_id, lined?).await }
    }

    async fn snapshot_in_line(self: &Arc<Self>, def: &Definition, actor_id: &str, lined: Lined) -> Result<Vec<u8>, ExecError> {
        let (_in_flight, cancel, p, module, mut held) = self.hold(lined).await?;
        module.check_state_capturable()?;
        // State of other bytes than the definition's now is no snapshot of this module, nor
        // state of another ABI than the definition's a snapshot under it (review AW1: it could
        // not be restored under the definition it was taken with).
        held.guard.check_module(&module.digest)?;
        held.guard.check_abi(module.abi_for(p.ctx.abi)?, &p.key.name)?;
        if let Some(instance) = held.guard.instance.as_mut() {
            if instance.digest == module.digest {
                let state = instance.capture()?;
                return Ok(snapshot::encode(&module.digest, &state, &initial_image(&module, &p, Budget::starting_now(&p.limits), &cancel).await?));
            }
        }
        if let Some((digest, state)) = &held.guard.shadow {
            if *digest == module.digest {
                return Ok(snapshot::encode(digest, state, &initial_image(&module, &p, Budget::starting_now(&p.limits), &cancel).await?));
            }
        }
        if let Some(d) = p.durable.as_ref().filter(|d| !d.pending.is_undeleted(&d.key)) {
            // Ended by close() as a call's load is (review BH1: a stalled read held close() to the
            // store's timeoutMs).
            let loaded = cancel.guard(d.store.load_gated(&d.key, snapshot::max_encoded_len(p.limits.max_memory_bytes), &d.loading)).await??;
            if let Some((bytes, _, _room)) = loaded {
                // What the store holds is not trusted: checked (format, checksum, module) as a
                // call's load would check it.
                let named = snapshot::module_of(&bytes)?;
                if named != module.digest {
                    return Err(ExecError::SnapshotMismatch { expected: crate::digest::hex(&module.digest), actual: crate::digest::hex(&named) });
                }
                return Ok(bytes);
            }
        }
        Err(ExecError::InvalidArgument(format!("actor {actor_id:?} of {:?} has no state here to snapshot", def.name)))
    }

    /// Makes `snapshot` the actor's state: checked whole first (`SNAPSHOT_INVALID`,
    /// `SNAPSHOT_MISMATCH`), restored into a fresh instance that then replaces the actor's (in
    /// line after its calls), and stored when the executor has an actor store.
    pub fn restore_actor(self: &Arc<Self>, def: &Definition, actor_id: &str, bytes: &[u8]) -> impl Future<Output = Result<(), ExecError>> + Send + 'static {
        // Refused by its length before it is copied: no snapshot of this definition's memory limit
        // is longer, and a load from the actor store refuses the same (review AA: a 1 GiB Buffer
        // was copied on the JS thread, 4.3 s, before it was found not to be a snapshot; a
        // restore stored 90 MiB that every later load refused).
        let lined = self.line_up(def, actor_id).and_then(|lined| {
            let max = snapshot::max_encoded_len(lined.0.limits.max_memory_bytes);
            if bytes.len() as u64 > max {
                return Err(ExecError::SnapshotInvalid(format!(
                    "the snapshot is {} bytes, more than one of an actor of this definition's memory limit can be ({max})",
                    bytes.len()
                )));
            }
            // Its copy, then the memory it decodes to, take room among the executor's restores
            // (`maxActorMemoryMB`) from now until it is done; `BUSY` if they hold it (review CB1:
            // 40 restores of a 63 MB snapshot made at once held 2.5 GB of copies waiting in their
            // lines under a cap of 128 MiB). Not the room of loads: the call ahead of it in its
            // line may wait for a load's, which it would hold (review CC1).
            let stated = snapshot::stated_memory(bytes).unwrap_or(0).min(lined.0.limits.max_memory_bytes);
            match self.restoring.try_admit(stated.max(bytes.len() as u64)) {
                Some(room) => Ok((lined, room)),
                None => Err(ExecError::Busy(
                    "restores under way hold this executor's room for restored snapshots (maxActorMemoryMB): retry once they are done".into(),
                )),
            }
        });
        let (this, bytes) = (self.clone(), if lined.is_ok() { bytes.to_vec() } else { Vec::new() });
        async move {
            let (lined, _room) = lined?;
            this.restore_in_line(&bytes, lined).await
        }
    }

    async fn restore_in_line(self: &Arc<Self>, bytes: &[u8], lined: Lined) -> Result<(), ExecError> {
        let (_in_flight, cancel, p, module, mut held) = self.hold(lined).await?;
        module.check_state_capturable()?;
        // An actor of a WASI command could take no call (review AW1: the restore was taken, and
        // every call then refused).
        if module.abi_for(p.ctx.abi)? == crate::abi::Abi::WasiCommand {
            return Err(ExecError::InvalidArgument(
                "a WASI command module is a one-shot program with no state between runs: it has no actors to restore".into(),
            ));
        }
        // What the actor will hold (the memory the snapshot states, and the shadow a transactional
        // or durable actor keeps of it) counts against the actors' cap as a call's growth does:
        // refused `BUSY`, the actor as it was, while busy actors hold the rest. Review CB1:
        // restores are not calls (no concurrency slot), and 40 restores of 60 MiB, each actor
        // with a call waiting behind it, held 2.5 GB under a cap of 128 MiB.
        let stated = snapshot::stated_memory(bytes).unwrap_or(0).min(p.limits.max_memory_bytes);
        let copies = if p.transactional || p.durable.is_some() { 2 } else { 1 };
        // Counted from now until the actor's memory is, as `held` lets it go.
        crate::limits::SharedCap::admit(&*held.memory_cap(0, copies, 0), stated)?;
        let state = snapshot::decode(bytes, &module.digest, &initial_image(&module, &p, Budget::starting_now(&p.limits), &cancel).await?, p.limits.max_memory_bytes, module.state.globals.len())?;
        let budget = Budget::starting_now(&p.limits);
        let mut fresh = instantiate(&module, &p, budget, &cancel, None, true).await?;
        fresh.restore(&state).await?;
        if let Some(d) = &p.durable {
            // Stored over whatever is there (the caller said this is the state), also over a
            // newer state another worker stored since this one last loaded or stored (kept
            // expecting its own version, a stale holder's restore was ACTOR_CONFLICT for good:
            // review AK). Failed, its outcome may be unknown: the state here is forgotten.
            let persisted = held.guard.persisted.clone();
            // Ended by `close()` too (a write whose answer was lost, read back while the store
            // could not be read, held `close()` 29 s: review AK's follow-up).
            let saved = cancel.guard(async {
                let mut expected = match persisted {
                    Some(v) => Some(v),
                    None => d.store.version(&d.key).await?,
                };
                for tries in 1.. {
                    match d.store.save(&d.key, bytes.to_vec(), expected.as_ref()).await {
                        Err(ExecError::ActorConflict(_)) if tries < RESTORE_TRIES => expected = d.store.version(&d.key).await?,
                        saved => return saved,
                    }
                }
                unreachable!("the loop returns")
            })
            .await
            .and_then(|saved| saved);
            let saved = match saved {
                Ok(saved) => saved,
                Err(e) => {
                    held.guard.instance = None;
                    held.guard.shadow = None;
                    held.guard.persisted = None;
                    return Err(e);
                }
            };
            // What was stored is the actor's state now, dropped before or not.
            d.pending.set_undeleted(&d.key, None);
            let Some(version) = saved.current() else {
                // Stored, and already followed by another worker's state: reloaded next call.
                held.guard.instance = None;
                held.guard.shadow = None;
                held.guard.persisted = None;
                return Ok(());
            };
            held.guard.persisted = Some(version);
        }
        // The actor's state is the snapshot's now, under the ABI it was restored with (review AV1:
        // kept from before, a call under that ABI was refused and one under the old ran on it).
        held.guard.abi = Some(fresh.abi());
        held.guard.instance = Some(fresh);
        held.guard.shadow = (p.transactional || p.durable.is_some()).then_some((module.digest, state));
        held.guard.pristine = false;
        held.guard.growth = held.guard.growth.next_instance();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_keeps_its_pages_up_to_the_last_that_holds_data() {
        let page = snapshot::PAGE;
        let mut memory = vec![0u8; 160 * 65536];
        memory[100] = 1;
        memory[3 * page + 7] = 2;
        let image = without_zero_tail(memory.clone());
        assert_eq!(image.len(), 4 * page);
        assert_eq!(image[..], memory[..4 * page]);
        assert!(image.capacity() < 8 * page, "the zero tail's memory is given back");
        assert_eq!(without_zero_tail(vec![0u8; 65536]).len(), 0);
        let mut full = vec![0u8; 65536];
        full[65535] = 9;
        assert_eq!(without_zero_tail(full.clone()), full);
        // Encoded against the trimmed image or the whole one, a state is the same snapshot, and
        // decodes to the same state over either.
        let mut state = snapshot::State { memory: memory.clone(), globals: Vec::new(), host: Vec::new() };
        state.memory[100] = 0;
        state.memory[150 * 65536] = 5;
        let d = [3u8; 32];
        let bytes = snapshot::encode(&d, &state, &image);
        assert_eq!(bytes, snapshot::encode(&d, &state, &memory));
        assert_eq!(snapshot::decode(&bytes, &d, &image, 1 << 30, state.globals.len()).expect("decodes"), state);
    }
}
