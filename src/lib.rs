#![deny(clippy::unwrap_used, clippy::expect_used)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]
//! loom-wasm-executor: Loom's `WasmActivityExecutor` on wasmtime.
//!
//! `binding` is the only module that knows napi; everything else is a plain Rust core that
//! `cargo test` drives without Node.

pub mod abi;
pub mod actor_growth;
pub mod actor_store;
pub mod actors;
pub mod artifact_dir;
pub mod artifact_dir_writes;
pub mod artifact_hints;
pub mod artifact_remote;
pub mod artifact_puts;
pub mod artifact_seal;
pub mod artifact_sealing;
pub mod artifact_trailers;
pub mod artifacts;
pub mod call;
pub mod cache_dir_bound;
pub mod cache_state;
pub mod body_walk;
pub mod capabilities;
pub mod code_estimate;
pub mod compile;
pub mod compile_panics;
pub mod compile_slots;
pub mod compile_turns;
pub mod compiled_module;
pub mod component_types;
pub mod digest;
pub mod durable;
pub mod durable_pending;
pub mod engine;
pub mod error;
pub mod executor;
pub mod file_actor_store;
pub mod fiber_stacks;
pub mod vma_query;
pub mod held_dir;
pub mod host;
pub mod host_functions;
pub mod http_client;
pub mod http_pool;
pub mod inline;
pub mod inspect;
pub mod instance;
pub mod initial_images;
pub mod initializers;
pub mod instance_metadata;
pub mod instrument;
pub mod limits;
pub mod module_artifacts;
pub mod modules;
pub mod name_section;
pub mod network;
pub mod open_files;
pub mod path_locks;
pub mod pollables;
pub mod routed_source;
pub mod trim;
pub mod options;
pub mod output;
pub mod permit;
pub mod reaper;
pub mod refused_compiles;
pub mod resolver;
pub mod replay;
pub mod runtime;
pub mod sealed_copy;
pub mod shared_code;
pub mod shape;
pub mod snapshot;
pub mod store;
pub mod store_http;
pub mod text;
pub mod threads;
pub mod tier_up;
pub mod trap_text;
pub mod unpooled_first;
pub mod unpooled_slots;
pub mod unchecked_artifacts;
pub mod untrusted_dir;
pub mod wasi_http;
pub mod wasi_http_kept;
pub mod wasi_file_streams;
pub mod wasi_listing;
pub mod wasi_open;
pub mod wasi_poll;
pub mod warm_up;

#[cfg(test)]
mod test_components;
#[cfg(test)]
mod test_http_components;
#[cfg(test)]
mod test_guests;
#[cfg(test)]
mod test_pages;

// napi registers its exports at load time; test builds leave them unreferenced.
#[cfg_attr(test, allow(dead_code))]
mod binding;
