// Every error code, produced by a real module, and the executor still works after each.
import { randomBytes } from 'node:crypto'
import { describe, expect, it } from 'vitest'
import { WasmActivityExecutor } from '../index'
import { def, failure, guest, MemoryBlobStore } from './helpers'

const hostile = [
  'abort', 'trap', 'recursion', 'bad-pointer', 'lying-length', 'lone-surrogate', 'not-json', 'big-output',
  'unknown-import', 'wasi-import', 'no-execute', 'wrong-signature', 'start-trap',
]

async function executor() {
  const store = new MemoryBlobStore()
  for (const h of hostile) await store.upload(`${h}.wasm`, guest(`hostile/${h}`))
  await store.upload('echo.wasm', guest('echo'))
  await store.upload('random.wasm', randomBytes(4096))
  await store.upload('truncated.wasm', guest('echo').subarray(0, 200))
  await store.upload('empty.wasm', Buffer.alloc(0))
  return new WasmActivityExecutor(store)
}

async function expectStillWorks(ex: WasmActivityExecutor) {
  expect(await ex.execute(def('echo'), { message: 'alive', times: 1 })).toMatchObject({ result: 'alive' })
}

describe('error codes', () => {
  it('BLOB_NOT_FOUND when the store download rejects', async () => {
    const ex = await executor()
    const e = await failure(ex.execute(def('missing'), {}))
    expect(e).toBeInstanceOf(Error)
    expect(e.code).toBe('BLOB_NOT_FOUND')
    expect(e.path).toBe('missing.wasm')
    expect(e.message).toContain('Blob not found: missing.wasm')
    await expectStillWorks(ex)
  })

  for (const bad of ['random', 'truncated', 'empty']) {
    it(`INVALID_MODULE for ${bad} bytes`, async () => {
      const ex = await executor()
      const e = await failure(ex.execute(def(bad), {}))
      expect(e.code).toBe('INVALID_MODULE')
      await expectStillWorks(ex)
    })
  }

  it('CAPABILITY_DENIED names an import no definition granted (a host function)', async () => {
    const ex = await executor()
    const e = await failure(ex.execute(def('unknown-import'), {}))
    expect(e.code).toBe('CAPABILITY_DENIED')
    expect(e.message).toContain('env.fetch')
    await expectStillWorks(ex)
  })

  it('CAPABILITY_DENIED names WASI imports that were not granted', async () => {
    const ex = await executor()
    const e = await failure(ex.execute(def('wasi-import'), {}))
    expect(e.code).toBe('CAPABILITY_DENIED')
    expect(e.message).toContain('wasi_snapshot_preview1.fd_write')
  })

  it('MISSING_EXPORT when execute is absent or has the wrong signature', async () => {
    const ex = await executor()
    const missing = await failure(ex.execute(def('no-execute'), {}))
    expect(missing.code).toBe('MISSING_EXPORT')
    expect(missing.message).toContain('execute')
    const wrong = await failure(ex.execute(def('wrong-signature'), {}))
    expect(wrong.code).toBe('MISSING_EXPORT')
    expect(wrong.message).toMatch(/f64/)
    await expectStillWorks(ex)
  })

  it('GUEST_ABORT carries the decoded message, file, line and column', async () => {
    const ex = await executor()
    const e = await failure(ex.execute(def('abort'), { why: 'no' }))
    expect(e.code).toBe('GUEST_ABORT')
    expect(e.guestMessage).toBe('refusing input {"why":"no"}')
    expect(e.file).toBe('guests/hostile/abort.ts')
    expect(e.line).toBe(3)
    expect(e.column).toBeGreaterThan(0)
    expect(e.message).toContain('refusing input')
    await expectStillWorks(ex)
  })

  it('TRAP carries the trap kind', async () => {
    const ex = await executor()
    const e = await failure(ex.execute(def('trap'), {}))
    expect(e.code).toBe('TRAP')
    expect(e.trapKind).toBe('unreachable_code_reached')
    const start = await failure(ex.execute(def('start-trap'), {}))
    expect(start.code).toBe('TRAP')
    expect(start.trapKind).toBe('unreachable_code_reached')
    await expectStillWorks(ex)
  })

  it('TRAP (stack_overflow) for unbounded recursion, not a crash', async () => {
    const ex = await executor()
    const e = await failure(ex.execute(def('recursion'), {}))
    expect(e.code).toBe('TRAP')
    expect(e.trapKind).toBe('stack_overflow')
    await expectStillWorks(ex)
  })

  it('INVALID_INPUT for input JSON cannot hold', async () => {
    const ex = await executor()
    const cyclic: any = { a: 1 }
    cyclic.self = cyclic
    for (const input of [10n, { big: 1n }, cyclic]) {
      const e = await failure(ex.execute(def('echo'), input))
      expect(e.code).toBe('INVALID_INPUT')
    }
    const throwing = { toJSON() { throw new Error('nope') } }
    expect((await failure(ex.execute(def('echo'), throwing))).code).toBe('INVALID_INPUT')
    await expectStillWorks(ex)
  })

  // `execute` stringifies in JS and hands the native side the text (src/binding/fast_paths.js):
  // what the caller sees must be what the all-native path gave.
  it('execute and an actor handle run the toJSON of their input once, and report its throw as INVALID_INPUT', async () => {
    const ex = await executor()
    const handle = ex.actor(def('echo'), 'a')
    for (const run of [(i: unknown) => ex.execute(def('echo'), i), (i: unknown) => handle.execute(i)]) {
      let calls = 0
      const once = { toJSON() { calls++; throw new Error(`nope ${calls}`) } }
      const p = run(once)
      expect(p).toBeInstanceOf(Promise)
      const e = await failure(p)
      expect(e.code).toBe('INVALID_INPUT')
      expect(e.message).toContain('nope 1')
      expect(calls).toBe(1)
      let gets = 0
      const getter = { get message() { gets++; return 'counted' }, times: 1 }
      expect(await run(getter)).toMatchObject({ result: 'counted' })
      expect(gets).toBe(1)
      for (const bad of [10n, { big: 1n }]) expect((await failure(run(bad))).code).toBe('INVALID_INPUT')
    }
    // The native halves are not left on the prototypes for any caller to feed text of its choice.
    for (const half of ['__executeJson', '__executeFlat']) expect(half in WasmActivityExecutor.prototype).toBe(false)
    expect('__executeJson' in handle).toBe(false)
    await expectStillWorks(ex)
  })

  it('execute and executeDetailed use the JSON functions of when the addon loaded, not a later patch', async () => {
    const ex = await executor()
    await ex.precompile(def('echo'))
    const { parse, stringify } = JSON
    const NativePromise = Promise
    const resolve = Promise.resolve
    const call = Function.prototype.call
    let patched = 0
    const seen: unknown[] = []
    JSON.parse = (() => { patched++; return { patched: true } }) as any
    JSON.stringify = (() => { patched++; return '{"patched":true}' }) as any
    // A patched Function.prototype.call would get the native halves as `this`.
    Function.prototype.call = function (this: unknown, ...args: unknown[]) { seen.push(this); return Reflect.apply(this as any, args[0], args.slice(1)) } as any
    Promise.resolve = (() => { patched++; return NativePromise.reject(new Error('patched')) }) as any
    const results: unknown[] = []
    try {
      const input = { message: 'fresh', times: 1 }
      results.push(ex.execute(def('echo'), input), ex.actor(def('echo'), 'j').execute(input), ex.executeDetailed(def('echo'), input))
    } finally {
      JSON.parse = parse
      JSON.stringify = stringify
      Function.prototype.call = call
      Promise.resolve = resolve
    }
    const [a, b, c] = await Promise.all(results) as any[]
    expect(a).toMatchObject({ result: 'fresh' })
    expect(b).toMatchObject({ result: 'fresh' })
    expect(c.output).toMatchObject({ result: 'fresh' })
    expect(patched).toBe(0)
    expect(seen.filter((f: any) => typeof f === 'function' && /execute(Json|Flat)/.test(f.name))).toEqual([])
  })

  it('an actor handle reports output that is not JSON as INVALID_OUTPUT, with its preview', async () => {
    const ex = await executor()
    const handle = ex.actor(def('not-json'), 'a')
    const p = handle.execute({ pad: 'q'.repeat(300) })
    expect(p).toBeInstanceOf(Promise)
    const e = await failure(p)
    expect(e).toBeInstanceOf(Error)
    expect(e.code).toBe('INVALID_OUTPUT')
    expect(e.preview.startsWith('this is not JSON: {"pad":"qqq')).toBe(true)
    expect(e.preview).toHaveLength(200)
    await expectStillWorks(ex)
  })

  it('INVALID_OUTPUT includes the first 200 characters of non-JSON output', async () => {
    const ex = await executor()
    const e = await failure(ex.execute(def('not-json'), { pad: 'p'.repeat(500) }))
    expect(e.code).toBe('INVALID_OUTPUT')
    expect(e.preview).toHaveLength(200)
    expect(e.preview.startsWith('this is not JSON: {"pad":"ppp')).toBe(true)
    await expectStillWorks(ex)
  })

  for (const [name, why] of [
    ['bad-pointer', 'outside linear memory'],
    ['lying-length', 'past the end of linear memory'],
    ['lone-surrogate', 'unpaired surrogate'],
  ]) {
    it(`INVALID_OUTPUT for ${name}`, async () => {
      const ex = await executor()
      const e = await failure(ex.execute(def(name), {}))
      expect(e.code).toBe('INVALID_OUTPUT')
      expect(e.message).toContain(why)
      await expectStillWorks(ex)
    })
  }

  it('OUTPUT_TOO_LARGE for a 50 MB result', async () => {
    const ex = await executor()
    const e = await failure(ex.execute(def('big-output'), {}))
    expect(e.code).toBe('OUTPUT_TOO_LARGE')
    expect(e.size).toBe(50 * 1024 * 1024)
    await expectStillWorks(ex)
  })
})

// `execute` reads the definition's and the options' fields in JS and hands them over
// (src/binding/fast_paths.js); `executeDetailed` reads them through Node-API. Both must refuse the
// same things with the same errors, read the same properties in the same order, each once, and
// never throw synchronously.
describe('the definition and options, read in JS by execute', () => {
  const base = () => ({ name: 'echo', version: '1', wasmBlobPath: 'echo.wasm' })
  const input = { message: 'x', times: 1 }
  const cases: Array<[string, any, any]> = [
    ['name a number', { ...base(), name: 5 }, undefined],
    ['version missing', { name: 'echo', wasmBlobPath: 'echo.wasm' }, undefined],
    ['wasmBlobPath with a lone surrogate', { ...base(), wasmBlobPath: 'echo\ud800.wasm' }, undefined],
    ['sha256 not hex', { ...base(), sha256: 'zz' }, undefined],
    ['deterministic a string', { ...base(), deterministic: 'yes' }, undefined],
    ['entrypoint a number', { ...base(), entrypoint: 7 }, undefined],
    ['abi unknown', { ...base(), abi: 'cobol' }, undefined],
    ['config with a number', { ...base(), config: { a: 1 } }, undefined],
    ['limits a string', { ...base(), limits: 'x' }, undefined],
    ['limits with a negative memory', { ...base(), limits: { maxMemoryMB: -1 } }, undefined],
    ['capabilities.env not a list', { ...base(), capabilities: { env: 'X' } }, undefined],
    ['the definition null', null, undefined],
    ['the definition a string', 'echo', undefined],
    ['options a number', base(), 5],
    ['options.actorId a number', base(), { actorId: 5 }],
    ['options.transactional a string', base(), { transactional: 'yes' }],
    ['options.now a string', base(), { now: 'x' }],
    ['options.now Infinity', base(), { now: Infinity }],
    ['options.now NaN', base(), { now: NaN }],
    ['options.now past Date\'s range', base(), { now: 1e300 }],
    ['a config whose ownKeys trap throws', { ...base(), config: new Proxy({}, { ownKeys() { throw new Error('ownKeys trap') } }) }, undefined],
    ['a revoked Proxy as the config', { ...base(), config: (() => { const p = Proxy.revocable({}, {}); p.revoke(); return p.proxy })() }, undefined],
    ['options.seed a fraction', base(), { seed: 1.5 }],
    ['options.onProgress a string', base(), { onProgress: 'x' }],
    ['options.signal a number', base(), { signal: 5 }],
    ['a definition getter that throws', { ...base(), get limits() { throw new Error('limits getter') } }, undefined],
    ['an options getter that throws', base(), { get seed() { throw new Error('seed getter') } }],
    ['a getter that throws a non-Error', { ...base(), get version() { throw 42 } }, undefined], // eslint-disable-line no-throw-literal
    ['a throw whose message getter throws', { ...base(), get sha256() { throw { get message() { throw new Error('inner') } } } }, undefined],
    ['a revoked Proxy as the definition', (() => { const p = Proxy.revocable(base(), {}); p.revoke(); return p.proxy })(), undefined],
    // Two faults: the first field in the native order is the error, whichever getter threw.
    ['a bad field before a getter that throws', { name: 5, get version() { throw new Error('later') }, wasmBlobPath: 'echo.wasm' }, undefined],
    ['a getter that throws before a bad field', { ...base(), get sha256() { throw new Error('first') }, abi: 'cobol' }, undefined],
    ['a bad definition and an options getter that throws', { ...base(), limits: 'x' }, { get seed() { throw new Error('seed') } }],
    ['a bad option before an options getter that throws', base(), { actorId: 5, get seed() { throw new Error('seed') } }],
  ]
  for (const [what, d, o] of cases) {
    it(`refuses ${what} as the native path does`, async () => {
      const ex = await executor()
      const p = ex.execute(d, input, o)
      expect(p).toBeInstanceOf(Promise)
      const inJs = await failure(p)
      const native = await failure(ex.executeDetailed(d, input, o))
      expect(inJs).toBeInstanceOf(Error)
      expect(inJs.code).toBe('INVALID_ARGUMENT')
      expect([inJs.code, inJs.message]).toEqual([native.code, native.message])
      await expectStillWorks(ex)
    })
  }

  it('reads the same properties as the native path, in its order, each once', async () => {
    const ex = await executor()
    const reads: string[] = []
    const counted = (target: object, prefix: string) =>
      new Proxy(target, {
        get(t, k, r) {
          if (typeof k === 'string') reads.push(`${prefix}.${k}`)
          return Reflect.get(t, k, r)
        },
      })
    const d = counted({ ...base(), limits: { maxMemoryMB: 64 }, config: { k: 'v' } }, 'definition') as any
    const o = counted({ actorId: 'counted', transactional: false }, 'options') as any
    expect(await ex.execute(d, input, o)).toMatchObject({ result: 'x' })
    const inJs = reads.splice(0)
    expect((await ex.executeDetailed(d, input, o)).output).toMatchObject({ result: 'x' })
    expect(inJs).toEqual(reads)
    expect(inJs).toContain('definition.capabilities')
    expect(inJs).toContain('options.signal')
    expect(new Set(inJs).size).toBe(inJs.length)
    // A getter that throws stops the reading there, as the native reading stops.
    const throwing = counted({ ...base(), get deterministic() { throw new Error('stop') } }, 'definition') as any
    reads.length = 0
    const refused = await failure(ex.execute(throwing, input, o))
    const inJsThrowing = reads.splice(0)
    await failure(ex.executeDetailed(throwing, input, o))
    expect(inJsThrowing).toEqual(reads)
    expect(inJsThrowing.at(-1)).toBe('definition.deterministic')
    expect(refused.code).toBe('INVALID_ARGUMENT')
    // Null options are none; a definition that is a function is read as an object.
    const fn = Object.assign(Object.defineProperty(() => {}, 'name', { value: 'echo' }), { version: '1', wasmBlobPath: 'echo.wasm' })
    expect(await ex.execute(fn as any, input, null as any)).toMatchObject({ result: 'x' })
  })

  it('does not read the input of a call refused for a getter that threw', async () => {
    const ex = await executor()
    let stringified = 0
    const watched = { toJSON() { stringified++; return {} } }
    const e = await failure(ex.execute({ ...base(), get name(): string { throw new Error('no name') } }, watched))
    expect([e.code, stringified]).toEqual(['INVALID_ARGUMENT', 0])
  })

  it('passes what it read, not what a getter returns on a second read', async () => {
    const ex = await executor()
    let path = 0
    // A path that changes on every read: the call must use the one read, once.
    const shifty = { name: 'echo', version: '1', get wasmBlobPath() { return path++ === 0 ? 'echo.wasm' : 'missing.wasm' } }
    expect(await ex.execute(shifty, input)).toMatchObject({ result: 'x' })
    expect(path).toBe(1)
  })
})

describe('keys have a length limit (8 KiB)', () => {
  // Each of these is kept as a key (the module index, the actor cache, failed downloads):
  // unbounded, 1,000 actor ids of 256 KiB held 271 MiB (review K).
  const long = 'x'.repeat(8 * 1024 + 1)
  const limit = 'x'.repeat(8 * 1024)

  it('refuses a name, version, wasmBlobPath or actorId past it with INVALID_ARGUMENT, and takes one at it', async () => {
    const ex = await executor()
    for (const [field, d] of [
      ['definition.name', { ...def('echo'), name: long }],
      ['definition.version', { ...def('echo'), version: long }],
      ['definition.wasmBlobPath', { ...def('echo'), wasmBlobPath: long }],
    ] as const) {
      const e = await failure(ex.execute(d, { message: 'x', times: 1 }))
      expect([e.code, e.message]).toEqual(['INVALID_ARGUMENT', expect.stringContaining(`${field} is 8193 bytes long`)])
    }
    for (const e of [
      await failure(ex.execute(def('echo'), { message: 'x', times: 1 }, { actorId: long })),
      await failure(ex.snapshotActor(def('echo'), long)),
    ]) {
      expect([e.code, e.message]).toEqual(['INVALID_ARGUMENT', expect.stringContaining('actorId is 8193 bytes long')])
    }
    // A handle is refused when it is made, as a bad definition is.
    expect(() => ex.actor(def('echo'), long)).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT', message: expect.stringContaining('actorId is 8193 bytes long') }))
    // A multi-byte character counts its UTF-8 bytes.
    const wide = 'é'.repeat(4 * 1024 + 1)
    expect((await failure(ex.execute({ ...def('echo'), name: wide }, {}))).code).toBe('INVALID_ARGUMENT')
    expect(await ex.execute({ ...def('echo'), name: limit }, { message: 'x', times: 1 }, { actorId: limit })).toMatchObject({ result: 'x' })
    expect(ex.dropActor({ ...def('echo'), name: limit }, limit)).toBe(true)
    expect(ex.dropActor(def('echo'), long)).toBe(false)
    await expectStillWorks(ex)
  })
})
