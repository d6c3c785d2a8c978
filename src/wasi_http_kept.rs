//! What a component's `wasi:http` resources hold in the host while its table keeps them
//! (`ComponentWasi::measure_kept`): headers, requests, responses and bodies, counted in an actor's
//! `maxActorMemoryMB` (`GuestInstance::held_bytes`).

use crate::wasi_http::{ComponentWasi, BODY_CHUNK_BYTES};

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
