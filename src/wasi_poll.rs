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
            if caller.data().det.is_some() {
                if let Some(answer) = virtual_clocks(&mut caller, subs as u32, events as u32, n as u32, out as u32)? {
                    return Ok(answer);
                }
            }
            let (ctx, mut mem) = crate::wasi_open::parts(&mut caller)?;
            p1::poll_oneoff(ctx, &mut mem, subs, events, n, out).await
        })
    })
    .map(|_| ());
    linker.allow_shadowing(false);
    r
}

/// The size of a subscription and of an event in guest memory (`wasi_snapshot_preview1`).
const SUBSCRIPTION: usize = 48;
const EVENT: usize = 32;

/// A deterministic call's poll of clocks only: every deadline passes at once, as a component's
/// do (`pollables`), and each subscription's event is written in order. On real time, the
/// events one poll returned hung on scheduling (review BK1: 40 polls of a 1 ms and a 2 ms
/// deadline returned two events 1 to 5 times, run to run), and each poll slept. `None` when a
/// subscription is a descriptor's: that poll waits on the descriptors as any call's does.
///
/// Its arguments are taken in wasmtime-wasi's order (reviews BL1, BM1): each subscription read
/// and checked in turn (out of bounds or misaligned traps; an unknown tag, clock or flag is
/// `EINVAL`, before the events or `out` are looked at), then each event written in turn after its
/// subscription is read again (an event buffer over the subscriptions reads what the events
/// before wrote), then `out`. What still differs: a subscription that an event before it turned
/// into a descriptor's gets a clock's event here.
fn virtual_clocks(caller: &mut Caller<'_, HostState>, subs: u32, events: u32, n: u32, out: u32) -> wasmtime::Result<Option<i32>> {
    if n == 0 {
        return Ok(Some(Errno::Inval as i32));
    }
    let Some(wasmtime::Extern::Memory(memory)) = caller.get_export("memory") else { return Ok(None) };
    let (subs, events, n, out) = (subs as usize, events as usize, n as usize, out as usize);
    let data = memory.data_mut(&mut *caller);
    let len = data.len();
    // Where a `size`-byte value of `align` lies, or the trap wasmtime-wasi's pointer checks make.
    let at = |base: usize, i: usize, size: usize, align: usize| -> wasmtime::Result<usize> {
        let start = i.checked_mul(size).and_then(|o| base.checked_add(o)).filter(|s| s.checked_add(size).is_some_and(|end| end <= len));
        let Some(start) = start else { return Err(wasmtime::Error::msg("Pointer out of bounds")) };
        if start % align != 0 {
            return Err(wasmtime::Error::msg(format!("Pointer not aligned to {align}: {start:#x}")));
        }
        Ok(start)
    };
    // What a subscription is: a clock's (`Some(Ok)`), a descriptor's (`None`), or `EINVAL`.
    let check = |sub: &[u8]| -> Option<Result<(), i32>> {
        // The tag: 0 a clock, 1 and 2 a descriptor's read and write.
        match sub[8] {
            0 => {}
            1 | 2 => return None,
            _ => return Some(Err(Errno::Inval as i32)),
        }
        // Realtime and monotonic only, as wasmtime-wasi takes, and the one flag there is
        // (`subscription_clock_abstime`).
        let clock = u32::from_le_bytes([sub[16], sub[17], sub[18], sub[19]]);
        let flags = u16::from_le_bytes([sub[40], sub[41]]);
        Some(if clock > 1 || flags & !1 != 0 { Err(Errno::Inval as i32) } else { Ok(()) })
    };
    for i in 0..n {
        let s = at(subs, i, SUBSCRIPTION, 8)?;
        match check(&data[s..s + SUBSCRIPTION]) {
            None => return Ok(None),
            Some(Err(errno)) => return Ok(Some(errno)),
            Some(Ok(())) => {}
        }
    }
    for i in 0..n {
        let s = at(subs, i, SUBSCRIPTION, 8)?;
        if let Some(Err(errno)) = check(&data[s..s + SUBSCRIPTION]) {
            return Ok(Some(errno));
        }
        let mut userdata = [0u8; 8];
        userdata.copy_from_slice(&data[s..s + 8]);
        let e = at(events, i, EVENT, 8)?;
        let event = &mut data[e..e + EVENT];
        event[..8].copy_from_slice(&userdata);
        // error 0 (success), type 0 (clock), nbytes 0, flags 0; the padding as it was.
        event[8..11].fill(0);
        event[16..26].fill(0);
    }
    let o = at(out, 0, 4, 4)?;
    data[o..o + 4].copy_from_slice(&(n as u32).to_le_bytes());
    Ok(Some(Errno::Success as i32))
}
