//! Store writes under way after their calls resolved (`persist: 'async'` snapshots, a dropped
//! actor's delete) keep Node's event loop alive, as `close()` waits for them: a process whose main
//! thread ended on its own once its calls resolved lost steps those calls had acknowledged
//! (review BV2). A weak (unref'd) function per executor with an actor store is held (ref'd)
//! while writes are under way and let go once none is.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi::{sys, Env, Status};

use crate::durable_pending::WritesWatch;
use crate::executor::Executor;

type Holder = ThreadsafeFunction<(), (), (), Status, false, true>;

struct Watch {
    holder: Holder,
    /// The environment the executor was made in: `hold_here` is called on its thread only.
    env: usize,
}

impl WritesWatch for Watch {
    fn changed(&self) {
        // Its callback looks again on the JS thread (held meanwhile if it was).
        let _ = self.holder.call((), ThreadsafeFunctionCallMode::NonBlocking);
    }

    fn hold_here(&self) {
        // SAFETY: called on the thread of `env` (after a call settled there, or a drop returned),
        // with the function it made, which the executor keeps alive.
        unsafe { sys::napi_ref_threadsafe_function(self.env as sys::napi_env, self.holder.raw()) };
    }
}

/// Makes `inner`'s writes hold the event loop of `env` while they are under way.
pub fn watch(env: &Env, inner: &Arc<Executor>) -> napi::Result<()> {
    let executor = Arc::downgrade(inner);
    let raw = Arc::new(AtomicUsize::new(0));
    let own = raw.clone();
    let f = env.create_function_from_closure::<(), (), _>("loomStoreWrites", move |ctx| {
        let function = own.load(Ordering::Acquire) as sys::napi_threadsafe_function;
        if !function.is_null() {
            let writing = executor.upgrade().is_some_and(|e| e.writing());
            // SAFETY: on the JS thread, with the function this callback belongs to.
            unsafe {
                if writing {
                    sys::napi_ref_threadsafe_function(ctx.env.raw(), function);
                } else {
                    sys::napi_unref_threadsafe_function(ctx.env.raw(), function);
                }
            }
        }
        Ok(())
    })?;
    let holder: Holder = f.build_threadsafe_function::<()>().callee_handled::<false>().weak::<true>().build()?;
    raw.store(holder.raw() as usize, Ordering::Release);
    inner.watch_writes(Arc::new(Watch { holder, env: env.raw() as usize }));
    Ok(())
}
