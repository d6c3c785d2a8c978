// The JS half of `execute` (src/binding/fast_paths.rs), installed once per Node environment when
// the addon loads. `JSON.stringify` of the input and `JSON.parse` of the output run here, in JS:
// called from Rust through Node-API they cost about 1.5 us more per call. The executor's `execute`
// also reads the definition's and the options' own fields here, each once, in the order the native
// side reads them, and hands them over as arguments: read through Node-API, they cost a few
// microseconds per call. A call that finished on the spot comes back as the output's JSON text;
// any other comes back as its promise, which the native side settles exactly as before. Errors
// stay the native ones: the fields are checked by the native code, in order (`INVALID_ARGUMENT`
// naming the first bad one); a getter that throws stops the reading here, and the native side
// refuses the call at that field once the fields before it are checked, as its own reading would
// have; an input that JSON cannot hold and an output that does not parse are reported by the
// native code, with their codes. What differs, in calls refused anyway: the getters of the fields
// after a bad one (the options' included) run, and the input's `toJSON` runs, before the call is
// refused; the fields of `limits`, `config` and `capabilities` are read (natively) after the
// options' getters ran, not before. The keys of `limits`, `capabilities` and the options are listed
// here too (`Object.keys`: own, enumerable, strings, as natively), right after each object is read:
// the first key none of them takes is handed over, and the native side refuses the call at that
// object, in its order (a listing that throws, as a getter that throws).
(function installFastPaths(Executor, Actor, settleOutput, knownJson, classGuard, inheritedFrom) {
  'use strict'
  // class_guards.js's `coded`: a call on an object that is not an executor (or actor) throws a
  // TypeError with code INVALID_ARGUMENT, as the other methods do.
  const coded = typeof classGuard === 'function' ? classGuard : (e) => e
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
  const isObject = (v) => (typeof v === 'object' && v !== null) || typeof v === 'function'
  // A field that comes from Object.prototype (a key someone added there, a prototype pollution
  // elsewhere in the process: `Object.prototype.capabilities = ...`) is no field: obeyed, it
  // would be a grant nobody made. The caller's own prototypes (a class's getters,
  // `Object.create(base)`) count. `inherited` is inherited.js's, which the native reads use too:
  // its walk stops at any realm's Object.prototype (review BH2: a vm context's
  // `Object.prototype.capabilities` was obeyed, its `limits` lifted the executor's).
  const hasOwn = Object.hasOwn
  const inherited = typeof inheritedFrom === 'function' ? inheritedFrom : () => false
  // Always the whole walk, as the native read takes it for anything but a plain object: a
  // cheaper look at a plain-looking object ran no trap of a Proxy's where the native read runs
  // them (review BV1: a definition Proxy whose getOwnPropertyDescriptor throws ran here and was
  // refused there). For a plain object the walk is as cheap: its first step finds the key own.
  const clean = (o, k, v) => {
    if (v === undefined || v === null) return v
    return inherited(o, k) ? undefined : v
  }
  // The keys `limits`, `capabilities` and the options take (args::LIMIT_FIELDS, ...): the first
  // own enumerable key of one that it does not take is handed over (a misspelt limit or actorId
  // is INVALID_ARGUMENT there). `Object.keys` (taken now) lists the own enumerable string keys, as
  // the native side does; here it costs tens of nanoseconds, through Node-API a microsecond or more.
  const known = parse(knownJson)
  const ownKeys = Object.keys
  const isView = ArrayBuffer.isView
  const ownDescriptor = Object.getOwnPropertyDescriptor
  // The read of `firstUnknown`'s that threw (its path, as `args::Threw` takes it), set as the
  // throw leaves it: nothing runs before the caller's `catch` reads it.
  let stepThrew
  const firstUnknown = (obj, keys, path) => {
    // One that lists a key per element (an array, a typed array, a String object: anything with
    // an element 0 or a numeric own `length`) is refused before its keys are listed (review BI1: a
    // `new Uint8Array(1.3e8)` as `limits` held the event loop for minutes; a String object of a
    // `repeat()` string, free to make, lists one key per character). A Proxy around a typed array
    // is no view (review BJ1): its element 0 shows through. The reads are `args::indexed`'s, in
    // its order, so a refusal (the object's own path: "must be a plain object") or a throw is
    // worded as the native read words it (review BU2).
    let step = 0
    try {
      if (isView(obj) || ownDescriptor(obj, '0') !== undefined) return path
      step = 1
      if (hasOwn(obj, 'length') && typeof obj.length === 'number') return path
      step = 2
      const have = ownKeys(obj)
      // As `args::keys` refuses them, in its order: too many keys, a key too long, too many
      // characters in all (`args::found_refusal` words each); a key's text is handed over only
      // once it is short (review BV1: one of 500 million characters was copied whole).
      if (have.length > 10000) return `many ${path}`
      let units = 0
      for (let j = 0; j < have.length; j++) {
        const n = have[j].length
        if (n > 1048576) return `long ${path}[${j}] ${n}`
        units += n
        if (units > 1048576) return `together ${path}`
      }
      for (let j = 0; j < have.length; j++) {
        let takes = false
        for (let i = 0; i < keys.length; i++) if (keys[i] === have[j]) takes = true
        if (!takes) return `${path}.${have[j]}`
      }
      return undefined
    } catch (e) {
      stepThrew = step === 0 ? `index ${path}[0]` : step === 1 ? `index ${path}.length` : `keys of ${path}`
      throw e
    }
  }
  // As napi defines methods: writable, configurable, enumerable.
  const define = (proto, execute) =>
    Object.defineProperty(proto, 'execute', { value: execute, writable: true, configurable: true, enumerable: true })

  // The native halves leave the prototypes whatever happens next: they take text they never
  // check as JSON.
  const executor = Executor.prototype
  const executeNative = executor.execute
  const flat = executor.__executeFlat
  delete executor.__executeFlat
  if (typeof executeNative === 'function' && typeof flat === 'function') {
    define(executor, function execute(definition, input, options) {
      const d = definition
      const o = options
      const noOptions = o === undefined || o === null
      // A definition or options that are not objects: the native path reports them.
      if (!isObject(d) || !(noOptions || isObject(o))) return apply(executeNative, this, [d, input, o])
      // args::DEFINITION_FIELDS, then call::OPTION_FIELDS.
      let name, version, wasmBlobPath, sha256, deterministic, entrypoint, abi, config, limits, capabilities
      let actorId, transactional, now, seed, onProgress, signal
      let at = 'definition.name'
      let threwAt
      let thrown
      let unknown
      try {
        name = clean(d, 'name', d.name)
        at = 'definition.version'
        version = clean(d, 'version', d.version)
        at = 'definition.wasmBlobPath'
        wasmBlobPath = clean(d, 'wasmBlobPath', d.wasmBlobPath)
        at = 'definition.sha256'
        sha256 = clean(d, 'sha256', d.sha256)
        at = 'definition.deterministic'
        deterministic = clean(d, 'deterministic', d.deterministic)
        at = 'definition.entrypoint'
        entrypoint = clean(d, 'entrypoint', d.entrypoint)
        at = 'definition.abi'
        abi = clean(d, 'abi', d.abi)
        at = 'definition.config'
        config = clean(d, 'config', d.config)
        at = 'definition.limits'
        limits = clean(d, 'limits', d.limits)
        at = undefined
        if (isObject(limits)) unknown = firstUnknown(limits, known.limits, 'definition.limits')
        at = 'definition.capabilities'
        capabilities = clean(d, 'capabilities', d.capabilities)
        at = undefined
        if (unknown === undefined && isObject(capabilities)) unknown = firstUnknown(capabilities, known.capabilities, 'definition.capabilities')
        if (!noOptions) {
          if (unknown === undefined) unknown = firstUnknown(o, known.options, 'options')
          at = 'options.actorId'
          actorId = clean(o, 'actorId', o.actorId)
          at = 'options.transactional'
          transactional = clean(o, 'transactional', o.transactional)
          at = 'options.now'
          now = clean(o, 'now', o.now)
          at = 'options.seed'
          seed = clean(o, 'seed', o.seed)
          at = 'options.onProgress'
          onProgress = clean(o, 'onProgress', o.onProgress)
          at = 'options.signal'
          signal = clean(o, 'signal', o.signal)
        }
      } catch (e) {
        // The call is refused at this field, or at a bad one before it: its input is not read.
        threwAt = at === undefined ? stepThrew : at
        stepThrew = undefined
        thrown = e
      }
      let text = 'null'
      if (threwAt === undefined) {
        try {
          text = stringify(input)
          if (text === undefined) text = 'null'
        } catch (e) {
          text = rethrowing(e)
        }
      }
      let r
      try {
        r = apply(flat, this, [text, threwAt, thrown, unknown, name, version, wasmBlobPath, sha256, deterministic, entrypoint, abi,
          config, limits, capabilities, actorId, transactional, now, seed, onProgress, signal, o])
      } catch (e) {
        throw coded(e, 'WasmActivityExecutor.prototype.execute')
      }
      return settle(r)
    })
  }

  const actor = Actor.prototype
  const actorNative = actor.execute
  const json = actor.__executeJson
  delete actor.__executeJson
  if (typeof actorNative === 'function' && typeof json === 'function') {
    define(actor, function execute(input, options) {
      let text
      try {
        text = stringify(input)
      } catch (e) {
        return apply(actorNative, this, [rethrowing(e), options])
      }
      let r
      try {
        r = apply(json, this, [text === undefined ? 'null' : text, options])
      } catch (e) {
        throw coded(e, 'WasmActor.prototype.execute')
      }
      return settle(r)
    })
  }
})
