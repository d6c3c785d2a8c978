//! A component's pollables, kept apart from its resource cap (`wasi_http::MAX_RESOURCES`).
//!
//! componentize-js's `fetch()` makes a pollable for each 8 KiB read of a response's body and does
//! not drop it (not within a call, nor in the calls after it): counted in the cap, one response of
//! 16 MiB, or an actor's sixteenth call fetching 1 MiB, trapped with "resource table has no free
//! keys". A pollable is small in the host (about 100 bytes), unlike what the cap is for (a `fields`
//! holds up to 128 KiB), so pollables get room of their own, paid for from `maxMemoryMB`:
//!
//! - each table slot a pollable is made in (with the deadline a clock's pollable owns) is charged
//!   `SLOT_BYTES` to the guest's memory budget once, and the table's cap grows by one;
//! - when the guest drops a pollable, its slots are kept for pollables (a `Spare` entry holds each),
//!   and the next pollable takes a spare before it asks for a new slot.
//!
//! So the cap is always `MAX_RESOURCES` + the slots held for pollables, and at most
//! `MAX_RESOURCES` entries are anything else: a freed pollable's slot never goes to a `fields`.

use std::collections::HashSet;

use wasmtime::component::{Resource, ResourceTable, ResourceType};
use wasmtime::StoreContextMut;
use wasmtime_wasi::p2::DynPollable;

use crate::error::ExecError;
use crate::host::HostState;
use crate::limits::MemoryLimiter;

/// What one table slot held for pollables is charged to `maxMemoryMB`: the slot (56 bytes), the
/// pollable (32), its place among its parent's children and in the guest's own handle table,
/// doubled for the growth of those vectors.
pub const SLOT_BYTES: u64 = 256;

/// What holds a slot kept for pollables while no pollable is in it.
struct Spare;

/// The slots a component's table holds for pollables.
#[derive(Default)]
pub struct PollableSlots {
    /// Spare entries, each a slot kept for the next pollable.
    spares: Vec<u32>,
    /// Slots held for pollables (pollables, the deadlines they own, spares).
    slots: usize,
    /// Pollables that own a second entry (a clock's deadline), freed with them.
    owning: HashSet<u32>,
}

impl PollableSlots {
    /// The table's cap: the other resources' room and the pollables'.
    fn cap(&self) -> usize {
        crate::wasi_http::MAX_RESOURCES + self.slots
    }

    /// Makes room for `n` entries of a pollable about to be made: spares given up first, new slots
    /// charged to `limiter` past them.
    fn reserve(&mut self, table: &mut ResourceTable, limiter: &mut MemoryLimiter, n: usize) -> Result<(), ExecError> {
        for taken in 0..n {
            if let Some(rep) = self.spares.pop() {
                // A spare is only ever deleted here, right after it was pushed.
                let _ = table.delete(Resource::<Spare>::new_own(rep));
                continue;
            }
            if let Err(e) = limiter.reserve_host(SLOT_BYTES) {
                self.keep(table, taken);
                return Err(e);
            }
            self.slots += 1;
        }
        table.set_max_capacity(self.cap());
        Ok(())
    }

    /// Holds `n` freed slots with spares (after a pollable's drop, or a reservation not used).
    fn keep(&mut self, table: &mut ResourceTable, n: usize) {
        table.set_max_capacity(self.cap());
        for _ in 0..n {
            // A slot was just freed or reserved, so this push never grows the table past its cap;
            // should it fail all the same, the slot is given up (the other resources' room stays).
            match table.push(Spare) {
                Ok(spare) => self.spares.push(spare.rep()),
                Err(_) => self.slots = self.slots.saturating_sub(1),
            }
        }
        table.set_max_capacity(self.cap());
    }
}

/// Runs `make` (a wasmtime-wasi function that makes a pollable, pushing `n` entries) with room
/// reserved for it; a failure gives the room back.
fn made(
    store: &mut StoreContextMut<'_, HostState>,
    n: usize,
    make: impl FnOnce(&mut HostState) -> wasmtime::Result<Resource<DynPollable>>,
) -> wasmtime::Result<Resource<DynPollable>> {
    {
        let state = store.data_mut();
        let HostState { component, limiter, .. } = state;
        let c = crate::wasi_http::component_wasi(component);
        c.pollables.reserve(&mut c.table, limiter, n).map_err(wasmtime::Error::new)?;
    }
    let made = make(store.data_mut());
    let c = crate::wasi_http::component_wasi(&mut store.data_mut().component);
    match &made {
        Ok(p) if n == 2 => {
            c.pollables.owning.insert(p.rep());
        }
        Ok(_) => {}
        Err(_) => c.pollables.keep(&mut c.table, n),
    }
    made
}

/// Shadows, in a component `linker` (after wasmtime-wasi's and wasmtime-wasi-http's), the functions
/// that make pollables and the pollable's destructor (see the module's note).
pub fn shadow(linker: &mut wasmtime::component::Linker<HostState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let r = shadow_all(linker);
    linker.allow_shadowing(false);
    r
}

fn shadow_all(linker: &mut wasmtime::component::Linker<HostState>) -> wasmtime::Result<()> {
    use wasmtime_wasi::p2::bindings::clocks::monotonic_clock::Host as _;
    use wasmtime_wasi::p2::bindings::io::poll::HostPollable;
    use wasmtime_wasi::p2::{DynInputStream, DynOutputStream};
    use wasmtime_wasi::WasiView as _;
    use wasmtime_wasi_http::p2::bindings::http::types::{HostFutureIncomingResponse as Responses, HostFutureTrailers as Trailers};
    use wasmtime_wasi_http::p2::body::HostFutureTrailers;
    use wasmtime_wasi_http::p2::types::HostFutureIncomingResponse;
    use wasmtime_wasi_http::WasiHttpView as _;

    let mut poll = linker.instance("wasi:io/poll@0.2.12")?;
    poll.resource("pollable", ResourceType::host::<DynPollable>(), |mut store, rep| {
        let c = crate::wasi_http::component_wasi(&mut store.data_mut().component);
        // wasmtime-wasi's own drop: the pollable, and the deadline it owns if any.
        HostPollable::drop(&mut c.table, Resource::<DynPollable>::new_own(rep))?;
        let freed = if c.pollables.owning.remove(&rep) { 2 } else { 1 };
        c.pollables.keep(&mut c.table, freed);
        Ok(())
    })?;
    let mut streams = linker.instance("wasi:io/streams@0.2.12")?;
    streams.func_wrap("[method]input-stream.subscribe", |mut store, (stream,): (Resource<DynInputStream>,)| {
        Ok((made(&mut store, 1, |s| wasmtime_wasi::p2::subscribe(&mut s.ctx().table, stream))?,))
    })?;
    streams.func_wrap("[method]output-stream.subscribe", |mut store, (stream,): (Resource<DynOutputStream>,)| {
        Ok((made(&mut store, 1, |s| wasmtime_wasi::p2::subscribe(&mut s.ctx().table, stream))?,))
    })?;
    // A deterministic call's clock stands still at `now`, and its deadlines pass at once: they
    // were set on real time, and a guest counting its polls of one until it was ready read real
    // time from them (review AZ2: five runs of the same call, five results). Virtual time jumps
    // to each deadline (a deadline at or before `now` is ready).
    let mut clock = linker.instance("wasi:clocks/monotonic-clock@0.2.12")?;
    clock.func_wrap("subscribe-instant", |mut store, (when,): (u64,)| {
        let when = if store.data().det.is_some() { 0 } else { when };
        Ok((made(&mut store, 2, |s| wasmtime_wasi::clocks::WasiClocksView::clocks(s).subscribe_instant(when))?,))
    })?;
    clock.func_wrap("subscribe-duration", |mut store, (duration,): (u64,)| {
        if store.data().det.is_some() {
            return Ok((made(&mut store, 2, |s| wasmtime_wasi::clocks::WasiClocksView::clocks(s).subscribe_instant(0))?,));
        }
        Ok((made(&mut store, 2, |s| wasmtime_wasi::clocks::WasiClocksView::clocks(s).subscribe_duration(duration))?,))
    })?;
    let mut http = linker.instance("wasi:http/types@0.2.12")?;
    http.func_wrap("[method]future-trailers.subscribe", |mut store, (f,): (Resource<HostFutureTrailers>,)| {
        Ok((made(&mut store, 1, |s| Trailers::subscribe(&mut s.http(), f))?,))
    })?;
    http.func_wrap("[method]future-incoming-response.subscribe", |mut store, (f,): (Resource<HostFutureIncomingResponse>,)| {
        Ok((made(&mut store, 1, |s| Responses::subscribe(&mut s.http(), f))?,))
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::capabilities::Capabilities;
    use crate::executor::{CallOptions, Executor};
    use crate::http_client::Network;
    use crate::network::{HostRule, NetworkConfig};
    use crate::limits::LimitOverrides;
    use crate::options::{Definition, ExecutorOptions};
    use crate::store::MemorySource;
    use crate::wasi_http::MAX_RESOURCES;

    /// A component driven by its input `a,b,c,d`: makes `a` clock pollables and keeps them (as
    /// componentize-js keeps a pollable per read of a body), makes and drops `b` more, makes `c`
    /// `fields` and keeps them, then makes `d` pollables of its stdin stream and keeps them;
    /// answers "1".
    fn pollables_component() -> Vec<u8> {
        wat::parse_str(
            r#"(component $C
  (import "wasi:io/poll@0.2.0" (instance $poll (export "pollable" (type (sub resource)))))
  (alias export $poll "pollable" (type $pollable))
  (import "wasi:io/streams@0.2.0" (instance $streams
    (export "input-stream" (type $is (sub resource)))
    (alias outer $C $pollable (type $p))
    (export "pollable" (type $pe (eq $p)))
    (export "[method]input-stream.subscribe" (func (param "self" (borrow $is)) (result (own $pe))))))
  (alias export $streams "input-stream" (type $input))
  (import "wasi:cli/stdin@0.2.0" (instance $stdin
    (alias outer $C $input (type $i))
    (export "input-stream" (type $ie (eq $i)))
    (export "get-stdin" (func (result (own $ie))))))
  (import "wasi:clocks/monotonic-clock@0.2.0" (instance $clock
    (alias outer $C $pollable (type $p))
    (export "pollable" (type $pe (eq $p)))
    (export "subscribe-duration" (func (param "when" u64) (result (own $pe))))))
  (import "wasi:http/types@0.2.0" (instance $t
    (export "fields" (type $f (sub resource)))
    (export "[constructor]fields" (func (result (own $f))))))
  (core module $libc
    (memory (export "memory") 1)
    (func (export "realloc") (param i32 i32 i32 i32) (result i32) (i32.const 4096)))
  (core instance $libc (instantiate $libc))
  (core func $sub (canon lower (func $clock "subscribe-duration")))
  (core func $pdrop (canon resource.drop $pollable))
  (core func $fnew (canon lower (func $t "[constructor]fields")))
  (core func $stdin (canon lower (func $stdin "get-stdin")))
  (core func $ssub (canon lower (func $streams "[method]input-stream.subscribe")))
  (core module $main
    (import "libc" "memory" (memory 1))
    (import "host" "sub" (func $sub (param i64) (result i32)))
    (import "host" "pdrop" (func $pdrop (param i32)))
    (import "host" "fnew" (func $fnew (result i32)))
    (import "host" "stdin" (func $stdin (result i32)))
    (import "host" "ssub" (func $ssub (param i32) (result i32)))
    (global $at (mut i32) (i32.const 0))
    (global $end (mut i32) (i32.const 0))
    ;; The next number of the input (digits up to a comma or the end).
    (func $num (result i32) (local $n i32) (local $c i32)
      (block $d (loop $l (br_if $d (i32.ge_u (global.get $at) (global.get $end)))
        (local.set $c (i32.load8_u (global.get $at)))
        (global.set $at (i32.add (global.get $at) (i32.const 1)))
        (br_if $d (i32.eq (local.get $c) (i32.const 44)))
        (local.set $n (i32.add (i32.mul (local.get $n) (i32.const 10)) (i32.sub (local.get $c) (i32.const 48))))
        (br $l)))
      (local.get $n))
    (func (export "execute") (param $p i32) (param $len i32) (result i32) (local $n i32) (local $s i32)
      (global.set $at (local.get $p))
      (global.set $end (i32.add (local.get $p) (local.get $len)))
      (local.set $n (call $num))
      (block $d (loop $l (br_if $d (i32.eqz (local.get $n)))
        (drop (call $sub (i64.const 0))) (local.set $n (i32.sub (local.get $n) (i32.const 1))) (br $l)))
      (local.set $n (call $num))
      (block $d (loop $l (br_if $d (i32.eqz (local.get $n)))
        (call $pdrop (call $sub (i64.const 0))) (local.set $n (i32.sub (local.get $n) (i32.const 1))) (br $l)))
      (local.set $n (call $num))
      (block $d (loop $l (br_if $d (i32.eqz (local.get $n)))
        (drop (call $fnew)) (local.set $n (i32.sub (local.get $n) (i32.const 1))) (br $l)))
      (local.set $n (call $num))
      (local.set $s (call $stdin))
      (block $d (loop $l (br_if $d (i32.eqz (local.get $n)))
        (drop (call $ssub (local.get $s))) (local.set $n (i32.sub (local.get $n) (i32.const 1))) (br $l)))
      (i32.store8 (i32.const 1039) (i32.const 49))
      (i32.store8 (i32.const 64) (i32.const 0))
      (i32.store (i32.const 68) (i32.const 1039))
      (i32.store (i32.const 72) (i32.const 1))
      (i32.const 64))
    (func (export "cabi_post_execute") (param i32)))
  (core instance $m (instantiate $main (with "libc" (instance $libc))
    (with "host" (instance (export "sub" (func $sub)) (export "pdrop" (func $pdrop)) (export "fnew" (func $fnew))
      (export "stdin" (func $stdin)) (export "ssub" (func $ssub))))))
  (func (export "execute") (param "input" string) (result (result string (error string)))
    (canon lift (core func $m "execute") (memory (core memory $libc "memory")) (realloc (core func $libc "realloc"))
      (post-return (core func $m "cabi_post_execute")))))"#,
        )
        .expect("test component parses")
    }

    /// A component that subscribes to a duration of 50 ms, then counts its `ready` checks of it
    /// until it is ready, and answers the count.
    fn ready_counter() -> Vec<u8> {
        wat::parse_str(
            r#"(component $C
  (import "wasi:io/poll@0.2.0" (instance $poll
    (export "pollable" (type $p (sub resource)))
    (export "[method]pollable.ready" (func (param "self" (borrow $p)) (result bool)))))
  (alias export $poll "pollable" (type $pollable))
  (import "wasi:clocks/monotonic-clock@0.2.0" (instance $clock
    (alias outer $C $pollable (type $p))
    (export "pollable" (type $pe (eq $p)))
    (export "subscribe-duration" (func (param "when" u64) (result (own $pe))))))
  (core module $libc
    (memory (export "memory") 1)
    (func (export "realloc") (param i32 i32 i32 i32) (result i32) (i32.const 4096)))
  (core instance $libc (instantiate $libc))
  (core func $sub (canon lower (func $clock "subscribe-duration")))
  (core func $ready (canon lower (func $poll "[method]pollable.ready")))
  (core module $main
    (import "libc" "memory" (memory 1))
    (import "host" "sub" (func $sub (param i64) (result i32)))
    (import "host" "ready" (func $ready (param i32) (result i32)))
    (func (export "execute") (param i32 i32) (result i32) (local $n i64) (local $h i32) (local $at i32)
      (local.set $h (call $sub (i64.const 50000000)))
      (block $d (loop $l
        (local.set $n (i64.add (local.get $n) (i64.const 1)))
        (br_if $d (call $ready (local.get $h)))
        (br $l)))
      ;; The count in decimal, ending at 2000.
      (local.set $at (i32.const 2000))
      (loop $w
        (local.set $at (i32.sub (local.get $at) (i32.const 1)))
        (i32.store8 (local.get $at) (i32.add (i32.const 48) (i32.wrap_i64 (i64.rem_u (local.get $n) (i64.const 10)))))
        (local.set $n (i64.div_u (local.get $n) (i64.const 10)))
        (br_if $w (i64.ne (local.get $n) (i64.const 0))))
      (i32.store8 (i32.const 64) (i32.const 0))
      (i32.store (i32.const 68) (local.get $at))
      (i32.store (i32.const 72) (i32.sub (i32.const 2000) (local.get $at)))
      (i32.const 64))
    (func (export "cabi_post_execute") (param i32)))
  (core instance $m (instantiate $main (with "libc" (instance $libc))
    (with "host" (instance (export "sub" (func $sub)) (export "ready" (func $ready))))))
  (func (export "execute") (param "input" string) (result (result string (error string)))
    (canon lift (core func $m "execute") (memory (core memory $libc "memory")) (realloc (core func $libc "realloc"))
      (post-return (core func $m "cabi_post_execute")))))"#,
        )
        .expect("test component parses")
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_deterministic_calls_clock_deadlines_pass_at_once() {
        // Review AZ2: its deadlines were set on real time; counting its polls of one read real
        // time (five runs of the same call, five counts).
        let source = Arc::new(MemorySource::new());
        source.put("ready.wasm", ready_counter());
        let ex = Arc::new(Executor::new(source, ExecutorOptions::default()).expect("executor"));
        let mut def = Definition { name: "ready".into(), version: "1".into(), wasm_blob_path: "ready.wasm".into(), ..Default::default() };
        def.deterministic = true;
        let det = || CallOptions { now: Some(1000.0), seed: Some(1.0), ..Default::default() };
        let mut counts = Vec::new();
        for _ in 0..5 {
            counts.push(ex.execute(&def, "{}".into(), det()).await.expect("runs").output);
        }
        // wasmtime-wasi's past deadline yields once before it is ready: the second check.
        assert_eq!(counts, vec!["2"; 5]);
        // Not deterministic: 50 ms of real time, checked many times.
        def.deterministic = false;
        let real: u64 = ex.execute(&def, "{}".into(), CallOptions::default()).await.expect("runs").output.parse().expect("a count");
        assert!(real > 2, "{real}");
    }

    fn executor() -> (Arc<Executor>, Definition) {
        let source = Arc::new(MemorySource::new());
        source.put("p.wasm", pollables_component());
        // wasi:http's `fields` need the network granted.
        let config = NetworkConfig { allowed_hosts: vec![HostRule::parse("127.0.0.1").expect("rule")], ..Default::default() };
        let options = ExecutorOptions { network: Some(Network::new(config).expect("network")), ..Default::default() };
        let ex = Arc::new(Executor::new(source, options).expect("executor"));
        let limits = LimitOverrides { max_memory_mb: Some(16.0), ..Default::default() };
        let capabilities = Capabilities { network: true, ..Default::default() };
        (ex, Definition { name: "p".into(), version: "1".into(), wasm_blob_path: "p.wasm".into(), limits, capabilities, ..Default::default() })
    }

    async fn run(ex: &Arc<Executor>, def: &Definition, input: &str, actor: Option<&str>) -> Result<String, &'static str> {
        let options = CallOptions { actor_id: actor.map(str::to_string), ..Default::default() };
        ex.execute(def, input.to_string(), options).await.map(|o| o.output).map_err(|e| e.code())
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn pollables_kept_are_not_counted_in_the_resource_cap() {
        // componentize-js keeps a pollable per 8 KiB read: a 16 MiB response trapped at 2,048.
        let (ex, def) = executor();
        let n = 4 * MAX_RESOURCES;
        assert_eq!(run(&ex, &def, &format!("{n},0,0,0"), None).await, Ok("1".into()));
        assert_eq!(run(&ex, &def, &format!("0,0,0,{n}"), None).await, Ok("1".into()));
        // Across an actor's calls too (one call's 1 MiB fetch kept 128).
        for _ in 0..8 {
            assert_eq!(run(&ex, &def, &format!("{},0,0,{}", MAX_RESOURCES / 2, MAX_RESOURCES / 2), Some("a")).await, Ok("1".into()));
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn pollables_are_paid_for_from_max_memory_mb() {
        // Each slot is charged once: 16 MiB holds fewer than 65,536 of them (clock pollables take two).
        let (ex, def) = executor();
        assert_eq!(run(&ex, &def, "40000,0,0,0", None).await, Err("OUT_OF_MEMORY"));
        assert_eq!(run(&ex, &def, "0,0,0,70000", None).await, Err("OUT_OF_MEMORY"));
        // Slots of dropped pollables are reused, not charged again.
        assert_eq!(run(&ex, &def, "0,200000,0,0", None).await, Ok("1".into()));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn an_instance_holds_at_most_wasmtimes_100000_handles() {
        // Raised to what the budget pays for pollables, the cap let a guest's own resources (which
        // nothing charges: 20 bytes each in the host) reach 16.9 million (review AK's follow-up).
        let (ex, mut def) = executor();
        def.limits.max_memory_mb = Some(64.0);
        for _ in 0..3 {
            assert_eq!(run(&ex, &def, "0,0,0,30000", Some("c")).await, Ok("1".into()));
        }
        assert_eq!(run(&ex, &def, "0,0,0,30000", Some("c")).await, Err("TRAP"));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn slots_of_dropped_pollables_never_go_to_other_resources() {
        // The attack on a larger cap: make many pollables, drop them, fill their slots with `fields`
        // (128 KiB each in the host).
        let (ex, def) = executor();
        assert_eq!(run(&ex, &def, &format!("5000,0,{},0", MAX_RESOURCES - 16), None).await, Ok("1".into()));
        assert_eq!(run(&ex, &def, &format!("0,10000,{},0", MAX_RESOURCES + 1), None).await, Err("TRAP"));
        assert_eq!(run(&ex, &def, &format!("10000,10000,{},10000", MAX_RESOURCES + 1), None).await, Err("TRAP"));
        // An actor: pollables kept in one call, dropped... (kept ones stay) then fields in the next.
        assert_eq!(run(&ex, &def, "0,10000,0,0", Some("b")).await, Ok("1".into()));
        assert_eq!(run(&ex, &def, &format!("0,0,{},0", MAX_RESOURCES + 1), Some("b")).await, Err("TRAP"));
    }
}
