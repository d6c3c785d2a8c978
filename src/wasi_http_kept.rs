//! What a component's `wasi:http` resources hold in the host while its table keeps them
//! (`ComponentWasi::measure_kept`): headers, requests, responses and bodies, counted in an actor's
//! `maxActorMemoryMB` (`GuestInstance::held_bytes`).

use wasmtime::component::Resource;
use wasmtime_wasi_http::p2::bindings::http::types::{HeaderError, HostFields};
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::FieldMap;

use crate::host::HostState;
use crate::wasi_http::{component_wasi, ComponentWasi, BODY_CHUNK_BYTES};

/// What a resource in the table costs the host beside its contents (its entry, its box).
const RESOURCE_BYTES: u64 = 128;
/// What an outgoing body's buffer may hold written and not sent: its channel's chunks (wasmtime-wasi-http's
/// one buffered, one in the channel's slot) of `BODY_CHUNK_BYTES` each.
const BODY_BUFFER_BYTES: u64 = 2 * BODY_CHUNK_BYTES as u64;

/// What a header costs beside its name and value: its entry in the map (a value under a name
/// already there is an `ExtraValue` of 72 bytes in a vector that grows by doubling) and the
/// value's own heap block. At 64, review BO2 measured 101 bytes a value and saw an actor's
/// 2,000 `fields` of 3,000 one-byte values hold 607 MB while counted as 390 MB.
const HEADER_BYTES: u64 = 112;

/// The most header values one measure (`measure_kept`) reads, over all the maps it counts (about
/// 1 ms): each call of a component actor measures its table, outside the call's deadline.
/// Walking every value took 22 ms a call for an actor keeping 6 million (review BO2: calls of
/// `maxExecutionMs: 2` cost ten times that in host CPU, every call).
const MEASURED_VALUES: usize = 1 << 18;

/// What the names and values of a map not read are counted as: a response's head holds at most
/// 100 headers and what the client reads, about 400 KiB; a map of more values is the guest's own,
/// whose names and values wasmtime-wasi-http bounds to 128 KiB with each value counted its size
/// beside (`HeaderValue`'s, 40 bytes).
fn unread_map_bytes(values: usize) -> u64 {
    if values > 100 {
        (128 * 1024usize).saturating_sub(values.saturating_mul(std::mem::size_of::<http::HeaderValue>())) as u64
    } else {
        400 * 1024
    }
}

/// What a header map holds, read while `budget` values are left to read; past it, its bound.
fn fields_bytes(fields: &wasmtime_wasi_http::FieldMap, budget: &mut usize) -> u64 {
    let entries = fields.len() as u64 * HEADER_BYTES;
    if fields.len() > *budget {
        *budget = 0;
        return unread_map_bytes(fields.len()) + entries;
    }
    *budget -= fields.len();
    let names: usize = fields.keys().map(|k| k.as_str().len()).sum();
    let values: usize = fields.values().map(|v| v.len()).sum();
    (names + values) as u64 + entries
}

impl ComponentWasi {
    /// Measures what the headers (`fields`), requests and responses the guest keeps in its table
    /// hold in the host, for an actor's count (`GuestInstance::held_bytes`): up to 128 KiB each
    /// and 2,048 of them, they were counted nowhere, and component actors each keeping 255 MB of
    /// them went past `maxActorMemoryMB` unevicted (review BL2: 12 actors held 3.1 GB under 64 MB).
    /// A request's or response's body holds what was written to it and not sent, up to its
    /// buffer's chunks (review BM1: requests kept after 128 KiB written to each held 3.1 GB over
    /// 12 actors). A header map shared by several resources (a clone, a response's headers)
    /// counts once. At most `MEASURED_VALUES` values are read; maps past them count as full
    /// (`unread_map_bytes`).
    pub fn measure_kept(&mut self) -> u64 {
        use wasmtime_wasi_http::p2::body::HostOutgoingBody;
        use wasmtime_wasi_http::p2::types::{HostIncomingResponse, HostOutgoingRequest, HostOutgoingResponse};
        let mut seen = std::collections::HashSet::new();
        let mut total = 0u64;
        let mut budget = MEASURED_VALUES;
        let mut fields = |f: &wasmtime_wasi_http::FieldMap| -> u64 {
            let map: &http::HeaderMap = f;
            if seen.insert(map as *const http::HeaderMap as usize) { fields_bytes(f, &mut budget) } else { 0 }
        };
        for entry in self.table.iter_mut() {
            let entry: &(dyn std::any::Any + Send) = entry;
            let bytes = if let Some(f) = entry.downcast_ref::<wasmtime_wasi_http::FieldMap>() {
                fields(f)
            } else if let Some(r) = entry.downcast_ref::<HostOutgoingRequest>() {
                let text = r.path_with_query.as_ref().map_or(0, String::len) + r.authority.as_ref().map_or(0, String::len);
                fields(&r.headers) + text as u64 + if r.body.is_some() { BODY_BUFFER_BYTES } else { 0 }
            } else if let Some(r) = entry.downcast_ref::<HostOutgoingResponse>() {
                fields(&r.headers) + if r.body.is_some() { BODY_BUFFER_BYTES } else { 0 }
            } else if let Some(r) = entry.downcast_ref::<HostIncomingResponse>() {
                fields(&r.headers)
            } else if entry.downcast_ref::<HostOutgoingBody>().is_some() {
                BODY_BUFFER_BYTES
            } else {
                continue;
            };
            total = total.saturating_add(bytes + RESOURCE_BYTES);
        }
        self.kept = total;
        total
    }
}

/// The limit of a guest's own `fields` (wasmtime-wasi-http's default, which the executor keeps).
const FIELD_SIZE_LIMIT: usize = 128 * 1024;

/// Shadows `[method]fields.delete` and `[method]fields.set` in a component `linker` (after
/// wasmtime-wasi-http's): a map they make smaller is rebuilt to what it holds. A header map never
/// gives back its room (the `http` crate's maps do not shrink): an actor's 2,000 `fields` filled
/// with 3,000 values each, then emptied by `delete`, held 480 MB counted as nothing, and 1 GB
/// stayed resident after `close()` (review BP1).
pub fn shadow(linker: &mut wasmtime::component::Linker<HostState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let r = linker.instance("wasi:http/types@0.2.12").and_then(|mut types| {
        types.func_wrap(
            "[method]fields.delete",
            |mut store: wasmtime::StoreContextMut<'_, HostState>, (fields, name): (Resource<FieldMap>, String)| {
                let (rep, before) = (fields.rep(), values(store.data_mut(), fields.rep())?);
                let done = HostFields::delete(&mut store.data_mut().http(), fields, name);
                compact(store.data_mut(), rep, before)?;
                Ok((answer(done)?,))
            },
        )?;
        types.func_wrap(
            "[method]fields.set",
            |mut store: wasmtime::StoreContextMut<'_, HostState>, (fields, name, value): (Resource<FieldMap>, String, Vec<Vec<u8>>)| {
                let (rep, before) = (fields.rep(), values(store.data_mut(), fields.rep())?);
                let done = HostFields::set(&mut store.data_mut().http(), fields, name, value);
                compact(store.data_mut(), rep, before)?;
                Ok((answer(done)?,))
            },
        )
    });
    linker.allow_shadowing(false);
    r
}

/// A header operation's answer to the guest: its header error, or the trap it is.
fn answer(done: wasmtime_wasi_http::p2::HeaderResult<()>) -> wasmtime::Result<Result<(), HeaderError>> {
    match done {
        Ok(()) => Ok(Ok(())),
        Err(e) => Ok(Err(e.downcast()?)),
    }
}

/// How many values the map `rep` holds.
fn values(state: &mut HostState, rep: u32) -> wasmtime::Result<usize> {
    let c = component_wasi(&mut state.component);
    Ok(c.table.get(&Resource::<FieldMap>::new_borrow(rep))?.len())
}

/// Rebuilds the map `rep` to what it holds once that is under half the most it held since it
/// was last rebuilt (`before` the operation, or earlier), whatever its size: past a floor of 64
/// values, maps emptied from 64 names kept 10.5 KB each, 21.7 MB an actor counted as 1.25 MB
/// (review BQ1). Halving, not any removal: a guest deleting a map's 1,500 names one by one had it
/// rebuilt 1,500 times, a minute of host CPU for 2,000 maps (its call's deadline); halving keeps
/// the rebuilds' work within twice the values the map took.
fn compact(state: &mut HostState, rep: u32, before: usize) -> wasmtime::Result<()> {
    let HostState { component, access, .. } = state;
    let c = component_wasi(component);
    let map = c.table.get_mut(&Resource::<FieldMap>::new_borrow(rep))?;
    let peak = c.map_peaks.entry(rep).or_insert(0);
    *peak = (*peak).max(before);
    if map.len() * 2 >= *peak {
        return Ok(());
    }
    let peak = std::mem::replace(peak, map.len());
    let old = http::HeaderMap::from(std::mem::take(map));
    // A map the `http` crate cannot make (past its 32,768 entries; a guest's map holds at most
    // 3,276 values within its 128 KiB) stays as it was.
    let (fresh, rebuilt) = match rebuilt_to_size(&old) {
        Some(fresh) => (fresh, true),
        None => (old, false),
    };
    let mut kept = FieldMap::new_immutable(access, fresh);
    kept.set_mutable(FIELD_SIZE_LIMIT);
    *map = kept;
    if rebuilt {
        c.shrunk = c.shrunk.saturating_add(peak as u64 * HEADER_BYTES);
    }
    Ok(())
}

/// `old`'s values, in order, in a map of its size (`None`: the map cannot be made).
fn rebuilt_to_size(old: &http::HeaderMap) -> Option<http::HeaderMap> {
    let mut fresh = http::HeaderMap::try_with_capacity(old.keys_len()).ok()?;
    for (name, value) in old {
        fresh.try_append(name.clone(), value.clone()).ok()?;
    }
    Some(fresh)
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime_wasi_http::FieldMap;

    fn map(values: usize) -> FieldMap {
        let mut m = FieldMap::new_mutable(1 << 20);
        for _ in 0..values {
            m.append_raw(http::HeaderName::from_static("x-a"), http::HeaderValue::from_static("a")).expect("appends");
        }
        m
    }

    #[test]
    fn a_map_made_smaller_is_rebuilt_to_its_size_and_stays_the_guests() {
        // Review BP1: emptied maps kept their room (480 MB an actor), counted as nothing.
        let mut state = HostState::new(1 << 20, None);
        let c = component_wasi(&mut state.component);
        let mut m = FieldMap::new_mutable(FIELD_SIZE_LIMIT);
        for i in 0..1000 {
            m.append_raw(http::HeaderName::from_bytes(format!("x-{i}").as_bytes()).expect("name"), http::HeaderValue::from_static("a")).expect("appends");
        }
        let rep = c.table.push(m).expect("pushed").rep();
        let map = |state: &mut HostState| -> http::HeaderMap { (**component_wasi(&mut state.component).table.get(&Resource::<FieldMap>::new_borrow(rep)).expect("there")).clone() };
        let grown = map(&mut state).capacity();
        for i in 0..990 {
            let c = component_wasi(&mut state.component);
            let m = c.table.get_mut(&Resource::<FieldMap>::new_borrow(rep)).expect("there");
            m.remove_all(&mut state.access, format!("x-{i}")).expect("removes");
        }
        assert_eq!(component_wasi(&mut state.component).table.get(&Resource::<FieldMap>::new_borrow(rep)).expect("there").capacity(), grown, "the map kept its room");
        compact(&mut state, rep, 1000).expect("rebuilt");
        let rebuilt = map(&mut state);
        assert_eq!(rebuilt.len(), 10);
        assert!(rebuilt.capacity() < 64, "{} of {grown}", rebuilt.capacity());
        assert_eq!(rebuilt.get("x-995").map(|v| v.as_bytes()), Some(&b"a"[..]));
        // Still the guest's to change, within its limit.
        let c = component_wasi(&mut state.component);
        let m = c.table.get_mut(&Resource::<FieldMap>::new_borrow(rep)).expect("there");
        m.append(&mut state.access, "x-new".into(), b"b".to_vec()).expect("mutable");
        assert!(m.append(&mut state.access, "x-big".into(), vec![b'c'; FIELD_SIZE_LIMIT]).is_err(), "within its limit");
        // Not under half the most it held since: left as it is.
        compact(&mut state, rep, 11).expect("left");
        assert_eq!(map(&mut state).len(), 11);
        // A small map emptied is rebuilt too (review BQ1: maps emptied from 64 names kept their room).
        let mut small = FieldMap::new_mutable(FIELD_SIZE_LIMIT);
        for i in 0..64 {
            small.append_raw(http::HeaderName::from_bytes(format!("y-{i}").as_bytes()).expect("name"), http::HeaderValue::from_static("a")).expect("appends");
        }
        let c = component_wasi(&mut state.component);
        let small = c.table.push(small).expect("pushed").rep();
        let m = c.table.get_mut(&Resource::<FieldMap>::new_borrow(small)).expect("there");
        for i in 0..64 {
            m.remove_all(&mut state.access, format!("y-{i}")).expect("removes");
        }
        assert!(m.capacity() >= 64, "kept its room");
        compact(&mut state, small, 64).expect("rebuilt");
        assert_eq!(component_wasi(&mut state.component).table.get(&Resource::<FieldMap>::new_borrow(small)).expect("there").capacity(), 0);
    }

    #[test]
    fn a_map_is_read_while_the_measure_has_values_left_and_counts_as_full_after() {
        let m = map(3000);
        let mut budget = 5000;
        assert_eq!(fields_bytes(&m, &mut budget), 3 + 3000 + 3000 * HEADER_BYTES);
        assert_eq!(budget, 2000);
        let bound = fields_bytes(&m, &mut budget);
        assert_eq!(bound, (131_072 - 3000 * 40) + 3000 * HEADER_BYTES, "not read: its bound");
        assert!(bound >= 3 + 3000 + 3000 * HEADER_BYTES, "no less than read");
        assert_eq!(budget, 0);
        assert_eq!(fields_bytes(&map(0), &mut budget), 0);
        assert_eq!(fields_bytes(&map(10), &mut budget), 400 * 1024 + 10 * HEADER_BYTES, "a response's head at most");
    }
}
