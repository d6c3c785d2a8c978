// The JS half of options.hostFunctions, compiled once per executor (src/binding/js_host.rs).
// Given the user's functions, the native `done(id, error, text)` and the native `wanted(id)`
// (whether the activity call is still waiting for it), it returns `call` (run one host call, if
// still wanted: JSON.parse the guest's input, call the function with { activity, actorId,
// signal }, settle with JSON.stringify of its value, awaited if it is a thenable; text longer
// than the call's maxInputBytes is refused here, before Rust copies it) and `abort`
// (the call ended first: fire its signal). Nothing the user's function does (throw, reject, return a
// value JSON cannot hold, a `then` getter or a promise's own `then` or `constructor` that
// throws) escapes: each settles the call as an error.
(function makeHostDispatcher(fns, done, wanted) {
  'use strict'
  const table = new Map()
  // One that lists a key per element (an array, a typed array, a String object, a Proxy around
  // one) is refused before its keys are listed (review BJ1: a Uint8Array(1e8) held the
  // constructor 81 s and 4.8 GB).
  const length = Object.getOwnPropertyDescriptor(fns, 'length')
  if (ArrayBuffer.isView(fns) || (length !== undefined && typeof length.value === 'number') || Object.getOwnPropertyDescriptor(fns, '0') !== undefined) {
    throw new TypeError('options.hostFunctions must be a plain object (not an array, typed array, or String object)')
  }
  const keys = Object.keys(fns)
  // As many as the native side takes (the names cross as a list of at most 10,000).
  if (keys.length > 10000) {
    throw new TypeError(`options.hostFunctions takes at most 10000 functions, got ${keys.length}`)
  }
  for (const key of keys) {
    const f = fns[key]
    if (typeof f !== 'function') {
      throw new TypeError(`options.hostFunctions[${JSON.stringify(key)}] must be a function`)
    }
    if (!/^[^.\s]+\.\S+$/.test(key)) {
      throw new TypeError(`options.hostFunctions: ${JSON.stringify(key)} is not of the form 'namespace.name'`)
    }
    table.set(key, f)
  }
  const live = new Map()
  const settle = (id, error, text) => {
    if (live.delete(id)) done(id, error, text)
  }
  // A promise's answer goes to its guest from the loop's check phase (setImmediate), all that
  // settled meanwhile together, not from the reaction: a guest answered there called again at
  // once, and its call was run in the same turn of the loop, and so on (review BZ2: with an
  // async function settling at once, one turn ran 18,000 calls, 366 ms, whatever the turn's
  // budget). A sync function's answer goes at once, as the turn's budget bounds them.
  const later = setImmediate
  let settled = []
  const flush = () => {
    const batch = settled
    settled = []
    for (const [id, error, text] of batch) settle(id, error, text)
  }
  const settleLater = (id, error, text) => {
    if (settled.push([id, error, text]) === 1) later(flush)
  }
  // A thrown primitive becomes an Error naming it, cut (near V8's longest string, the whole
  // message could not be made, and that RangeError would escape).
  // Past a million characters it is not even cut: V8 makes a string whole before it slices it,
  // and a text made by `repeat` costs its maker nothing (an Error's message, likewise, is not
  // read natively past that: js::read_text).
  const asError = (e) => {
    if (e !== null && (typeof e === 'object' || typeof e === 'function')) return e
    const text = String(e)
    if (text.length > 1048576) return new Error(`the host function threw a text of ${text.length} characters, too long to read`)
    return new Error(`the host function threw ${text.length > 4096 ? `${text.slice(0, 4096)}...` : text}`)
  }
  function call(name, input, activity, actorId, id, maxResult) {
    // A call that ended before its host call reached this thread does not run it: it would run
    // after a TIMEOUT its caller may retry, with a signal that never fires. Asked here, not
    // told: the call and its abort travel on two queues, which Node drains in either order.
    if (!wanted(id)) return
    // The AbortController is made only if the function reads ctx.signal (most never do).
    const state = { controller: undefined, reason: undefined }
    live.set(id, state)
    const f = table.get(name)
    if (f === undefined) return settle(id, new Error(`no host function ${name}`))
    const ctx = {
      activity,
      actorId: actorId === null ? undefined : actorId,
      get signal() {
        if (state.controller === undefined) {
          state.controller = new AbortController()
          if (state.reason !== undefined) state.controller.abort(state.reason)
        }
        return state.controller.signal
      },
    }
    let value
    try {
      value = f(JSON.parse(input), ctx)
    } catch (e) {
      return settle(id, asError(e))
    }
    const finish = (v, answer = settle) => {
      let text
      try {
        text = JSON.stringify(v === undefined ? null : v)
      } catch (e) {
        return answer(id, asError(e))
      }
      // Each UTF-16 unit is at least one byte of UTF-8: longer text is over the limit, however
      // it encodes (Rust checks the bytes of what passes).
      if (text !== undefined && text.length > maxResult) {
        return answer(id, new Error(`its result is at least ${text.length} bytes of JSON, over the call's maxInputBytes ${maxResult}`))
      }
      answer(id, null, text === undefined ? 'null' : text)
    }
    let then
    try {
      then = value !== null && (typeof value === 'object' || typeof value === 'function') ? value.then : undefined
    } catch (e) {
      return settle(id, asError(e))
    }
    if (typeof then !== 'function') return finish(value)
    try {
      // Promise.resolve reads a promise's `constructor` and returns the promise itself, whose own
      // `then` is then called: either may be the user's and throw.
      Promise.resolve(value).then((v) => finish(v, settleLater), (e) => settleLater(id, asError(e)))
    } catch (e) {
      settle(id, asError(e))
    }
  }
  function abort(id, reason) {
    const state = live.get(id)
    // Settled already, or never run (no longer wanted when it came).
    if (state === undefined) return
    live.delete(id)
    const e = new Error(reason)
    e.name = 'AbortError'
    state.reason = e
    if (state.controller !== undefined) state.controller.abort(e)
  }
  return { call, abort, names: [...table.keys()] }
})
