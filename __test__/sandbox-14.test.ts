// Hostile review round BU (the JS API under hostile values, round 2): each test reproduces a way
// through that a reviewer found, and failed on the code from before its fix.
import { describe, expect, it } from 'vitest'
import { ObjectBlobStore, WasmActivityExecutor } from '../index'
import { def, failure, guest, MemoryBlobStore } from './helpers'

async function store() {
  const s = new MemoryBlobStore()
  await s.upload('echo.wasm', guest('echo'))
  await s.upload('counter-actor.wasm', guest('counter-actor'))
  await s.upload('progress.wasm', guest('capabilities/progress'))
  return s
}

/** How `executor.actor(definition, id)` fails (undefined if it does not). */
function handleFails(ex: WasmActivityExecutor, definition: unknown): any {
  try {
    ex.actor(definition as any, 'a')
  } catch (e) {
    return e
  }
  return undefined
}

/** The unhandled rejections seen while `run` ran, and 50 ms after. */
async function unhandledDuring(run: () => Promise<void>): Promise<unknown[]> {
  const unhandled: unknown[] = []
  const listener = (reason: unknown) => unhandled.push(reason)
  process.on('unhandledRejection', listener)
  try {
    await run()
    await new Promise((r) => setTimeout(r, 50))
  } finally {
    process.off('unhandledRejection', listener)
  }
  return unhandled
}

describe('one long string named many times in a list or an object', () => {
  it('is refused by the characters of the whole list before they are all copied', async () => {
    // Review BU2: a 1 Mi-character string (free to make with `repeat`) named 1,000 times in
    // `capabilities.hostFunctions` was copied 1,000 times (3.1 GB, 3 s of the event loop) and the
    // call ran; in `capabilities.env` or `config` it was refused only after all was copied.
    const long = 'A'.repeat(1 << 20)
    const many = Array.from({ length: 1000 }, () => long)
    const ex = new WasmActivityExecutor(await store())
    const cases: [any, string][] = [
      [{ capabilities: { hostFunctions: many } }, 'definition.capabilities.hostFunctions: its strings hold more than 1048576 characters together'],
      [{ capabilities: { env: many } }, 'definition.capabilities.env: its strings hold more than 1048576 characters together'],
      [{ config: Object.fromEntries(Array.from({ length: 1000 }, (_, i) => [`k${i}`, long])) }, 'definition.config: its strings hold more than 65536 characters together'],
    ]
    for (const [extra, message] of cases) {
      for (const call of [() => ex.execute(def('echo', extra), {}), () => ex.executeDetailed(def('echo', extra), {})]) {
        const e = await failure(call())
        expect([e.code, e.message]).toEqual(['INVALID_ARGUMENT', expect.stringContaining(message)])
      }
      const thrown = handleFails(ex, def('echo', extra))
      expect([thrown?.code, thrown?.message]).toEqual(['INVALID_ARGUMENT', expect.stringContaining(message)])
    }
    // Within the bound: names of a module that imports none are taken as before.
    const names = Array.from({ length: 1000 }, (_, i) => `ns.f${i}`.padEnd(1000, 'x'))
    expect(await ex.execute(def('echo', { capabilities: { hostFunctions: names } }), { message: 'kept' })).toMatchObject({ result: 'kept' })
    await ex.close()
  })
})

describe('objects that list a key per element, and Proxies whose listing throws', () => {
  it('are refused in the same words by execute and executeDetailed', async () => {
    // Review BU2: `execute` (its fields read in JS) said "definition.limits.length is not a field
    // of definition.limits" and `executeDetailed` "definition.limits must be a plain object"; a
    // revoked Proxy "listing the keys of ... threw" against "reading ...[0] threw".
    const ex = new WasmActivityExecutor(await store())
    const revoked = () => {
      const { proxy, revoke } = Proxy.revocable({}, {})
      revoke()
      return proxy
    }
    const cases: [any, any][] = [
      [{ limits: { 0: 1 } }, undefined],
      [{ limits: new Uint8Array(4) }, undefined],
      [{ limits: [] }, undefined],
      [{ limits: new String('ab') }, undefined],
      [{ capabilities: [1] }, undefined],
      [{ limits: { length: 3 } }, undefined],
      [{ limits: revoked() }, undefined],
      [{ capabilities: revoked() }, undefined],
      [{}, { 0: 1 }],
      [{}, revoked()],
    ]
    for (const [extra, options] of cases) {
      const fast = await failure(ex.execute(def('echo', extra), {}, options))
      const native = await failure(ex.executeDetailed(def('echo', extra), {}, options))
      expect([fast.code, fast.message]).toEqual(['INVALID_ARGUMENT', native.message])
    }
    const e = await failure(ex.execute(def('echo', { limits: { 0: 1 } as any }), {}))
    expect(e.message).toBe('invalid argument: definition.limits must be a plain object (not an array, typed array, or String object)')
    const r = await failure(ex.execute(def('echo', { limits: revoked() }), {}))
    expect(r.message).toContain('reading definition.limits[0] threw')
    await ex.close()
  })
})

describe('a Proxy that answers reads with a get trap alone', () => {
  it('is seen through as JS sees it: its limits hold', async () => {
    // Review BU2: `new Proxy({}, { get })` read `maxFuel` 5 in JS, but having no own key it was
    // taken for Object.prototype's, and the limit was dropped (the call ran with no fuel limit).
    const ex = new WasmActivityExecutor(await store())
    const limits = new Proxy({}, { get: (_t, k) => (k === 'maxFuel' ? 5 : undefined) })
    expect((limits as any).maxFuel).toBe(5)
    for (const call of [() => ex.execute(def('echo', { limits }), { message: 'x' }), () => ex.executeDetailed(def('echo', { limits }), { message: 'x' })]) {
      expect((await failure(call())).code).toBe('OUT_OF_FUEL')
    }
    const handle = ex.actor(def('counter-actor', { limits }), 'fuel')
    expect((await failure(handle.execute({ action: 'increment' }))).code).toBe('OUT_OF_FUEL')
    // A key Object.prototype holds is still no field, whoever answers it.
    ;(Object.prototype as any).maxFuel = 5
    try {
      expect(await ex.execute(def('echo'), { message: 'clean' })).toMatchObject({ result: 'clean' })
    } finally {
      delete (Object.prototype as any).maxFuel
    }
    await ex.close()
  })
})

describe('an onProgress that returns a promise which rejects', () => {
  it('is the caller\'s bug, dropped: no unhandled rejection, the call settles', async () => {
    // Review BU2: `async onProgress() { throw ... }` ended the process (an unhandled rejection);
    // a synchronous throw was already swallowed.
    const ex = new WasmActivityExecutor(await store())
    const unhandled = await unhandledDuring(async () => {
      let calls = 0
      const thenable = { then: (_ok: unknown, fail: (e: unknown) => void) => fail(new Error('thenable')) }
      const out = await ex.execute(def('progress'), { steps: 3, every: 1 }, {
        onProgress: async () => {
          calls++
          throw new Error('db write failed')
        },
      })
      expect(out).toBeDefined()
      expect(calls).toBeGreaterThan(0)
      await ex.execute(def('progress'), { steps: 3, every: 1 }, { onProgress: () => thenable })
    })
    expect(unhandled).toEqual([])
    await ex.close()
  })
})

describe('review BV1', () => {
  it('an onProgress promise whose constructor or species throws is still given its handler', async () => {
    // `then` asks the promise for its constructor and species first: a throw there left the
    // promise without a handler, and its rejection ended the process.
    class Hostile extends Promise<unknown> {
      static get [Symbol.species](): any {
        throw new Error('no species')
      }
    }
    const returns: Array<() => unknown> = [
      () => Hostile.reject(new Error('species')),
      () => {
        const p = Promise.reject(new Error('constructor'))
        Object.defineProperty(p, 'constructor', { get() { throw new Error('no constructor') }, configurable: true })
        return p
      },
    ]
    const ex = new WasmActivityExecutor(await store())
    const unhandled = await unhandledDuring(async () => {
      for (const onProgress of returns) await ex.execute(def('progress'), { steps: 3, every: 1 }, { onProgress })
    })
    expect(unhandled).toEqual([])
    await ex.close()
  })

  it("a store's options are bounded by their characters together before they are copied", () => {
    // 1,000 keys each holding one 1 Mi-character string were all copied (2.1 GB, 2 s of the event
    // loop) before the first key was found to be no option.
    const long = 'A'.repeat(1 << 20)
    const options = Object.fromEntries(Array.from({ length: 1000 }, (_, i) => [`K${i}`, long]))
    let thrown: any
    try {
      new ObjectBlobStore('memory://bv1', options)
    } catch (e) {
      thrown = e
    }
    expect([thrown?.code, thrown?.message]).toEqual(['INVALID_ARGUMENT', expect.stringContaining('options: its strings hold more than 1048576 characters together')])
  })

  it('execute refuses what executeDetailed refuses, in the same words: long keys, many keys, ArrayBuffers, Proxies whose descriptors throw', async () => {
    const ex = new WasmActivityExecutor(await store())
    const longKey = { ['k'.repeat((1 << 20) + 1)]: 1 }
    const manyKeys = Object.fromEntries(Array.from({ length: 10001 }, (_, i) => [`k${i}`, 1]))
    const twoHalves = { ['a'.repeat(600000)]: 1, ['b'.repeat(600000)]: 1 }
    const throwing = new Proxy(def('echo'), { getOwnPropertyDescriptor: () => { throw new Error('no descriptor') } })
    const cases: Array<[unknown, unknown, string]> = [
      [def('echo', { limits: longKey as any }), undefined, 'definition.limits[0] is 1048577 characters long'],
      [def('echo', { capabilities: manyKeys as any }), undefined, 'definition.capabilities must be an object of at most 10000 entries'],
      [def('echo', { limits: twoHalves as any }), undefined, 'definition.limits: its strings hold more than 1048576 characters together'],
      [def('echo'), longKey, 'options[0] is 1048577 characters long'],
      [def('echo', { limits: new ArrayBuffer(8) as any }), undefined, 'definition.limits must be a plain object'],
      [def('echo', { capabilities: new ArrayBuffer(8) as any }), undefined, 'definition.capabilities must be a plain object'],
      [def('echo'), new ArrayBuffer(8), 'options must be a plain object'],
      [throwing, undefined, 'reading definition.name threw: no descriptor'],
    ]
    for (const [definition, options, message] of cases) {
      const fast = await failure(ex.execute(definition as any, {}, options as any))
      const native = await failure(ex.executeDetailed(definition as any, {}, options as any))
      expect([fast.code, fast.message]).toEqual(['INVALID_ARGUMENT', native.message])
      expect(fast.message).toContain(message)
    }
    await ex.close()
  })
})

describe('review BX2: directories named relative to the working directory', () => {
  it('a relative cacheDir and hostDir stay the directories checked at construction after process.chdir', async () => {
    const { chmodSync, mkdirSync, mkdtempSync, readdirSync, readFileSync } = await import('node:fs')
    const { tmpdir } = await import('node:os')
    const { join } = await import('node:path')
    const top = mkdtempSync(join(tmpdir(), 'loom-bx2-'))
    for (const d of ['a/data', 'b/data', 'b/cache']) mkdirSync(join(top, d), { recursive: true })
    // The directory a later working directory would name instead: world-writable, never checked.
    chmodSync(join(top, 'b', 'cache'), 0o777)
    const s = await store()
    await s.upload('fs.wasm', guest('capabilities/fs'))
    const was = process.cwd()
    try {
      process.chdir(join(top, 'a'))
      const ex = new WasmActivityExecutor(s, { cacheDir: 'cache', filesystem: { hostDir: 'data', writable: true } })
      process.chdir(join(top, 'b'))
      await ex.precompile(def('echo'))
      const written = await ex.execute(def('fs', { capabilities: { filesystem: true } }), { path: 'f.txt', write: 'here' })
      expect(written).toEqual({ written: 4 })
      await ex.close()
      expect(readdirSync(join(top, 'a', 'cache')).some((n) => n.endsWith('.cwasm'))).toBe(true)
      expect(readdirSync(join(top, 'b', 'cache'))).toEqual([])
      expect(readFileSync(join(top, 'a', 'data', 'f.txt'), 'utf8')).toBe('here')
      expect(readdirSync(join(top, 'b', 'data'))).toEqual([])
    } finally {
      process.chdir(was)
    }
  })
})
