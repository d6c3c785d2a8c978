// Whether `o[k]` comes from Object.prototype (js::inherited_from_object, and fast_paths.js's
// reads): a key someone added there (a prototype pollution elsewhere in the process) is no field
// of a definition and no option. The walk is JS's own (Object.getPrototypeOf, Object.hasOwn,
// taken when the addon loads): through Node-API, a Proxy's prototype reads as null, and any
// Proxy passed what the pollution put there. A Proxy's traps run as they would for the read.
// Another realm's Object.prototype (a `vm` context, Jest's or vitest's VM pools) is not this
// one: the last prototype of any chain, the one whose own prototype is null, counts as an
// Object.prototype (review BH2: a vm context's `Object.prototype.capabilities` was obeyed).
(function makeInherited() {
  'use strict'
  const objectPrototype = Object.prototype
  const hasOwn = Object.hasOwn
  const prototypeOf = Object.getPrototypeOf
  const isArray = Array.isArray
  // Reaching one of those, the value read is theirs only if they hold the key: a Proxy's `get`
  // trap answers without any own key (review BU2: `new Proxy({}, { get })` as `limits` read
  // `maxFuel` 5 in JS, and the limit was dropped as Object.prototype's).
  return function inherited(o, k) {
    for (let p = o, n = 0; p !== null; n++) {
      if (p === objectPrototype) return k in p
      const next = prototypeOf(p)
      if (next === null && p !== o) return k in p
      // Any realm's Function.prototype or Array.prototype (right under that realm's
      // Object.prototype; Function.prototype has no own `prototype`), under a definition or options
      // that are a function or an array (review BI1); a class or array of the caller's own counts
      // (review BJ1: a base class's static limits were dropped).
      if (p !== o && next !== null && prototypeOf(next) === null) {
        if ((typeof p === 'function' && !hasOwn(p, 'prototype')) || isArray(p)) return k in p
      }
      if (hasOwn(p, k)) return false
      if (n === 10000) throw new TypeError('its prototype chain does not end')
      p = next
    }
    return false
  }
})()
