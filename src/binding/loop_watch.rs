//! The event-loop watch behind inline starts (see `inline`): when a chain of inline calls begins
//! on a JS thread, a marker is queued on that thread's event loop; when it runs, the loop has
//! turned. One weak (unref'd) marker per JS thread, so it never keeps Node alive.

use std::cell::RefCell;

use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi::{Env, Status};

use crate::inline;

type Marker = ThreadsafeFunction<(), (), (), Status, false, true>;

thread_local! {
    static MARKER: RefCell<Option<Marker>> = const { RefCell::new(None) };
}

/// Queues the marker on this thread's loop; false if it cannot be.
fn queue_marker(env: &Env) -> bool {
    MARKER.with(|m| {
        if m.borrow().is_none() {
            let built = env
                .create_function_from_closure::<(), (), _>("loomLoopMarker", |_| Ok(()))
                .and_then(|f| f.build_threadsafe_function::<()>().callee_handled::<false>().weak::<true>().build());
            *m.borrow_mut() = built.ok();
        }
        m.borrow().as_ref().is_some_and(|marker| {
            marker.call_with_return_value((), ThreadsafeFunctionCallMode::NonBlocking, |_, _| {
                inline::loop_turned();
                Ok(())
            }) == Status::Ok
        })
    })
}

/// Before a call on the JS thread: starts timing a chain of inline calls if none is being timed.
pub fn before_call(env: &Env) {
    if !inline::watch_loop() {
        return;
    }
    if !queue_marker(env) {
        // No marker (the environment is going away): nothing to time the chain by.
        inline::loop_turned();
    }
}
