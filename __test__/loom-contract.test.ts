// Loom's own executor tests, unchanged but for the import, then the rest of Loom's contract:
// the BlobStore it passes, the definitions it builds, the JSON in and out.
import { createHash } from 'node:crypto'
import { beforeEach, describe, expect, it } from 'vitest'
import { WasmActivityExecutor, type ActivityDefinition, type BlobStore } from '../index'
import { def, failure, guest, MemoryBlobStore, storeWith } from './helpers'

// --- Loom's test file (packages/.../wasm-executor.test.ts), with only the import changed ---
class MockBlobStore implements BlobStore {
  private blobs = new Map<string, Buffer>()
  async upload(path: string, data: Buffer): Promise<string> {
    this.blobs.set(path, data)
    return path
  }
  async download(path: string): Promise<Buffer> {
    const data = this.blobs.get(path)
    if (!data) throw new Error('Blob not found')
    return data
  }
  async exists(path: string): Promise<boolean> {
    return this.blobs.has(path)
  }
  async delete(path: string): Promise<void> {
    this.blobs.delete(path)
  }
  set(path: string, data: Buffer) {
    this.blobs.set(path, data)
  }
}

describe('WasmActivityExecutor (Loom tests)', () => {
  let blobStore: MockBlobStore
  let executor: WasmActivityExecutor

  beforeEach(() => {
    blobStore = new MockBlobStore()
    executor = new WasmActivityExecutor(blobStore)
  })

  it('should create executor', () => {
    expect(executor).toBeDefined()
  })

  it('should cache WASM modules', () => {
    expect(executor['moduleCache'].size).toBe(0)
    executor.clearCache()
    expect(executor['moduleCache'].size).toBe(0)
  })

  it('runs a module put in the mock store, and moduleCache counts it', async () => {
    blobStore.set('echo.wasm', guest('echo'))
    const out = await executor.execute(def('echo'), { message: 'hi', times: 2 })
    expect(out).toEqual({ result: 'hi hi', length: 5, executedBy: 'WASM' })
    expect(executor['moduleCache'].size).toBe(1)
    executor.clearCache()
    expect(executor['moduleCache'].size).toBe(0)
  })
})

describe('guest results', () => {
  it('echo repeats the message, joined by one space', async () => {
    const ex = new WasmActivityExecutor(await storeWith('echo'))
    expect(await ex.execute(def('echo'), { message: 'ab', times: 3 })).toEqual({
      result: 'ab ab ab',
      length: 8,
      executedBy: 'WASM',
    })
    expect(await ex.execute(def('echo'), { message: 'x', times: 0 })).toEqual({ result: '', length: 0, executedBy: 'WASM' })
    expect(await ex.execute(def('echo'), { times: 1 })).toEqual({ error: 'message must be a string' })
  })

  const unicode = [
    'plain ascii',
    'héllo wörld — ñ',
    'emoji 🌍🚀👩‍👩‍👧 and flags 🇳🇱',
    '中文, 日本語, 한국어',
    'quotes " and \\ backslash / slash',
    'control \n \t \r \b \f \u0001 \u001f',
    'lone surrogates \ud800 and \udfff survive as escapes',
    '\u2028\u2029 line separators',
  ]
  for (const message of unicode) {
    it(`round-trips ${JSON.stringify(message).slice(0, 40)}`, async () => {
      const ex = new WasmActivityExecutor(await storeWith('echo', 'echo-incremental'))
      const want = { result: `${message} ${message}`, length: message.length * 2 + 1, executedBy: 'WASM' }
      expect(await ex.execute(def('echo'), { message, times: 2 })).toEqual(want)
      expect(await ex.execute(def('echo-incremental'), { message, times: 2 })).toEqual(want)
    })
  }

  it('round-trips a large Unicode payload (1 MB) in and out', async () => {
    const ex = new WasmActivityExecutor(await storeWith('echo'))
    const message = '🌍中é'.repeat(100_000)
    const out = await ex.execute(def('echo'), { message, times: 1 })
    expect(out.result).toBe(message)
    expect(out.length).toBe(message.length)
  })

  // The transcodings take an ASCII fast path block by block: one character that is not ASCII,
  // anywhere, must send the whole text down the exact path.
  it('long ASCII payloads with one non-ASCII character at any block position round-trip', async () => {
    const ex = new WasmActivityExecutor(await storeWith('echo'))
    for (const odd of ['\u0080', 'ÿ', 'Ā', '€', '🌍', '\ud800', '\udfff', '\u007f']) {
      for (const at of [0, 254, 255, 256, 510, 511, 512, 513, 1023, 1024, 4095, 9999]) {
        const message = `${'a'.repeat(at)}${odd}${'b'.repeat(40)}`
        const out = await ex.execute(def('echo'), { message, times: 1 })
        expect(out.result, `${JSON.stringify(odd)} at ${at}`).toBe(message)
      }
    }
  })

  it('the mortgage guest computes the standard annuity payment', async () => {
    const ex = new WasmActivityExecutor(await storeWith('mortgage'))
    const out = await ex.execute(def('mortgage'), { principal: 300000, annualRate: 6.5, years: 30 })
    const r = 0.065 / 12
    const payment = (300000 * r) / (1 - Math.pow(1 + r, -360))
    expect(out.monthlyPayment).toBeCloseTo(payment, 2)
    expect(out.totalPrincipal).toBeCloseTo(300000, 0)
    expect(out.totalInterest).toBeCloseTo(payment * 360 - 300000, -1)
    expect(out.months).toBe(360)
  })

  it('input may be any JSON value; undefined is sent as null', async () => {
    const store = new MemoryBlobStore()
    await store.upload('echo.wasm', guest('echo'))
    const ex = new WasmActivityExecutor(store)
    // The echo guest needs an object; anything else gets its own error reply, which is still JSON.
    for (const input of [null, 42, 'text', [1, 2], true, undefined]) {
      expect(await ex.execute(def('echo'), input)).toEqual({ error: 'message must be a string' })
    }
  })
})

describe('actors', () => {
  it('keep guest globals between calls of one actorId', async () => {
    const ex = new WasmActivityExecutor(await storeWith('counter-actor'))
    const d = def('counter-actor')
    const counts = []
    for (const step of [
      { action: 'increment', amount: 5 },
      { action: 'increment', amount: 3 },
      { action: 'decrement', amount: 2 },
      { action: 'get' },
      { action: 'reset' },
    ]) {
      counts.push((await ex.execute(d, step, { actorId: 'a' })).count)
    }
    expect(counts).toEqual([5, 8, 6, 6, 0])
    expect(await ex.execute(d, { action: 'increment' }, { actorId: 'a' })).toEqual({ count: 1, action: 'increment' })
    expect(await ex.execute(d, { action: 'fly' }, { actorId: 'a' })).toEqual({ error: 'unknown action: fly' })
  })

  it('are isolated from each other and from stateless calls', async () => {
    const ex = new WasmActivityExecutor(await storeWith('counter-actor'))
    const d = def('counter-actor')
    await ex.execute(d, { action: 'increment', amount: 10 }, { actorId: 'a' })
    await ex.execute(d, { action: 'increment', amount: 1 }, { actorId: 'b' })
    expect((await ex.execute(d, { action: 'get' }, { actorId: 'a' })).count).toBe(10)
    expect((await ex.execute(d, { action: 'get' }, { actorId: 'b' })).count).toBe(1)
    // Without an actor every call gets a fresh instance, exactly as Loom runs activities.
    expect((await ex.execute(d, { action: 'increment' })).count).toBe(1)
    expect((await ex.execute(d, { action: 'increment' })).count).toBe(1)
    expect(ex.cacheStats().actors).toBe(2)
  })

  it('serialize concurrent calls of one actor', async () => {
    const ex = new WasmActivityExecutor(await storeWith('counter-actor'))
    const d = def('counter-actor')
    await Promise.all(Array.from({ length: 100 }, () => ex.execute(d, { action: 'increment' }, { actorId: 'x' })))
    expect((await ex.execute(d, { action: 'get' }, { actorId: 'x' })).count).toBe(100)
  })

  it('dropActor releases the instance and its state', async () => {
    const ex = new WasmActivityExecutor(await storeWith('counter-actor'))
    const d = def('counter-actor')
    await ex.execute(d, { action: 'increment', amount: 7 }, { actorId: 'a' })
    expect(ex.dropActor(d, 'a')).toBe(true)
    expect(ex.dropActor(d, 'a')).toBe(false)
    expect(ex.cacheStats().actors).toBe(0)
    expect((await ex.execute(d, { action: 'get' }, { actorId: 'a' })).count).toBe(0)
  })

  it('are bounded by maxActors (least recently used goes first)', async () => {
    const ex = new WasmActivityExecutor(await storeWith('counter-actor'), { maxActors: 2 })
    const d = def('counter-actor')
    await ex.execute(d, { action: 'increment', amount: 1 }, { actorId: 'a' })
    await ex.execute(d, { action: 'increment', amount: 2 }, { actorId: 'b' })
    await ex.execute(d, { action: 'increment', amount: 3 }, { actorId: 'c' })
    expect(ex.cacheStats().actors).toBe(2)
    expect((await ex.execute(d, { action: 'get' }, { actorId: 'c' })).count).toBe(3)
    expect((await ex.execute(d, { action: 'get' }, { actorId: 'a' })).count).toBe(0)
  })

  it('are back to maxActors once a burst of calls on new actors ends (those busy at eviction go as their calls end)', async () => {
    const ex = new WasmActivityExecutor(await storeWith('counter-actor'), { maxActors: 4, maxConcurrency: 1 })
    const d = def('counter-actor')
    // An input over 64 KiB starts on a guest thread: every call takes its actor's place at once,
    // so each new actor finds all the others busy.
    const pad = 'x'.repeat(70 * 1024)
    const ids = Array.from({ length: 40 }, (_, i) => `burst${i}`)
    const out = await Promise.all(ids.map((id) => ex.execute(d, { action: 'increment', amount: 1, pad }, { actorId: id })))
    expect(out.map((o: any) => o.count)).toEqual(ids.map(() => 1))
    // A call's promise may settle a moment before its actor is let go on its thread.
    let actors = ex.cacheStats().actors
    for (let i = 0; i < 200 && actors > 4; i++) {
      await new Promise((r) => setTimeout(r, 10))
      actors = ex.cacheStats().actors
    }
    expect(actors).toBe(4)
    await ex.close()
  })
})

describe('module cache', () => {
  // Tests that count one executor's compiles: code another test's executor still holds would
  // otherwise be shared (a shared hit, no compile).
  const alone = { shareCode: false }

  it('reports the memory freed instance slots keep resident, and a 100 KB call leaves its slot 2 MiB', async () => {
    const ex = new WasmActivityExecutor(await storeWith('echo'))
    await ex.precompile(def('echo')) // optimized code: the pooled engine
    const message = 'x'.repeat(100 * 1024)
    const out = await ex.executeDetailed(def('echo'), { message, times: 1 })
    expect(out.output.length).toBe(message.length)
    expect(out.peakMemoryBytes).toBeGreaterThanOrEqual(2 * 1024 * 1024)
    // The call's slot was reset in place and keeps its first 2 MiB for the next instance (reset
    // on the reaper's thread, which may still be at it when the call has resolved).
    const until = Date.now() + 10_000
    while (ex.cacheStats().poolIdleResidentBytes < 2 * 1024 * 1024 && Date.now() < until) await new Promise((r) => setTimeout(r, 5))
    expect(ex.cacheStats().poolIdleResidentBytes).toBeGreaterThanOrEqual(2 * 1024 * 1024)
    // Which the next call (fresh instance, same slot) finds zeroed: the guest's output is its own.
    const again = await ex.execute(def('echo'), { message: 'y', times: 2 })
    expect(again).toMatchObject({ result: 'y y', length: 3 })
  })

  it('downloads and compiles once, then hits', async () => {
    const store = await storeWith('echo')
    const ex = new WasmActivityExecutor(store, alone)
    for (let i = 0; i < 5; i++) await ex.execute(def('echo'), { message: 'm', times: 1 })
    expect(ex.cacheStats()).toMatchObject({ modules: 1, hits: 4, misses: 1, compiles: 1, artifactHits: 0, actors: 0 })
    expect(ex.cacheStats().digests).toEqual([createHash('sha256').update(guest('echo')).digest('hex')])
    expect(ex.cacheStats().codeBytes).toBeGreaterThan(0)
    expect(store.downloads).toBe(1)
  })

  it('1000 concurrent first calls download and compile once, and all succeed', async () => {
    const store = await storeWith('echo')
    const ex = new WasmActivityExecutor(store, alone)
    const results = await Promise.all(
      Array.from({ length: 1000 }, (_, i) => ex.execute(def('echo'), { message: `#${i}`, times: 2 })),
    )
    results.forEach((r, i) => expect(r.result).toBe(`#${i} #${i}`))
    expect(store.downloads).toBe(1)
    expect(ex.cacheStats()).toMatchObject({ modules: 1, misses: 1, compiles: 1, hits: 999 })
  })

  it('is keyed by content: the same bytes under two names compile once', async () => {
    const store = new MemoryBlobStore()
    await store.upload('a.wasm', guest('echo'))
    await store.upload('b.wasm', guest('echo'))
    const ex = new WasmActivityExecutor(store, alone)
    await ex.execute(def('a'), { message: 'x' })
    await ex.execute(def('b'), { message: 'x' })
    expect(ex.cacheStats()).toMatchObject({ modules: 1, misses: 2, compiles: 1 })
  })

  it('clearCache() drops all modules, clearCache(name) only that activity', async () => {
    const ex = new WasmActivityExecutor(await storeWith('echo', 'counter-actor'), alone)
    await ex.execute(def('echo'), { message: 'x' })
    await ex.execute(def('counter-actor'), { action: 'get' })
    expect(ex.moduleCache.size).toBe(2)
    ex.clearCache('echo')
    expect(ex.moduleCache.size).toBe(1)
    ex.clearCache()
    expect(ex.moduleCache.size).toBe(0)
    await ex.execute(def('echo'), { message: 'x' })
    expect(ex.cacheStats().compiles).toBe(3)
  })

  it('is bounded by maxCachedModules', async () => {
    const ex = new WasmActivityExecutor(await storeWith('echo', 'counter-actor', 'mortgage'), { ...alone, maxCachedModules: 2 })
    await ex.execute(def('echo'), { message: 'x' })
    await ex.execute(def('counter-actor'), { action: 'get' })
    await ex.execute(def('mortgage'), { principal: 1, years: 1 })
    expect(ex.moduleCache.size).toBe(2)
    await ex.execute(def('echo'), { message: 'x' })
    expect(ex.cacheStats().compiles).toBe(4)
  })

  it('a new executor takes the code another executor of the process holds (shareCode), by content only', async () => {
    // Bytes no other test compiles: the echo guest with a custom section of its own.
    const bytes = Buffer.concat([guest('echo'), Buffer.from([0, 12, 11]), Buffer.from('shared-code')])
    const first = new WasmActivityExecutor({ download: async () => bytes }, { tierUp: false })
    expect(await first.execute(def('echo'), { message: 'a', times: 1 })).toMatchObject({ result: 'a' })
    expect(first.cacheStats()).toMatchObject({ compiles: 1, sharedHits: 0 })
    const second = new WasmActivityExecutor({ download: async () => bytes })
    expect(await second.execute(def('echo'), { message: 'b', times: 2 })).toMatchObject({ result: 'b b' })
    expect(second.cacheStats()).toMatchObject({ modules: 1, misses: 1, compiles: 0, sharedHits: 1 })
    expect(second.moduleCache.size).toBe(1)
    // A store that serves other bytes under the same name gets the code of its own bytes: code
    // is found by the sha256 of what was downloaded, never by name.
    const liar = new WasmActivityExecutor({ download: async () => guest('counter-actor') })
    expect(await liar.execute(def('echo'), { action: 'increment' })).toMatchObject({ count: 1 })
    expect(liar.cacheStats().sharedHits).toBe(0)
    // shareCode: false neither takes nor offers; a value that is not a boolean is refused.
    const apart = new WasmActivityExecutor({ download: async () => bytes }, { shareCode: false })
    await apart.execute(def('echo'), { message: 'c' })
    expect(apart.cacheStats()).toMatchObject({ compiles: 1, sharedHits: 0 })
    expect(() => new WasmActivityExecutor({ download: async () => bytes }, { shareCode: 'yes' } as any)).toThrow(
      expect.objectContaining({ code: 'INVALID_ARGUMENT' }),
    )
    // Closed executors hold nothing: once none holds the code, the next executor compiles it.
    for (const ex of [first, second, liar, apart]) await ex.close()
    const last = new WasmActivityExecutor({ download: async () => bytes })
    await last.execute(def('echo'), { message: 'd' })
    expect(last.cacheStats()).toMatchObject({ sharedHits: 0 })
    expect(last.cacheStats().compiles).toBe(1)
    await last.close()
  })

  it('copies downloaded bytes: mutating the buffer afterwards does not matter', async () => {
    const bytes = Buffer.from(guest('echo'))
    const ex = new WasmActivityExecutor({ download: async () => bytes })
    await ex.execute(def('echo'), { message: 'x' })
    bytes.fill(0)
    ex.dropActor(def('echo'), 'none')
    expect(await ex.execute(def('echo'), { message: 'still', times: 1 })).toMatchObject({ result: 'still' })
  })

  it('accepts a Uint8Array from download, and a plain function store', async () => {
    const bytes = new Uint8Array(guest('echo'))
    const ex = new WasmActivityExecutor({ download: async (_p: string) => bytes })
    expect(await ex.execute(def('echo'), { message: 'u8' })).toMatchObject({ result: 'u8' })
  })

  it('a failed download is not cached; the next call retries', async () => {
    const store = new MemoryBlobStore()
    const ex = new WasmActivityExecutor(store)
    expect((await failure(ex.execute(def('echo'), {}))).code).toBe('BLOB_NOT_FOUND')
    await store.upload('echo.wasm', guest('echo'))
    expect(await ex.execute(def('echo'), { message: 'ok' })).toMatchObject({ result: 'ok' })
  })
})

describe('executeDetailed', () => {
  it('reports output, duration and peak memory', async () => {
    const ex = new WasmActivityExecutor(await storeWith('echo'))
    const d = await ex.executeDetailed(def('echo'), { message: 'x', times: 3 })
    expect(d.output).toEqual({ result: 'x x x', length: 5, executedBy: 'WASM' })
    expect(d.durationMs).toBeGreaterThan(0)
    expect(d.peakMemoryBytes).toBeGreaterThanOrEqual(65536)
    expect(d.fuelConsumed).toBeUndefined()
  })
})

describe('the executor and process stay usable', () => {
  it('a store whose download throws synchronously gives BLOB_NOT_FOUND', async () => {
    const ex = new WasmActivityExecutor({
      download(p: string): Promise<Buffer> {
        throw new Error(`sync failure for ${p}`)
      },
    })
    const e = await failure(ex.execute(def('echo'), {}))
    expect(e.code).toBe('BLOB_NOT_FOUND')
    expect(e.message).toContain('sync failure for echo.wasm')
  })

  it('a store that resolves to something other than bytes gives INVALID_MODULE', async () => {
    const ex = new WasmActivityExecutor({ download: async () => 'not bytes' as any })
    const e = await failure(ex.execute(def('echo'), {}))
    expect(e.code).toBe('INVALID_MODULE')
    expect(e.message).toContain('Uint8Array')
  })

  it('bytes over maxModuleBytes from a JS store are refused from their length, never copied', async () => {
    // They were copied on the event loop first (1000 MiB: 2.9 s and twice the memory), then refused.
    const big = Buffer.alloc(256 * 1024 * 1024, 1)
    let seenThis: unknown
    const store = { download(this: unknown) { seenThis = this; return Promise.resolve(big) } }
    const ex = new WasmActivityExecutor(store, { maxModuleBytes: 1024 })
    const peakBefore = process.resourceUsage().maxRSS
    const e = await failure(ex.execute(def('echo'), {}))
    expect(e.code).toBe('COMPILE_LIMIT')
    expect(e.message).toContain(`is ${big.length}, over the limit of 1024`)
    // The peak resident size (KiB) did not grow by a copy of the 256 MiB.
    expect(process.resourceUsage().maxRSS - peakBefore).toBeLessThan(128 * 1024)
    expect(seenThis).toBe(store)
    // A subclass whose byteLength getter lies is measured all the same.
    class Lying extends Uint8Array {
      get byteLength() {
        return 10
      }
    }
    const liar = new WasmActivityExecutor({ download: async () => new Lying(big.buffer, big.byteOffset, big.length) }, { maxModuleBytes: 1024 })
    expect((await failure(liar.execute(def('echo'), {}))).code).toBe('COMPILE_LIMIT')
    expect(process.resourceUsage().maxRSS - peakBefore).toBeLessThan(128 * 1024)
    // Under the limit: as before.
    const ok = new WasmActivityExecutor({ download: async () => guest('echo') }, { maxModuleBytes: 1024 * 1024 })
    expect(await ok.execute(def('echo'), { message: 'fits' })).toMatchObject({ result: 'fits' })
  })

  it('a blob store without download is refused at construction', () => {
    expect(() => new WasmActivityExecutor({} as any)).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }))
    expect(() => new WasmActivityExecutor(null as any)).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }))
  })

  it('malformed definitions reject with INVALID_ARGUMENT naming the field', async () => {
    const ex = new WasmActivityExecutor(new MemoryBlobStore())
    const bad: Array<[any, string]> = [
      [null, 'definition'],
      [{ name: 'x', version: '1' }, 'definition.wasmBlobPath'],
      [{ name: 1, version: '1', wasmBlobPath: 'p' }, 'definition.name'],
      [{ ...def('x'), limits: { maxExecutionMs: 'soon' } }, 'definition.limits.maxExecutionMs'],
      [{ ...def('x'), limits: { maxMemoryMB: -1 } }, 'maxMemoryMB'],
      [{ ...def('x'), capabilities: { env: 'HOME' } }, 'definition.capabilities.env'],
    ]
    for (const [d, field] of bad) {
      const e = await failure(ex.execute(d, {}))
      expect(e.code).toBe('INVALID_ARGUMENT')
      expect(e.message).toContain(field)
    }
  })
})
