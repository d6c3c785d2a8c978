// The JS half of `execute` (src/binding/fast_paths.rs), installed once per Node environment when
// the addon loads. `JSON.stringify` of the input and `JSON.parse` of the output run here, in JS:
// called from Rust through Node-API they cost about 1.5 us more per call. A call that finished on
// the spot comes back as the output's JSON text; any other comes back as its promise, which the
// native side settles exactly as before. Errors stay the native ones: an input that JSON cannot
// hold and an output that does not parse are reported by the native code, with their codes.
(function installFastPaths(Executor, Actor, settleOutput) {
  'use strict'
  // Everything the wrappers call is taken now: a later patch of JSON, Promise or
  // Function.prototype.call neither changes what `execute` does nor reaches the native halves.
  const { stringify, parse } = JSON
  const apply = Reflect.apply
  const resolved = Promise.resolve.bind(Promise)
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
    return resolved(value)
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
            return apply(native, this, [definition, rethrowing(e), options])
          }
          return settle(apply(json, this, [definition, text === undefined ? 'null' : text, options]))
        }
      : function execute(input, options) {
          let text
          try {
            text = stringify(input)
          } catch (e) {
            return apply(native, this, [rethrowing(e), options])
          }
          return settle(apply(json, this, [text === undefined ? 'null' : text, options]))
        }
    // As napi defines methods: writable, configurable, enumerable.
    Object.defineProperty(proto, 'execute', { value: execute, writable: true, configurable: true, enumerable: true })
  }
  install(Executor.prototype, true)
  install(Actor.prototype, false)
})
