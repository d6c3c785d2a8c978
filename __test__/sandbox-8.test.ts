// Hostile review round AE (mutation fuzzing of modules, and random sequences of API calls): each
// test reproduces a way through that a reviewer found, and failed on the code from before its fix.
import { describe, expect, it } from 'vitest'
import { WasmActivityExecutor } from '../index'
import { def, failure, guest } from './helpers'
import { guestWat } from './wat'

/** A guest of `n` mutable i64 globals: 16 bytes each in every instance's metadata (wasmtime's VMContext). */
function manyGlobals(n: number): Promise<Buffer> {
  const globals = Array.from({ length: n }, (_, i) => `(global (mut i64) (i64.const ${i}))`).join('\n')
  return guestWat(`(func (export "execute") (param i32) (result i32) (i32.const 36)) ${globals}`)
}

describe("an instance's own metadata counts against its memory limits", () => {
  it('120,000 globals (1.9 MB per instance, in a 0.8 MB module) count in maxMemoryMB, maxActorMemoryMB and peakMemoryBytes', async () => {
    // Before: 999,000 globals held 16 MB per actor outside every bound (100 actors: 2.4 GB).
    const wasm = await manyGlobals(120_000)
    const ex = new WasmActivityExecutor({ download: async () => wasm }, { maxActorMemoryMB: 8 })
    const d = def('globals')
    const out = await ex.executeDetailed(d, {})
    expect(out.peakMemoryBytes).toBeGreaterThanOrEqual(120_000 * 16)
    // Each actor is counted 2 MiB and a page: three fit in 8 MiB, not six.
    for (let i = 0; i < 6; i++) expect((await ex.executeDetailed(d, {}, { actorId: `a${i}` })).actorCreated).toBe(true)
    expect((await ex.executeDetailed(d, {}, { actorId: 'a5' })).actorCreated).toBe(false)
    expect((await ex.executeDetailed(d, {}, { actorId: 'a0' })).actorCreated).toBe(true)
    // Under a limit smaller than its metadata, an instance is refused.
    const e = await failure(ex.execute(def('globals', { limits: { maxMemoryMB: 1 } }), {}))
    expect(e.code).toBe('OUT_OF_MEMORY')
    await ex.close()
  })

  it('a module over the instance pool\'s old metadata bound runs with tierUp: false as with tier-up', async () => {
    // Before: INVALID_MODULE with tierUp: false (the pool refused over 1 MiB of metadata); with
    // tier-up it ran on the baseline compiler and never tiered up.
    const wasm = await manyGlobals(70_000)
    const ex = new WasmActivityExecutor({ download: async () => wasm }, { tierUp: false })
    expect(await ex.execute(def('globals'), {})).toBe(1)
    await ex.close()
  })
})

describe('an executor whose callbacks hold it', () => {
  it('is collected once closed: close() lets go of download, onLog and host functions', async () => {
    // Before: none of them were ever collected (each callback's function was held by the
    // executor's own thread-safe function, and the callback held the executor).
    require('node:v8').setFlagsFromString('--expose-gc')
    const gc: () => void = require('node:vm').runInNewContext('gc')
    const wasm = await guestWat(`(func (export "execute") (param i32) (result i32) (i32.const 36))`)
    let collected = 0
    const registry = new FinalizationRegistry(() => collected++)
    const make = async (which: string) => {
      const ex: WasmActivityExecutor = new WasmActivityExecutor(
        { download: async () => (which === 'download' ? ex && wasm : wasm) },
        {
          ...(which === 'onLog' ? { onLog: () => ex.cacheStats() } : {}),
          ...(which === 'hostFunctions' ? { hostFunctions: { 'h.f': () => ex.cacheStats().modules } } : {}),
        },
      )
      registry.register(ex, which)
      expect(await ex.execute(def('c'), {})).toBe(1)
      await ex.close()
    }
    const kinds = ['download', 'onLog', 'hostFunctions']
    for (const which of kinds) await make(which)
    for (let i = 0; i < 50 && collected < kinds.length; i++) {
      gc()
      await new Promise((r) => setTimeout(r, 20))
    }
    expect(collected).toBe(kinds.length)
  })
})

describe("guests' log lines wait for onLog in a bounded queue", () => {
  it('past 4,096 lines queued, lines are dropped and the next line says how many', async () => {
    // Before: every line waited, however many (32 calls at once held 3.4 GB of lines).
    const wasm = guest('capabilities/log')
    const lines: string[] = []
    const onLog = (_level: string, message: string) => {
      lines.push(message)
      const until = performance.now() + 1 // a slow onLog: 1 ms a line
      while (performance.now() < until);
    }
    const ex = new WasmActivityExecutor({ download: async () => wasm }, { onLog, maxConcurrency: 4 })
    const calls = Array.from({ length: 8 }, () => ex.execute(def('log'), { lines: 900 }))
    for (const out of await Promise.all(calls)) expect(out).toEqual({ logged: 900 })
    // Let the queue drain, then one more line brings the count of those dropped.
    for (let seen = -1; seen !== lines.length; ) {
      seen = lines.length
      await new Promise((r) => setTimeout(r, 50))
    }
    await ex.execute(def('log'), { lines: 1 })
    await new Promise((r) => setTimeout(r, 50))
    const notes = lines.filter((m) => /^loom-wasm-executor: \d+ log lines were dropped/.test(m))
    expect(notes.length).toBeGreaterThan(0)
    const dropped = notes.reduce((n, m) => n + Number(/(\d+) log lines/.exec(m)![1]), 0)
    // Every line of the 8 calls (900 and a trace each) and the last call's was delivered or counted.
    expect(lines.length - notes.length + dropped).toBe(8 * 901 + 2)
    expect(dropped).toBeGreaterThan(0)
    await ex.close()
  })
})

describe("guests' log lines reach onLog a turn's share at a time", () => {
  it('at most 256 lines a turn of the event loop from each wake-up, every line delivered', async () => {
    // Before (review AI): every line was its own call from a thread-safe function, which Node runs
    // up to 1,000 of per turn: guests logging faster than onLog took them held the loop 40-58 ms
    // a turn for as long as they logged.
    const wasm = guest('capabilities/log')
    const lines: string[] = []
    const onLog = (_level: string, message: string) => {
      lines.push(message)
      const until = performance.now() + 0.02 // onLog slower than the guests log
      while (performance.now() < until);
    }
    const ex = new WasmActivityExecutor({ download: async () => wasm }, { onLog, maxConcurrency: 4 })
    let turns = 0
    let most = 0
    let seen = 0
    let watching = true
    const watch = () => {
      turns++
      most = Math.max(most, lines.length - seen)
      seen = lines.length
      if (watching) setImmediate(watch)
    }
    setImmediate(watch)
    const calls = Array.from({ length: 4 }, () => ex.execute(def('log'), { lines: 900 }))
    for (const out of await Promise.all(calls)) expect(out).toEqual({ logged: 900 })
    while (lines.length < 4 * 901) await new Promise((r) => setImmediate(r))
    watching = false
    expect(lines.filter((m) => /log lines were dropped/.test(m))).toEqual([])
    expect(lines.length).toBe(4 * 901)
    // Two wake-ups (the guests', the last turn's) may each deliver their share in one turn.
    expect(most).toBeLessThanOrEqual(2 * 256)
    expect(most).toBeGreaterThan(0)
    expect(turns).toBeGreaterThan((4 * 901) / 512)
    await ex.close()
  })
})
