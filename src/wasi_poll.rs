//! Preview 1's `poll_oneoff`, bounded in its subscriptions.
//!
//! wasmtime-wasi makes a deadline or a table entry and a boxed future for every subscription, in
//! one go that no deadline can stop and no memory cap counts (about 550 bytes each, up to its
//! table's million entries): review BB1 had one call of a guest capped at 24 MiB take 260 MiB of
//! host memory and 0.5 s past its 20 ms `maxExecutionMs`. A poll of more than
//! `MAX_SUBSCRIPTIONS` is `EINVAL`, as an OS refuses a `poll()` of more descriptors than a
//! process may hold.

use wasmtime::{Caller, Linker};
use wasmtime_wasi::p1::types::Errno;
use wasmtime_wasi::p1::wasi_snapshot_preview1 as p1;

use crate::host::{HostState, WASI_P1 as P1};

/// The most subscriptions one `poll_oneoff` takes (about 2 MiB of host memory, a few ms).
pub const MAX_SUBSCRIPTIONS: u32 = 4096;

/// Shadows `poll_oneoff` in a core module's `linker` (after `p1::add_to_linker_async`).
pub fn shadow_p1(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let r = linker.func_wrap_async(P1, "poll_oneoff", |mut caller: Caller<'_, HostState>, (subs, events, n, out): (i32, i32, i32, i32)| {
        Box::new(async move {
            if n as u32 > MAX_SUBSCRIPTIONS {
                return Ok(Errno::Inval as i32);
            }
            let (ctx, mut mem) = crate::wasi_open::parts(&mut caller)?;
            p1::poll_oneoff(ctx, &mut mem, subs, events, n, out).await
        })
    })
    .map(|_| ());
    linker.allow_shadowing(false);
    r
}
