// Calls `f(value)` for the addon (a call's `onProgress`): what it throws, and what a promise or
// thenable it returns rejects with, is the caller's bug and is dropped, never an unhandled
// rejection (review BU2: an `async onProgress` that threw ended the process). Its value is not
// waited for. `Promise.resolve` and `then` are taken now, as the addon loads.
(function makeCallQuietly() {
  'use strict'
  const apply = Reflect.apply
  const resolve = Promise.resolve
  const then = Promise.prototype.then
  const ignore = () => {}
  return function callQuietly(f, value) {
    try {
      const r = apply(f, undefined, [value])
      if (r !== null && (typeof r === 'object' || typeof r === 'function')) {
        apply(then, apply(resolve, Promise, [r]), [undefined, ignore])
      }
    } catch {
      // Thrown by `f`, or by a thenable's getters as it is followed.
    }
  }
})()
