//! The WASI command ABI (the Javy / Shopify Functions convention): a WASI program whose `_start`
//! reads the input JSON on stdin and writes its output JSON on stdout. stderr lines go to `onLog`
//! (`warn`); an exit code other than 0 is `GUEST_ERROR` with the tail of stderr. stdout and
//! stderr are capped (`maxOutputBytes`, a write past it ends the program; 64 KiB of stderr for
//! `onLog` and its last 8 KiB for the error, see `wasi_command_stdio`). Its WASI context holds the
//! stdio pipes and nothing the definition did not ask for (env, filesystem). A command is a
//! one-shot program: it has no state between runs, so it runs stateless only (an actor call is
//! refused) and cannot call host functions.

use wasmtime::{Instance, Module, Store};
use wasmtime_wasi::p2::pipe::MemoryInputPipe;

use super::wasi_command_stdio::{Stderr, Stdout};

use crate::capabilities::Grants;
use crate::error::ExecError;
use crate::host::HostState;
use crate::replay::Determinism;

pub use super::wasi_command_stdio::MAX_STDERR_BYTES;
const TAIL_CHARS: usize = 2000;

/// Whether a core module is a WASI command: it exports `_start` and its memory.
pub fn check(module: &Module) -> Result<(), String> {
    super::has_func(module, "_start", &[], &[])?;
    super::has_memory(module)?;
    if !module.imports().any(|i| i.module() == crate::host::WASI_P1) {
        return Err(format!("imports nothing from {}", crate::host::WASI_P1));
    }
    Ok(())
}

/// Runs `_start` with `input` on stdin; stdout as text.
pub async fn call(
    store: &mut Store<HostState>,
    instance: &Instance,
    grants: &Grants,
    det: Option<&Determinism>,
    input: &str,
    max_output_bytes: u64,
    classify: impl Fn(wasmtime::Error) -> ExecError,
) -> Result<String, ExecError> {
    let start = instance
        .get_typed_func::<(), ()>(&mut *store, "_start")
        .map_err(|_| ExecError::MissingExport("the module does not export `_start` as () -> ()".into()))?;
    // stdout is UTF-8, the limit UTF-16 bytes: a character takes at most three halves as many
    // bytes here. A write past that ends the program: the output is over the limit.
    let capacity = (max_output_bytes.saturating_mul(3) / 2).saturating_add(4);
    let stdout = Stdout::new(capacity.min(usize::MAX as u64) as usize, max_output_bytes);
    let stderr = Stderr::default();
    let stdin = MemoryInputPipe::new(input.as_bytes().to_vec());
    store.data_mut().wasi = Some(Box::new(grants.wasi_context_with_stdio(det, stdin, stdout.clone(), stderr.clone())?));
    store.data_mut().paths = grants.path_lock();
    let result = start.call_async(&mut *store, ()).await;
    // The program has ended: its context goes now, with its pipes' contents (stdin's copy of the
    // input; stdout and stderr are read through the clones here), not whenever the Store does.
    store.data_mut().wasi = None;
    let (head, tail, dropped) = stderr.contents();
    let head = String::from_utf8_lossy(&head).into_owned();
    {
        let host = store.data_mut();
        for line in head.lines().filter(|l| !l.is_empty()) {
            host.emit("warn", line);
        }
        if dropped + tail.len() as u64 > 0 {
            host.emit("warn", &format!("({} more bytes of stderr not logged)", dropped + tail.len() as u64));
        }
    }
    // The error's tail: stderr's end, past its head if there was more.
    let err_text = if tail.is_empty() { head } else { String::from_utf8_lossy(&tail).into_owned() };
    let exit = match result {
        Ok(()) => 0,
        Err(e) => match e.downcast_ref::<wasmtime_wasi::I32Exit>() {
            Some(code) => code.0,
            None => return Err(classify(e)),
        },
    };
    if exit != 0 {
        let tail: String = {
            let chars: Vec<char> = err_text.chars().collect();
            chars[chars.len().saturating_sub(TAIL_CHARS)..].iter().collect()
        };
        return Err(ExecError::GuestError {
            message: if tail.trim().is_empty() { format!("exit code {exit}") } else { format!("exit code {exit}: {}", tail.trim_end()) },
            exit_code: Some(exit),
        });
    }
    let out = stdout.contents();
    if crate::text::surely_over(out.len() as u64, max_output_bytes) {
        return Err(ExecError::OutputTooLarge { size: out.len() as u64 * 2 / 3, limit: max_output_bytes });
    }
    let text = String::from_utf8(out.to_vec()).map_err(|e| ExecError::InvalidOutput {
        message: format!("the program's stdout is not UTF-8: {e}"),
        preview: String::from_utf8_lossy(&out[..out.len().min(200)]).into_owned(),
    })?;
    crate::text::check_output_size(&text, max_output_bytes)?;
    Ok(text)
}
