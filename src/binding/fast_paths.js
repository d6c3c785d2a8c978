// The JS half of `execute` (src/binding/fast_paths.rs), installed once per Node environment when
// the addon loads. `JSON.stringify` of the input and `JSON.parse` of the output run here, in JS:
// called from Rust through Node-API they cost about 1.5 us more per call. A call that finished on
// the spot comes back as the output's JSON text; any other comes back as its promise, which the
// native side settles exactly as before. Errors stay the native ones: an input that JSON cannot
// hold and an output that does not parse are reported by the native code, with their codes.
(function installFastPaths(Executor, Actor, settleOutput) {
  'use strict'
  const { stringify, parse } = JSON
  // A stand-in whose JSON.stringify throws `e` again: the native path then reports the input as it
  // reports any it cannot stringify (INVALID_INPUT), without running the caller's toJSON or getters
  // a second time.
  const rethrowing = (e) => ({ toJSON() { throw e } })
  const settle = (r) => {
    if (typeof r !== 'string') return r
    let value
    try {
      value = parse(r)
    } catch {
      return settleOutput(r)
    }
    return Promise.resolve(value)
  }
  const install = (proto, withDefinition) => {
    const native = proto.execute
    const json = proto.__executeJson
    if (typeof native !== 'function' || typeof json !== 'function') return
    delete proto.__executeJson
    const execute = withDefinition
      ? function execute(definition, input, options) {
          let text
          try {
            text = stringify(input)
          } catch (e) {
            return native.call(this, definition, rethrowing(e), options)
          }
          return settle(json.call(this, definition, text === undefined ? 'null' : text, options))
        }
      : function execute(input, options) {
          let text
          try {
            text = stringify(input)
          } catch (e) {
            return native.call(this, rethrowing(e), options)
          }
          return settle(json.call(this, text === undefined ? 'null' : text, options))
        }
    Object.defineProperty(proto, 'execute', { value: execute, writable: true, configurable: true, enumerable: false })
  }
  install(Executor.prototype, true)
  install(Actor.prototype, false)
})
