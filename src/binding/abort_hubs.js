// The hub (see abort.rs) of each AbortSignal calls were given: `hubs(signal)` reads it,
// `hubs(signal, hub)` sets it. Keyed weakly: a signal that goes takes its hub along. The
// WeakMap's methods are taken as the addon loads.
(function makeHubs() {
  'use strict'
  const map = new WeakMap()
  const get = WeakMap.prototype.get
  const set = WeakMap.prototype.set
  const apply = Reflect.apply
  return function hubs(signal, hub) {
    if (hub === undefined) return apply(get, map, [signal])
    apply(set, map, [signal, hub])
  }
})()
