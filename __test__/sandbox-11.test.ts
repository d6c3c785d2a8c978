// Hostile review round BH (the JS boundary as a hostile tenant controls it): each test reproduces
// a way through that a reviewer found, and failed on the code from before its fix.
import vm from 'node:vm'
import { describe, expect, it } from 'vitest'
import { WasmActivityExecutor } from '../index'
import { def, failure, guest, MemoryBlobStore } from './helpers'

async function store() {
  const s = new MemoryBlobStore()
  await s.upload('env.wasm', guest('capabilities/env'))
  await s.upload('memory-bomb.wasm', guest('hostile/memory-bomb'))
  await s.upload('counter-actor.wasm', guest('counter-actor'))
  await s.upload('echo.wasm', guest('echo'))
  return s
}

/** What the constructor throws given `options` (undefined if it does not). */
async function madeWith(options: unknown): Promise<any> {
  try {
    new WasmActivityExecutor(await store(), options as any)
  } catch (err) {
    return err
  }
  return undefined
}

describe("another realm's prototype pollution", () => {
  it('is not obeyed: no capability, no lifted limit, no actor id the definition or options did not state', async () => {
    // Review BH2: a vm context's Object.prototype (as in Jest's and vitest's VM pools, or a
    // workflow sandbox) is not the addon's, and its keys were read as the definition's own.
    const ex = new WasmActivityExecutor(await store(), { env: { LOOM_SECRET: 's3cr3t' }, maxMemoryMB: 16 })
    const realm = vm.createContext({})
    vm.runInContext(
      `Object.prototype.capabilities = { env: ['LOOM_SECRET'] }
       Object.prototype.limits = { maxMemoryMB: 4096 }
       Object.prototype.actorId = 'shared'`,
      realm,
    )
    const made = (text: string) => vm.runInContext(`(${text})`, realm)
    const envDef = made(`{ name: 'env', version: '1', wasmBlobPath: 'env.wasm' }`)
    expect(Object.keys(envDef)).toEqual(['name', 'version', 'wasmBlobPath'])
    for (const call of [
      () => ex.execute(envDef, {}),
      () => ex.executeDetailed(envDef, {}),
      () => ex.actor(envDef, 'h').execute({}),
    ]) {
      expect((await failure(call())).code).toBe('CAPABILITY_DENIED')
    }
    // Nested objects of that realm too: a limits object without its own maxMemoryMB.
    const bomb = made(`{ name: 'memory-bomb', version: '1', wasmBlobPath: 'memory-bomb.wasm', limits: {} }`)
    expect((await failure(ex.execute(bomb, {}))).code).toBe('OUT_OF_MEMORY')
    const bare = made(`{ name: 'memory-bomb', version: '1', wasmBlobPath: 'memory-bomb.wasm' }`)
    expect((await failure(ex.execute(bare, {}))).code).toBe('OUT_OF_MEMORY')
    // Options of that realm: each call without an actorId is stateless, not one shared actor.
    const counter = def('counter-actor')
    const first = await ex.executeDetailed(counter, { action: 'increment', amount: 42 }, made('{}'))
    const second = await ex.executeDetailed(counter, { action: 'get' }, made('{}'))
    expect(second.output).toMatchObject({ count: 0 })
    expect([first.actorCreated, second.actorCreated]).toEqual([undefined, undefined])
    // What that realm's objects state as their own is read.
    const granted = made(`{ name: 'env', version: '1', wasmBlobPath: 'env.wasm', capabilities: { env: ['LOOM_SECRET'] } }`)
    expect(await ex.execute(granted, {})).toEqual({ LOOM_SECRET: 's3cr3t' })
    await ex.close()
  })
})

describe('long strings', () => {
  it('are refused by their length before they are copied, in every string field', async () => {
    // Review BH2: a string `repeat` made costs its maker nothing; copied whole before an 8 KiB
    // field refused it, it cost 2 GB and 1.3-4.7 s of the event loop, and a long entrypoint or
    // host function name was not refused at all.
    const long = 'a'.repeat(1 << 24)
    const ex = new WasmActivityExecutor(await store())
    const refusals = [
      () => ex.execute({ ...def('echo'), name: long }, {}),
      () => ex.execute({ ...def('echo'), sha256: long }, {}),
      () => ex.execute({ ...def('echo'), entrypoint: long } as any, {}),
      () => ex.execute({ ...def('echo'), capabilities: { hostFunctions: [long] } }, {}),
      () => ex.execute(def('echo'), {}, { actorId: long }),
      () => ex.executeDetailed(def('echo'), {}, { actorId: long }),
      () => Promise.resolve().then(() => ex.actor(def('echo'), long).execute({})),
    ]
    for (const refused of refusals) {
      const e = await failure(refused())
      expect(e.code).toBe('INVALID_ARGUMENT')
      expect(e.message).toContain(`is ${1 << 24} characters long`)
    }
    expect(await ex.execute(def('echo'), { message: 'after' })).toMatchObject({ result: 'after' })
    await ex.close()
  })
})

describe('objects that list a key per element', () => {
  it('are refused where a plain object is expected, before their keys are listed', async () => {
    // Review BI1: a `new Uint8Array(1.3e8)` as `limits` or `config` listed 130 million keys (5.4 GB,
    // the event loop held for minutes); a String object of a `repeat()` string lists one key per
    // character and costs its maker nothing.
    const views = () => [new Uint8Array(1 << 20), new String('x'.repeat(1 << 20)), Array.from({ length: 3 }, () => 'x')]
    const ex = new WasmActivityExecutor(await store())
    for (const v of views()) {
      const e = await failure(ex.execute({ ...def('echo'), limits: v as any }, {}))
      expect([e.code, e.message]).toEqual(['INVALID_ARGUMENT', expect.stringContaining('definition.limits must be a plain object (not an array, typed array, or String object)')])
      const c = await failure(ex.execute({ ...def('echo'), config: v as any }, {}))
      expect([c.code, c.message]).toEqual(['INVALID_ARGUMENT', expect.stringContaining('a plain object')])
      const thrown = await madeWith(v)
      expect([thrown?.code, thrown?.message]).toEqual(['INVALID_ARGUMENT', expect.stringContaining('a plain object')])
    }
    expect(await ex.execute(def('echo'), { message: 'after' })).toMatchObject({ result: 'after' })
    await ex.close()
  })

  it("Function.prototype's pollution does not reach a definition that is a function", async () => {
    // Review BI1: the walk stopped only at Object.prototype (and a chain's last prototype).
    const ex = new WasmActivityExecutor(await store(), { env: { LOOM_SECRET: 's3cr3t' } })
    const fn: any = function definition() {}
    Object.defineProperty(fn, 'name', { value: 'env' })
    Object.assign(fn, { version: '1', wasmBlobPath: 'env.wasm' })
    ;(Function.prototype as any).capabilities = { env: ['LOOM_SECRET'] }
    try {
      expect((await failure(ex.execute(fn, {}))).code).toBe('CAPABILITY_DENIED')
    } finally {
      delete (Function.prototype as any).capabilities
    }
    await ex.close()
  })
})

describe('review BJ1', () => {
  it('a Proxy around a typed array, and hostFunctions, are refused before their keys are listed', async () => {
    // Before: a Proxy has no own length and is no view, so Object.keys listed 1e7 indices (24-29 s of
    // the event loop); options.hostFunctions was listed with no check at all (1e8: 81 s, 4.8 GB).
    const proxied = () => new Proxy(new Uint8Array(1 << 20), {})
    const ex = new WasmActivityExecutor(await store())
    const limits = await failure(ex.execute({ ...def('echo'), limits: proxied() as any }, {}))
    expect([limits.code, limits.message]).toEqual(['INVALID_ARGUMENT', expect.stringContaining('definition.limits must be a plain object (not an array, typed array, or String object)')])
    const config = await failure(ex.execute({ ...def('echo'), config: proxied() as any }, {}))
    expect([config.code, config.message]).toEqual(['INVALID_ARGUMENT', expect.stringContaining('a plain object')])
    for (const options of [proxied(), { hostFunctions: new Uint8Array(1 << 20) }, { hostFunctions: proxied() }]) {
      const thrown = await madeWith(options)
      expect([thrown?.code, thrown?.message]).toEqual(['INVALID_ARGUMENT', expect.stringContaining('plain object')])
    }
    await ex.close()
  })

  it("a class's static fields inherited from a base class of the caller's own are read", async () => {
    // Before (BI1's fix): every function in the chain counted as Function.prototype, and a base
    // class's static limits or version were dropped silently.
    class Base {
      static version = '1'
      static limits = { maxMemoryMB: 1 }
    }
    class echo extends Base {
      static wasmBlobPath = 'echo.wasm'
    }
    const ex = new WasmActivityExecutor(await store())
    expect(await ex.execute(echo as any, { message: 'static' })).toMatchObject({ result: 'static' })
    class bomb extends Base {
      static wasmBlobPath = 'memory-bomb.wasm'
    }
    const e = await failure(ex.execute(bomb as any, {}))
    expect([e.code, e.message]).toEqual(['OUT_OF_MEMORY', expect.stringContaining(`${1 << 20}`)])
    await ex.close()
  })
})

describe('review BS2', () => {
  it('an object of more host functions than the executor takes is refused in its own words', async () => {
    // Before: "options.hostFunctions must be an array of at most 10000 strings" (the wording of
    // the names list the dispatcher hands over), for an option that is an object of functions.
    const fns = (n: number) => Object.fromEntries(Array.from({ length: n }, (_, i) => [`ns.f${i}`, () => i]))
    const thrown = await madeWith({ hostFunctions: fns(10001) })
    expect([thrown?.code, thrown?.message]).toEqual(['INVALID_ARGUMENT', 'invalid argument: options.hostFunctions takes at most 10000 functions, got 10001'])
    const ex = new WasmActivityExecutor(await store(), { hostFunctions: fns(10000) })
    expect(await ex.execute(def('echo'), { message: 'taken' })).toMatchObject({ result: 'taken' })
    await ex.close()
  })
})
