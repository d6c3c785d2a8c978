// Hostile review round AB (see also the Rust tests named for it): each test reproduces a way
// through that a reviewer found, and failed on the code from before its fix.
import { mkdtempSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import { WasmActivityExecutor } from '../index'
import { def, failure, guest, MemoryBlobStore } from './helpers'
import { guestWat } from './wat'

/** Runs `f` with `key` set on Object.prototype (a prototype pollution elsewhere in the process). */
async function polluted<T>(key: string, value: unknown, f: () => Promise<T>): Promise<T> {
  Object.defineProperty(Object.prototype, key, { value, configurable: true, writable: true, enumerable: true })
  try {
    return await f()
  } finally {
    delete (Object.prototype as any)[key]
  }
}

describe('review AB: keys added to Object.prototype are no options and no fields', () => {
  const dir = mkdtempSync(join(tmpdir(), 'loom-ab-proto-'))
  writeFileSync(join(dir, 'secret.txt'), 'host secret')
  const store = async () => {
    const s = new MemoryBlobStore()
    await s.upload('fs.wasm', guest('capabilities/fs'))
    return s
  }

  it('an inherited options.filesystem grants no directory (the guest read the host root)', async () => {
    const fsDef = def('fs', { capabilities: { filesystem: true } })
    const ex = await polluted('filesystem', { hostDir: dir }, async () => new WasmActivityExecutor(await store(), {}))
    // Before: { content: 'host secret' }.
    expect((await failure(ex.execute(fsDef, { path: 'secret.txt' }))).code).toBe('CAPABILITY_DENIED')
    await ex.close()
    // Nor through a Proxy (Node-API read a Proxy's prototype as null: any Proxy passed, follow-up
    // review AB), as options, as a definition, or as its capabilities.
    const viaProxy = await polluted('filesystem', { hostDir: dir }, async () => new WasmActivityExecutor(await store(), new Proxy({}, {})))
    expect((await failure(viaProxy.execute(fsDef, { path: 'secret.txt' }))).code).toBe('CAPABILITY_DENIED')
    await viaProxy.close()
    const offered = new WasmActivityExecutor(await store(), { filesystem: { hostDir: dir } })
    const proxied = () => offered.executeDetailed(new Proxy(def('fs'), {}), { path: 'secret.txt' })
    expect((await failure(polluted('capabilities', { filesystem: true }, proxied))).code).toBe('CAPABILITY_DENIED')
    const caps = () => offered.execute(def('fs', { capabilities: new Proxy({}, {}) as any }), { path: 'secret.txt' })
    expect((await failure(polluted('filesystem', true, caps))).code).toBe('CAPABILITY_DENIED')
    await offered.close()
    // The same option given as the executor's own is obeyed.
    const granted = new WasmActivityExecutor(await store(), { filesystem: { hostDir: dir } })
    expect(await granted.execute(fsDef, { path: 'secret.txt' })).toEqual({ content: 'host secret' })
    await granted.close()
  })

  it("an inherited definition.capabilities, or one of its keys, is no grant (the fast path's reads and the native ones)", async () => {
    const ex = new WasmActivityExecutor(await store(), { filesystem: { hostDir: dir } })
    const bare = def('fs')
    const read = () => ex.execute(bare, { path: 'secret.txt' })
    expect((await failure(polluted('capabilities', { filesystem: true }, read))).code).toBe('CAPABILITY_DENIED')
    const caps = def('fs', { capabilities: {} })
    const readCaps = () => ex.execute(caps, { path: 'secret.txt' })
    expect((await failure(polluted('filesystem', true, readCaps))).code).toBe('CAPABILITY_DENIED')
    // The call's options too: an inherited actorId makes no actor.
    const granted = def('fs', { capabilities: { filesystem: true } })
    expect(await polluted('actorId', 'x', () => ex.execute(granted, { path: 'secret.txt' }, {}))).toEqual({ content: 'host secret' })
    expect(ex.cacheStats().actors).toBe(0)
    await ex.execute(granted, { path: 'secret.txt' }, { actorId: 'own' })
    expect(ex.cacheStats().actors).toBe(1)
    await ex.close()
  })

  it('options.filesystem.guestDir is a path: not empty, not 1 MiB, no NUL', async () => {
    for (const guestDir of ['', 'a\u0000b', 'x'.repeat(1 << 20)]) {
      expect(() => new WasmActivityExecutor(new MemoryBlobStore(), { filesystem: { hostDir: dir, guestDir } })).toThrow(
        expect.objectContaining({ code: 'INVALID_ARGUMENT' }),
      )
    }
  })

  it("the caller's own prototypes still count: a definition made with Object.create(base), or a class's getters", async () => {
    const ex = new WasmActivityExecutor(await store(), { filesystem: { hostDir: dir } })
    const base = def('fs', { capabilities: { filesystem: true } })
    expect(await ex.execute(Object.create(base), { path: 'secret.txt' })).toEqual({ content: 'host secret' })
    class Definition {
      get name() { return 'fs' }
      get version() { return '1' }
      get wasmBlobPath() { return 'fs.wasm' }
      get capabilities() { return { filesystem: true } }
    }
    expect(await ex.execute(new Definition() as any, { path: 'secret.txt' })).toEqual({ content: 'host secret' })
    await ex.close()
  })
})

describe("review AB: a transactional actor's last good state", () => {
  it('memory the guest grew by and never touched is not made resident in the host by the shadow copy', async () => {
    // The first call grows the memory by 256 MiB and writes nothing there. Before, the shadow
    // copied the grown part whole: 256 MiB resident per actor (and 0.5 s of host time for 512).
    const wasm = await guestWat(`(func (export "execute") (param i32) (result i32)
      (if (i32.lt_u (memory.size) (i32.const 4096)) (then (drop (memory.grow (i32.const 4096)))))
      (i32.const 36))`)
    const ex = new WasmActivityExecutor({ download: async () => wasm }, { transactional: true })
    const d = def('grows', { limits: { maxMemoryMB: 512 } })
    await ex.execute(d, {}, { actorId: 'warm-up' })
    const rss = process.memoryUsage().rss
    for (let i = 0; i < 3; i++) expect(await ex.execute(d, {}, { actorId: `a${i}` })).toBe(1)
    // Each actor's memory is 256 MiB: their shadows are real (a call that traps goes back to them).
    expect(await ex.execute(d, {}, { actorId: 'a0' })).toBe(1)
    expect(process.memoryUsage().rss - rss).toBeLessThan(64 << 20)
    await ex.close()
  })
})

describe("review AB: a JS blob store cannot skip the measure of what it hands over", () => {
  it("a promise's species is not what chains the measure either", async () => {
    let species = 0
    const big = Buffer.alloc(1 << 20)
    const ex = new WasmActivityExecutor({
      download() {
        const p = Promise.resolve(big)
        let reads = 0
        // `Promise` for Promise.resolve (which then returns p itself), an Evil species for `then`.
        class Evil extends Promise<any> {
          constructor(run: any) {
            species++
            super((resolve, reject) => run(() => resolve(big), reject))
          }
        }
        Object.defineProperty(p, 'constructor', { get: () => (reads++ === 0 ? Promise : { [Symbol.species]: Evil }) })
        return p
      },
    }, { maxModuleBytes: 65536 })
    expect((await failure(ex.execute(def('echo'), {}))).code).toBe('COMPILE_LIMIT')
    expect(species).toBe(0)
    await ex.close()
  })

  it("a promise's own `then` is not what chains the measure", async () => {
    let ownThen = 0
    const big = Buffer.alloc(1 << 20)
    const ex = new WasmActivityExecutor({
      download() {
        const p = Promise.resolve(big)
        // Skipped the measure: 512 MiB were copied on the event loop before being refused.
        p.then = ((f: any, r: any) => (ownThen++, Promise.prototype.then.call(Promise.resolve(big), (v) => v, r))) as any
        return p
      },
    }, { maxModuleBytes: 65536 })
    expect((await failure(ex.execute(def('echo'), {}))).code).toBe('COMPILE_LIMIT')
    expect(ownThen).toBe(0)
    await ex.close()
  })

  it('a view whose `then` getter grows its buffer after the measure: only what was measured is copied', async () => {
    const wasm = guest('echo')
    const buffer = new (ArrayBuffer as any)(wasm.length, { maxByteLength: wasm.length + (4 << 20) })
    const view = new Uint8Array(buffer)
    view.set(wasm)
    let thenReads = 0
    Object.defineProperty(view, 'then', { get: () => (thenReads++ > 0 && buffer.resize(wasm.length + (4 << 20)), undefined) })
    Object.defineProperty(buffer, 'resizable', { value: false })
    const ex = new WasmActivityExecutor({ download: async () => view }, { maxModuleBytes: wasm.length + 1024 })
    expect(await ex.execute(def('echo'), { message: 'hi' })).toMatchObject({ result: 'hi' })
    await ex.close()
  })

  it('a view on a buffer that grows after the measure is copied as measured', async () => {
    const wasm = guest('echo')
    const buffer = new (ArrayBuffer as any)(wasm.length, { maxByteLength: wasm.length + (4 << 20) })
    const view = new Uint8Array(buffer)
    view.set(wasm)
    const ex = new WasmActivityExecutor({
      async download() {
        // Grown once the measure has run (a few microtasks later): 4 MiB more than the limit.
        queueMicrotask(() => queueMicrotask(() => buffer.resize(wasm.length + (4 << 20))))
        return view
      },
    }, { maxModuleBytes: wasm.length + 1024 })
    expect(await ex.execute(def('echo'), { message: 'hi' })).toMatchObject({ result: 'hi' })
    await ex.close()
  })

  it('a BigInt the store resolves to is no module (it was taken for the measure of one)', async () => {
    const ex = new WasmActivityExecutor({ download: async () => 5n })
    expect((await failure(ex.execute(def('echo'), {}))).code).toBe('INVALID_MODULE')
    await ex.close()
  })
})

describe('review AB: a start function that calls a host function', () => {
  it('runs as an actor, and its snapshots are refused as such (they failed as an argument over a maxInputBytes of 0)', async () => {
    const wasm = await guestWat(`
      (global $n (mut i32) (i32.const 0))
      (func $start (drop (call $lookup (i32.const 36))))
      (start $start)
      (func (export "execute") (param i32) (result i32)
        (global.set $n (i32.add (global.get $n) (i32.const 1)))
        (i32.store16 (i32.const 100) (i32.add (i32.const 48) (global.get $n)))
        (i32.store (i32.const 96) (i32.const 2))
        (i32.const 100))`, `(import "crm" "lookup" (func $lookup (param i32) (result i32)))`)
    const ex = new WasmActivityExecutor({ download: async () => wasm }, { hostFunctions: { 'crm.lookup': () => 1 } })
    const d = def('starts', { capabilities: { hostFunctions: ['crm.lookup'] } })
    expect(await ex.execute(d, {}, { actorId: 'a' })).toBe(1)
    expect(await ex.execute(d, {}, { actorId: 'a' })).toBe(2)
    const e = await failure(ex.snapshotActor(d, 'a'))
    expect([e.code, e.message]).toEqual(['CAPABILITY_DENIED', expect.stringContaining('start function calls host function crm.lookup')])
    await ex.close()
  })
})

describe('review AB: errors that cost the host to read', () => {
  it("a blob store's error of half a gigabyte of text is not read; one whose getters throw such errors does not hang the loop", async () => {
    const longest = 'x'.repeat(2 ** 29 - 40)
    const ex = new WasmActivityExecutor({ download: async () => Promise.reject(Object.assign(new Error(longest), { code: 'E_LONG' })) })
    const e = await failure(ex.execute(def('echo'), {}))
    expect([e.code, e.message.length < 70_000, e.message]).toEqual(['BLOB_NOT_FOUND', true, expect.stringContaining(`${longest.length} characters, too long to read`)])
    await ex.close()
    // An error whose message getter and toString throw such errors again: describing it recursed
    // twice per level, and the event loop hung (follow-up review AB).
    const nasty = (): any => {
      const e = Object.create(Error.prototype)
      Object.defineProperty(e, 'message', { get: () => { throw nasty() } })
      e.toString = () => { throw nasty() }
      return e
    }
    const d = { name: 'echo', version: '1', get wasmBlobPath(): string { throw nasty() } }
    const getter = await failure(new WasmActivityExecutor(new MemoryBlobStore()).execute(d as any, {}))
    expect(getter.code).toBe('INVALID_ARGUMENT')
  })
})
