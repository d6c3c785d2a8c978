//! Instances outside the instance pool, process-wide: at most `MAX_UNPOOLED` live at once, and
//! together at most the memory mappings the pool leaves of the process's budget
//! (`engine::MAPPINGS_BUDGET`), each counted for what it may map (`mappings_of`).
//!
//! Calls with `maxFuel`, calls on baseline code during a tier-up and a fresh process's first calls
//! on an artifact are not pooled: each such instance maps its own linear memory (with its
//! 4 GiB reservation), tables and stack, about six memory mappings. Nothing bounded them but
//! `maxActors` and the calls' own count: review P parked 12,000 `maxFuel` calls in an async host
//! function, the process reached `vm.max_map_count` (65,530 mappings), calls failed as
//! `INVALID_MODULE` or `TRAP`, and Node aborted (V8 could not map its heap; a wasmtime munmap
//! panicked in a destructor). Past the cap an instantiation is `BUSY` (retryable), as a full
//! pool is, after idle actors outside the pool are evicted to make room. A later review parked
//! `maxFuel` calls of an 844-byte component with 16 memories: ~70 mappings each, and 911 of them
//! took the process to the limit (a wasmtime munmap panicked), under the 2,000 count: so they are
//! counted in mappings too.

use std::sync::Mutex;

use crate::error::ExecError;

/// Live instances outside the pool the process allows at most: 8 TiB of address space.
pub const MAX_UNPOOLED: usize = 2000;

/// Memory mappings an instance outside the pool may hold: its fiber stacks with their guard
/// pages (a second one while a call waits after a host function's text result) and one more, four
/// per memory (its reservation, split around a data image mapped into it) and one per table
/// (measured: 8-9 for one memory and one table, 69.6 for 16 memories).
pub fn mappings_of(memories: u32, tables: u32) -> usize {
    5 + 4 * memories as usize + tables as usize
}

/// The mappings instances outside the pool may hold together beside a pool of `pool` instances.
pub fn mappings_room_for(pool: u32) -> usize {
    crate::engine::MAPPINGS_BUDGET.saturating_sub(crate::engine::pool_mappings(pool))
}

/// Live instances outside the pool, and the mappings they may hold.
#[derive(Debug, Default)]
struct Counts {
    instances: usize,
    mappings: usize,
}

impl Counts {
    /// Counts one more instance that may map `mappings`, unless that passes `MAX_UNPOOLED` or
    /// `room`; `BUSY` then.
    fn take(&mut self, mappings: usize, room: usize) -> Result<(), ExecError> {
        if self.instances >= MAX_UNPOOLED || self.mappings + mappings > room {
            return Err(ExecError::Busy(format!(
                "{} instances outside the instance pool are live in this process, holding up to {} memory mappings of the {room} they may (maxFuel calls, calls during a tier-up); retry when some have ended",
                self.instances, self.mappings
            )));
        }
        self.instances += 1;
        self.mappings += mappings;
        Ok(())
    }

    fn give_back(&mut self, mappings: usize) {
        self.instances = self.instances.saturating_sub(1);
        self.mappings = self.mappings.saturating_sub(mappings);
    }
}

static LIVE: Mutex<Counts> = Mutex::new(Counts { instances: 0, mappings: 0 });

fn live_counts() -> std::sync::MutexGuard<'static, Counts> {
    LIVE.lock().unwrap_or_else(|p| p.into_inner())
}

/// One live instance outside the pool, counted until dropped.
#[derive(Debug)]
pub struct UnpooledSlot(usize);

impl UnpooledSlot {
    /// A slot for an instance that may map `mappings` (`mappings_of`), or `BUSY` when
    /// `MAX_UNPOOLED` instances outside the pool are live or their mappings would pass the room
    /// the pool leaves (the pool's size is fixed before any instance is made).
    pub fn take(mappings: usize) -> Result<UnpooledSlot, ExecError> {
        let room = mappings_room_for(crate::engine::pool_size());
        live_counts().take(mappings, room)?;
        Ok(UnpooledSlot(mappings))
    }
}

impl Drop for UnpooledSlot {
    fn drop(&mut self) {
        live_counts().give_back(self.0);
    }
}

/// Instances outside the pool live now.
pub fn live() -> usize {
    live_counts().instances
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_outside_the_pool_count_for_the_mappings_they_may_hold() {
        let room = mappings_room_for(crate::engine::MAX_POOL_INSTANCES);
        let mut c = Counts::default();
        // A one-memory guest: many fit beside the largest pool.
        let small = mappings_of(1, 1);
        let mut n = 0;
        while c.take(small, room).is_ok() {
            n += 1;
        }
        assert_eq!(n, room / small);
        // A component of 16 memories counts for them: far fewer fit (review: ~70 mappings each,
        // 911 of them reached the process's limit while the count of instances allowed 2,000).
        let mut c = Counts::default();
        let big = mappings_of(16, 16);
        let mut m = 0;
        while c.take(big, room).map_err(|e| e.code()) == Ok(()) {
            m += 1;
        }
        assert!(m * 64 <= room && m < n / 5, "{m} of {n}");
        // What goes back makes room again; the count of instances still caps small ones.
        c.give_back(big);
        assert!(c.take(big, room).is_ok());
        let mut c = Counts::default();
        for _ in 0..MAX_UNPOOLED {
            c.take(1, usize::MAX).expect("under the count");
        }
        assert_eq!(c.take(1, usize::MAX).map_err(|e| e.code()), Err("BUSY"));
    }

    #[test]
    fn a_component_counts_every_memory_it_instantiates() {
        let mut wat = String::from("(component (core module $m (memory (export \"m\") 1))");
        for i in 0..16 {
            wat.push_str(&format!(" (core instance $i{i} (instantiate $m))"));
        }
        wat.push(')');
        let bytes = wat::parse_str(&wat).expect("parses");
        let engine = crate::engine::engine(crate::engine::EngineKind::Metered).expect("engine");
        let component = wasmtime::component::Component::new(engine, &bytes).expect("compiles");
        let r = component.resources_required().expect("known before instantiation");
        assert_eq!(r.num_memories, 16);
        assert!(mappings_of(r.num_memories, r.num_tables) >= 16 * 4);
    }
}
