//! A call's definition, options and input checked and resolved before it waits for anything:
//! its limits, grants, pin, engine, determinism and actor store (`Prepared`).
use super::*;

impl Executor {
    /// The call checked and resolved, or why it cannot run (before any download).
    pub(super) fn prepare(&self, def: &Definition, input: &str, call: &CallOptions) -> Result<Prepared, ExecError> {
        let cancel = &call.cancel;
        if self.closed.load(Ordering::Acquire) {
            return Err(ExecError::Closed);
        }
        let (key, config) = match &call.checked {
            Some(c) => (c.key.clone(), c.config.clone()),
            None => {
                def.validate()?;
                (def.key(), Arc::new(def.config.clone()))
            }
        };
        if let Some(id) = &call.actor_id {
            crate::options::check_length("actorId", id)?;
        }
        let limits = self.opts.defaults.with_overrides(&def.limits)?;
        let size = call.input_bytes.unwrap_or(input.len() as u64);
        if size > limits.max_input_bytes {
            return Err(ExecError::InputTooLarge { size, limit: limits.max_input_bytes });
        }
        if cancel.is_cancelled() {
            return Err(ExecError::Cancelled);
        }
        let kind = if limits.max_fuel.is_some() { EngineKind::Metered } else { EngineKind::Plain };
        let max_depth = limits.max_output_depth;
        let grants = Grants::resolve(&def.capabilities, self.opts.filesystem.as_ref(), &self.opts.env)?;
        let pinned = def.sha256.as_deref().map(parse_digest).transpose()?;
        let durable = match (&call.actor_id, &self.opts.actor_store) {
            (Some(id), Some(store)) => {
                Some(Durable::new(store.clone(), &ActorKey { def: key.clone(), actor_id: id.clone() }, self.opts.persist, self.pending.clone(), self.loading.clone()))
            }
            _ => None,
        };
        Ok(Prepared {
            key,
            limits,
            grants,
            capabilities: def.capabilities.clone(),
            pinned,
            kind,
            transactional: call.transactional.unwrap_or(self.opts.transactional),
            actor_id: call.actor_id.clone(),
            durable,
            ctx: CallContext {
                det: def.deterministic.then(|| Determinism {
                    now_ms: call.now.unwrap_or(0.0),
                    seed: call.seed.unwrap_or(0.0) as u64,
                }),
                progress: Progress { sink: call.progress.clone(), last: Default::default(), max_depth },
                entrypoint: def.entrypoint.clone().unwrap_or_else(|| "execute".into()),
                config,
                abi: def.abi,
                access: HostAccess::default(),
            },
        })
    }
}
