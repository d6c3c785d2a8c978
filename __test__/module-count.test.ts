// Each compiled module maps its code (2-3 memory mappings), and a process past vm.max_map_count
// (65,530 by default) crashes: a review compiled 30,079 tiny modules into one executor's cache
// (`maxCachedModules` goes to 100,000) and the process died (a failed compile, then SIGSEGV). The
// process holds at most 2,000 compiled modules (`compiled_module::MAX_LIVE_MODULES`): a cache at
// that bound lets its least recently used go as it takes a new one, and past it (other
// executors holding the rest) a load is BUSY until some are let go. vitest runs each file in a
// process of its own.
import { describe, expect, it } from 'vitest'
import { WasmActivityExecutor } from '../index'
import { def } from './helpers'
import { guestWat } from './wat'

const N = 2100

describe('compiled modules held by the process', () => {
  it('one cache with room for more keeps at most the process bound and serves every module; another executor serves its own, one at a time', async () => {
    const modules = await Promise.all(
      Array.from({ length: N }, (_, i) =>
        guestWat(`(global $tag i32 (i32.const ${i})) (func (export "execute") (param i32) (result i32) (i32.const 36))`),
      ),
    )
    const byPath = (p: string) => modules[Number(p.slice(1, -5))]
    const a = new WasmActivityExecutor({ download: async (p: string) => byPath(p) }, { maxCachedModules: 100000, tierUp: false })
    const codes: Record<string, number> = {}
    for (let i = 0; i < N; i++) {
      const code = await a.execute(def(`m${i}`), 1).then(() => 'ok', (e) => e.code)
      codes[code] = (codes[code] ?? 0) + 1
    }
    expect(codes).toEqual({ ok: N })
    const held = a.cacheStats().modules
    expect(held).toBeLessThan(2000)
    expect(held).toBeGreaterThan(1900)
    // Another executor: the first cache left an eighth of the bound (at most 64) for compiles
    // under way, and the process stays near its bound, held by the first executor's cache (it
    // evicts only its own): this one serves each module, letting its own previous one go.
    const b = new WasmActivityExecutor({ download: async (p: string) => byPath(p) }, { tierUp: false })
    for (let i = 0; i < 100; i++) expect(await b.execute(def(`m${i}`), 1)).toBe(1)
    expect(b.cacheStats().modules).toBeLessThanOrEqual(64)
    expect(a.cacheStats().modules + b.cacheStats().modules).toBeLessThanOrEqual(2000)
    // Let go: room again, and its cache keeps what it loads.
    a.clearCache()
    for (let i = 0; i < 100; i++) expect(await b.execute(def(`m${i}`), 1)).toBe(1)
    expect(b.cacheStats().modules).toBe(100)
    await a.close()
    await b.close()
  }, 120_000)
})
