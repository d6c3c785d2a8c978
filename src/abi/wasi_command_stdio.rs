//! A WASI command's stdout and stderr, kept in memory.
//!
//! stdout is the program's output: a write past what `maxOutputBytes` allows ends the program
//! there with `OUTPUT_TOO_LARGE`. (wasmtime-wasi's memory pipe answered it with an I/O error the
//! program could handle its own way: a Rust program's `write_all(..).expect(..)` panicked, and
//! the call was a `TRAP`, review AS2.) stderr is a log: every write succeeds, the first
//! `MAX_STDERR_BYTES` go to `onLog` and the last `TAIL_BYTES` into a failed run's error, the rest
//! is counted and dropped. (The memory pipe failed writes past 64 KiB, so a chatty program that
//! checked its writes failed for its logging.)

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

use crate::error::ExecError;

/// stderr kept per run for `onLog`.
pub const MAX_STDERR_BYTES: usize = 64 * 1024;
/// stderr's end kept per run for a failed run's error.
pub const TAIL_BYTES: usize = 8 * 1024;

#[derive(Clone)]
pub struct Stdout {
    bytes: Arc<Mutex<Vec<u8>>>,
    /// Bytes it takes; one more ends the program.
    capacity: usize,
    /// `maxOutputBytes`, for the error.
    limit: u64,
}

impl Stdout {
    pub fn new(capacity: usize, limit: u64) -> Stdout {
        Stdout { bytes: Default::default(), capacity, limit }
    }

    pub fn contents(&self) -> Vec<u8> {
        std::mem::take(&mut *self.bytes.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn take(&self, data: &[u8]) -> Result<(), ExecError> {
        let mut bytes = self.bytes.lock().unwrap_or_else(|p| p.into_inner());
        let total = bytes.len() as u64 + data.len() as u64;
        if total > self.capacity as u64 {
            // At least this many UTF-16 bytes (a UTF-8 byte is at least two thirds of one).
            return Err(ExecError::OutputTooLarge { size: total * 2 / 3, limit: self.limit });
        }
        bytes.extend_from_slice(data);
        Ok(())
    }
}

#[derive(Clone, Default)]
pub struct Stderr(Arc<Mutex<StderrState>>);

#[derive(Default)]
struct StderrState {
    head: Vec<u8>,
    tail: std::collections::VecDeque<u8>,
    dropped: u64,
}

impl Stderr {
    /// The first `MAX_STDERR_BYTES`, the last `TAIL_BYTES`, and how many bytes of neither.
    pub fn contents(&self) -> (Vec<u8>, Vec<u8>, u64) {
        let mut s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let tail = s.tail.drain(..).collect();
        (std::mem::take(&mut s.head), tail, s.dropped)
    }

    fn take(&self, data: &[u8]) {
        let mut s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let room = MAX_STDERR_BYTES.saturating_sub(s.head.len()).min(data.len());
        s.head.extend_from_slice(&data[..room]);
        // The tail is what came after the head: the head's own end is not a tail of it.
        let rest = &data[room..];
        let keep = rest.len().min(TAIL_BYTES);
        let out = (s.tail.len() + keep).saturating_sub(TAIL_BYTES);
        s.dropped += (rest.len() - keep + out) as u64;
        s.tail.drain(..out);
        s.tail.extend(&rest[rest.len() - keep..]);
    }
}

/// What a write may be at most: wasmtime-wasi's preview 1 writes stdio 4 KiB at a time.
const WRITE_BUDGET: usize = 64 * 1024;

macro_rules! stream_impls {
    ($t:ty, |$s:ident, $data:ident| $take:expr) => {
        impl IsTerminal for $t {
            fn is_terminal(&self) -> bool {
                false
            }
        }

        impl StdoutStream for $t {
            fn p2_stream(&self) -> Box<dyn OutputStream> {
                Box::new(self.clone())
            }
            fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
                Box::new(self.clone())
            }
        }

        #[async_trait::async_trait]
        impl Pollable for $t {
            async fn ready(&mut self) {}
        }

        impl OutputStream for $t {
            fn write(&mut self, $data: Bytes) -> Result<(), StreamError> {
                let $s = &*self;
                let $data: &[u8] = &$data;
                $take.map_err(|e: ExecError| StreamError::Trap(wasmtime::Error::new(e)))
            }
            fn flush(&mut self) -> Result<(), StreamError> {
                Ok(())
            }
            fn check_write(&mut self) -> Result<usize, StreamError> {
                Ok(WRITE_BUDGET)
            }
        }

        impl tokio::io::AsyncWrite for $t {
            fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, $data: &[u8]) -> Poll<std::io::Result<usize>> {
                let $s = &*self;
                let n = $data.len();
                Poll::Ready($take.map(|()| n).map_err(|e: ExecError| std::io::Error::other(e.to_string())))
            }
            fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
                Poll::Ready(Ok(()))
            }
            fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
                Poll::Ready(Ok(()))
            }
        }
    };
}

stream_impls!(Stdout, |s, data| s.take(data));
stream_impls!(Stderr, |s, data| {
    s.take(data);
    Ok(())
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdout_takes_up_to_its_capacity_and_refuses_past_it() {
        let mut out = Stdout::new(10, 6);
        assert!(OutputStream::write(&mut out, Bytes::from_static(b"0123456789")).is_ok());
        match OutputStream::write(&mut out, Bytes::from_static(b"x")) {
            Err(StreamError::Trap(e)) => {
                assert!(matches!(e.downcast_ref::<ExecError>(), Some(ExecError::OutputTooLarge { size: 7, limit: 6 })), "{e}")
            }
            _ => panic!("refused"),
        }
        assert_eq!(out.contents(), b"0123456789");
    }

    #[test]
    fn stderr_takes_every_write_keeping_its_head_and_tail() {
        let mut err = Stderr::default();
        for _ in 0..100 {
            assert!(OutputStream::write(&mut err, Bytes::from(vec![b'h'; 1000])).is_ok());
        }
        for i in 0..20u8 {
            assert!(OutputStream::write(&mut err, Bytes::from(vec![b'a' + i; 1000])).is_ok());
        }
        let (head, tail, dropped) = err.contents();
        assert_eq!(head, vec![b'h'; MAX_STDERR_BYTES]);
        assert_eq!(tail.len(), TAIL_BYTES);
        assert_eq!(tail.last(), Some(&(b'a' + 19)));
        assert_eq!(tail[0], b'a' + 11, "the last 8 KiB: 192 bytes of the 12th write, then 8 whole ones");
        assert_eq!(head.len() as u64 + tail.len() as u64 + dropped, 120_000);
    }
}
