//! Tests of `modules`' cache slots: how newer code (a tier-up, a pooled copy) takes a slot.
use super::*;

/// The echo guest compiled anew (a module of its own), counted as `bytes` of code.
fn echo(bytes: usize) -> Arc<CompiledModule> {
    let mut m = crate::modules::compile(&crate::test_guests::echo(), EngineKind::Plain, &Default::default()).expect("compiles");
    m.code_bytes = bytes;
    Arc::new(m)
}

fn cache(max_bytes: usize) -> ModuleCache {
    ModuleCache::new(NonZeroUsize::new(8).expect("nonzero"), max_bytes, ArtifactCache::default(), LoadLimits::default(), false, false)
}

#[test]
fn newer_code_takes_a_slot_only_from_the_code_it_replaces() {
    let cache = cache(1 << 30);
    let mut st = cache.state.lock().unwrap_or_else(|p| p.into_inner());
    let slot = ([1u8; 32], EngineKind::Plain);
    let first = echo(100);
    st.insert(None, slot, first.clone());
    // The slot still holds the code the newer code replaces: taken, and the bytes follow.
    let second = echo(250);
    assert!(st.swap(&slot, &Arc::downgrade(&first), second.clone()));
    assert!(st.holds(&slot, &Arc::downgrade(&second)));
    assert_eq!(st.stats.code_bytes, 250);
    // Newer code of `first` arriving late (it was replaced meanwhile): refused, nothing moves.
    assert!(!st.swap(&slot, &Arc::downgrade(&first), echo(400)));
    assert!(st.holds(&slot, &Arc::downgrade(&second)));
    assert_eq!(st.stats.code_bytes, 250);
    // The slot is gone (cleared, evicted): refused.
    st.remove(&slot);
    assert!(!st.swap(&slot, &Arc::downgrade(&second), echo(400)));
    assert_eq!(st.stats.code_bytes, 0);
}

#[test]
fn newer_code_that_pushes_the_cache_past_its_bytes_may_push_its_own_slot_out() {
    let cache = cache(1000);
    let mut st = cache.state.lock().unwrap_or_else(|p| p.into_inner());
    let (old_slot, new_slot) = (([1u8; 32], EngineKind::Plain), ([2u8; 32], EngineKind::Plain));
    let old = echo(300);
    st.insert(None, old_slot, old.clone());
    st.insert(None, new_slot, echo(300));
    // The swap is no use of the slot: it stays the least recently used, and goes first when
    // its larger code takes the cache past 1000 bytes.
    assert!(!st.swap(&old_slot, &Arc::downgrade(&old), echo(900)));
    assert!(st.lru.peek(&old_slot).is_none());
    assert!(st.lru.peek(&new_slot).is_some());
    assert_eq!(st.stats.code_bytes, 300);
}
