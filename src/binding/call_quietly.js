// Calls `f(value)` for the addon (a call's `onProgress`): what it throws, and what a promise or
// thenable it returns rejects with, is the caller's bug and is dropped, never an unhandled
// rejection (review BU2: an `async onProgress` that threw ended the process). Its value is not
// waited for. `isPromise` is V8's own test (from the addon: it runs no code of the value's);
// `Promise` and its methods are taken now, as the addon loads.
(function makeCallQuietly(isPromise) {
  'use strict'
  const apply = Reflect.apply
  const TruePromise = Promise
  const resolve = Promise.resolve
  const then = Promise.prototype.then
  const own = Object.getOwnPropertyDescriptor
  const define = Object.defineProperty
  const remove = Reflect.deleteProperty
  const ignore = () => {}
  // A handler on the promise itself. `then` first asks the promise for its `constructor`, and
  // that for its species, which a subclass or an own `constructor` can make throw: the promise
  // was left without a handler (review BV1). So for the attachment its own `constructor` is
  // Promise, and after it what it was. A promise is an ordinary object: no trap runs here.
  const handle = (p) => {
    let before
    try {
      before = own(p, 'constructor')
      define(p, 'constructor', { value: TruePromise, configurable: true, writable: true })
    } catch {
      // Frozen, or a `constructor` of its own that cannot change: taken as it is.
      try {
        apply(then, p, [undefined, ignore])
      } catch {}
      return
    }
    try {
      apply(then, p, [undefined, ignore])
    } catch {}
    try {
      if (before === undefined) remove(p, 'constructor')
      else define(p, 'constructor', before)
    } catch {}
  }
  return function callQuietly(f, value) {
    let r
    try {
      r = apply(f, undefined, [value])
    } catch {
      return
    }
    try {
      if (isPromise(r)) handle(r)
      // A thenable's own rejection is no promise's: followed by a promise of ours, handled.
      else if (r !== null && (typeof r === 'object' || typeof r === 'function')) apply(then, apply(resolve, TruePromise, [r]), [undefined, ignore])
    } catch {}
  }
})
