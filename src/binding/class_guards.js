// Calls of the addon's classes that the native side cannot refuse with a code (src/binding/
// class_guards.rs runs this once per Node environment as the addon loads, before fast_paths.js):
// - a constructor called without `new`: napi made the global object (or whatever `this` was) an
//   executor or a store, one nothing could close. The exported constructors are functions that
//   refuse that and construct the native class with the caller's `new.target` (subclasses work;
//   the prototype is the native one, so `instanceof` holds either way).
// - a method or getter called on an object that is not one of the class's (V8's "Illegal
//   invocation", napi's "Failed to unwrap"), or an argument napi itself converts and refuses (a
//   Buffer that is not a typed array): a TypeError with code INVALID_ARGUMENT, thrown at once as
//   before, with the original as its `cause`.
// Returns `coded`, which fast_paths.js uses around the native halves of `execute` it wraps
// (left alone here: they are on every call's path).
(function installClassGuards(exports) {
  'use strict'
  const apply = Reflect.apply
  const construct = Reflect.construct
  // napi's status names that are argument errors.
  const napiArgument = new Set(['InvalidArg', 'ObjectExpected', 'StringExpected', 'NameExpected', 'FunctionExpected',
    'NumberExpected', 'BooleanExpected', 'ArrayExpected', 'BigintExpected', 'DateExpected', 'ArrayBufferExpected',
    'DetachableArraybufferExpected'])
  const misuse = (message, cause) => {
    const e = new TypeError(message, cause === undefined ? undefined : { cause })
    e.code = 'INVALID_ARGUMENT'
    e.retryable = false
    return e
  }
  // `e` when it carries a code of ours (or is not an error at all); else its coded TypeError.
  const coded = (e, what, className = what.split('.')[0]) => {
    if (e === null || typeof e !== 'object') return e
    let code, message, isTypeError
    try {
      code = e.code
      message = e.message
      isTypeError = e instanceof TypeError
    } catch {
      return e
    }
    if (code === undefined ? !isTypeError : !napiArgument.has(code)) return e
    if (message === 'Illegal invocation' || (typeof message === 'string' && message.startsWith('Failed to unwrap'))) {
      return misuse(`${what} was called on an object that is not a ${className}`, e)
    }
    return misuse(`${what}: ${message}`, e)
  }
  const guard = (f, what) => {
    const g = {
      [f.name](...args) {
        try {
          return apply(f, this, args)
        } catch (e) {
          throw coded(e, what)
        }
      },
    }[f.name]
    return g
  }
  const classes = [
    { name: 'WasmActivityExecutor', constructible: true },
    { name: 'ObjectBlobStore', constructible: true },
    // Made by executor.actor(definition, actorId) only.
    { name: 'WasmActor', constructible: false },
  ]
  const skip = ['__executeFlat', '__executeJson']
  for (const { name, constructible } of classes) {
    const native = exports[name]
    if (typeof native !== 'function') continue
    const proto = native.prototype
    for (const key of Reflect.ownKeys(proto)) {
      if (key === 'constructor' || skip.includes(key)) continue
      const d = Object.getOwnPropertyDescriptor(proto, key)
      const what = typeof key === 'symbol' ? `${name}.prototype[${key.description}]` : `${name}.prototype.${key}`
      if (typeof d.value === 'function') d.value = guard(d.value, what)
      if (typeof d.get === 'function') d.get = guard(d.get, what)
      if (typeof d.set === 'function') d.set = guard(d.set, what)
      Object.defineProperty(proto, key, d)
    }
    function Guarded(...args) {
      if (new.target === undefined || !constructible) {
        throw misuse(constructible ? `${name} is a class: call it with \`new\`` : `${name} is made by executor.actor(definition, actorId), not with \`new\``)
      }
      try {
        return construct(native, args, new.target)
      } catch (e) {
        throw coded(e, name)
      }
    }
    Object.defineProperty(Guarded, 'name', { value: name })
    Guarded.prototype = proto
    // Statics, if any, copied: the native constructor is not reachable from JS any more (as the
    // guard's prototype, `Object.getPrototypeOf(WasmActivityExecutor).call(globalThis)` wrapped
    // the global object again: follow-up review AB).
    for (const key of Reflect.ownKeys(native)) {
      if (!['length', 'name', 'prototype'].includes(key)) Object.defineProperty(Guarded, key, Object.getOwnPropertyDescriptor(native, key))
    }
    Object.defineProperty(proto, 'constructor', { value: Guarded, writable: true, configurable: true, enumerable: false })
    exports[name] = Guarded
  }
  return coded
})
