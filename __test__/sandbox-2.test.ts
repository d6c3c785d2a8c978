// The sandbox, second hostile round: compile bombs, identity collisions, stale modules,
// loop-blocking outputs, stores and signals that misbehave, executors that hold threads.
import { execFileSync } from 'node:child_process'
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { monitorEventLoopDelay } from 'node:perf_hooks'
import { describe, expect, it } from 'vitest'
import { ObjectBlobStore, WasmActivityExecutor, inspectModule } from '../index'
import { def, failure, guest, MemoryBlobStore, root, storeWith } from './helpers'
import { guestWat } from './wat'

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

/** A guest whose `execute` first runs a function of `locals` locals and `ifs` `if` blocks. */
function bomb(locals: number, ifs: number) {
  const body = Array.from({ length: ifs }, (_, i) => {
    const l = i % locals
    return `(if (local.get ${l}) (then (local.set ${l} (i32.add (local.get ${l}) (i32.const 1)))))`
  }).join('\n')
  return guestWat(`(func $bomb (local ${'i32 '.repeat(locals)}) ${body})
    (func (export "execute") (param $in i32) (result i32) (call $bomb) (local.get $in))`)
}

/** Echo with an element segment of `items` `ref.null func` items written as expressions, which
 * wasmtime compiles into code run as an instance starts (~15 us of compile each). */
function initBomb(items: number) {
  return guestWat(`(table ${items} funcref) (elem (i32.const 0) funcref ${'(ref.null func) '.repeat(items)})
    (func (export "execute") (param $in i32) (result i32) (local.get $in))`)
}

describe('1. compilation is bounded', () => {
  it('a 10,000-locals × 10,000-ifs module compiles fast (baseline compiler) and runs', async () => {
    const store = new MemoryBlobStore()
    await store.upload('bomb.wasm', await bomb(10_000, 10_000))
    const ex = new WasmActivityExecutor(store)
    const t0 = performance.now()
    expect(await ex.execute(def('bomb'), { ok: true })).toEqual({ ok: true })
    // Cranelift took ~16 s and 3.4 GB on it; a linear compiler takes milliseconds.
    expect(performance.now() - t0).toBeLessThan(5000)
  })

  it('the limits are checked before compiling: maxLocals, maxFunctionBytes, maxModuleBytes', async () => {
    const store = new MemoryBlobStore()
    await store.upload('bomb.wasm', await bomb(2000, 100))
    for (const options of [{ maxLocals: 1000 }, { maxFunctionBytes: 1000 }, { maxModuleBytes: 500 }, { maxFunctions: 2 }]) {
      const e = await failure(new WasmActivityExecutor(store, options).execute(def('bomb'), {}))
      expect(e.code).toBe('COMPILE_LIMIT')
      expect(e.message).toContain(Object.keys(options)[0])
    }
  })

  it("a module's initializers are limited too (maxInitInstructions): 300 KB of element items took 1.5 s of compile", async () => {
    const store = new MemoryBlobStore()
    await store.upload('init.wasm', await initBomb(10_000))
    await store.upload('small.wasm', await initBomb(2_000))
    const refused = await failure(new WasmActivityExecutor(store).execute(def('init'), { ok: 1 }))
    expect(refused.code).toBe('COMPILE_LIMIT')
    expect(refused.message).toContain('maxInitInstructions')
    // The same option lowered and raised.
    const low = await failure(new WasmActivityExecutor(store, { maxInitInstructions: 1000 }).execute(def('small'), {}))
    expect(low.message).toMatch(/initializers .* is 2002, over the limit of 1000 \(maxInitInstructions\)/)
    expect(await new WasmActivityExecutor(store, { maxInitInstructions: 2002 }).execute(def('small'), { ok: 2 })).toEqual({ ok: 2 })
  })

  it('tables no instance could hold and wide signatures are refused before compiling (a few KB made 524 MB of code or seconds of compile)', async () => {
    const store = new MemoryBlobStore()
    const tables = Array.from({ length: 3 }, (_, i) => `(table $t${i} 40000 funcref) (elem (table $t${i}) (i32.const 39999) func $f)`).join(' ')
    await store.upload('tables.wasm', await guestWat(`(func $f) ${tables} (func (export "execute") (param i32) (result i32) (local.get 0))`))
    const wide = Array.from({ length: 101 }, (_, i) => `(func (export "w${i}") (param ${'i32 '.repeat(1000)}) unreachable)`).join(' ')
    await store.upload('wide.wasm', await guestWat(`${wide} (func (export "execute") (param i32) (result i32) (local.get 0))`))
    const ex = new WasmActivityExecutor(store)
    const t = await failure(ex.execute(def('tables'), {}))
    expect(t.code).toBe('COMPILE_LIMIT')
    expect(t.message).toContain('120000 elements, over the 100000 an instance may hold')
    const w = await failure(ex.execute(def('wide'), {}))
    expect(w.code).toBe('COMPILE_LIMIT')
    expect(w.message).toContain('functions and types of more than 16 parameters and results have 101000')
    expect(ex.cacheStats().compiles).toBe(0)
  })

  it('callers stop waiting for a compile at compileTimeoutMs; the compile goes on for later callers', async () => {
    const store = new MemoryBlobStore()
    // A module whose compile surely takes far longer than 1 ms (5,000 start-up items: 100 ms or
    // more). With mortgage (a few ms of compile) the call succeeded now and then in full runs:
    // on a loaded machine the 1 ms timer can fire later than a short compile ends.
    await store.upload('slow.wasm', await initBomb(5_000))
    const ex = new WasmActivityExecutor(store, { compileTimeoutMs: 1 })
    const e = await failure(ex.execute(def('slow'), {}))
    expect(e.code).toBe('COMPILE_LIMIT')
    expect(e.message).toContain('compileTimeoutMs')
    // The compile went on in the background; a later call finds it (or joins it).
    const patient = new WasmActivityExecutor(store)
    expect(await patient.execute(def('slow'), { ok: 3 })).toEqual({ ok: 3 })
  })

  it('inspectModule keeps the JS thread free while it compiles', async () => {
    const bytes = await bomb(3000, 3000)
    const h = monitorEventLoopDelay({ resolution: 1 })
    h.enable()
    const info = await inspectModule(bytes)
    h.disable()
    expect(info.abi).toBe('assemblyscript')
    expect(h.max / 1e6).toBeLessThan(100)
  })
})

describe('2. distinct identities stay distinct', () => {
  it('actor ids with lone surrogates are refused, not collapsed', async () => {
    const store = new MemoryBlobStore()
    await store.upload('c.wasm', guest('counter-actor'))
    const ex = new WasmActivityExecutor(store)
    for (const actorId of ['user-\ud800', 'user-\udfff']) {
      const e = await failure(ex.execute(def('c'), { action: 'increment' }, { actorId }))
      expect(e.code).toBe('INVALID_ARGUMENT')
    }
    expect(() => ex.dropActor(def('c'), 'user-\udbff')).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }))
    // Well-formed ids that differ only in astral characters stay two actors.
    await ex.execute(def('c'), { action: 'increment' }, { actorId: 'user-😀' })
    expect(await ex.execute(def('c'), { action: 'get' }, { actorId: 'user-😁' })).toMatchObject({ count: 0 })
  })

  it('names, paths and store keys with lone surrogates are refused', async () => {
    const ex = new WasmActivityExecutor(new MemoryBlobStore())
    for (const d of [def('a\ud800'), def('a', { wasmBlobPath: 'x\udfff.wasm' }), def('a', { version: '\ud800' })]) {
      expect((await failure(ex.execute(d, {}))).code).toBe('INVALID_ARGUMENT')
    }
    const s = new ObjectBlobStore('memory://ids')
    expect((await failure(s.upload('k\ud800', Buffer.from('a')))).code).toBe('INVALID_ARGUMENT')
    expect((await failure(s.download('k\udfff'))).code).toBe('INVALID_ARGUMENT')
  })
})

describe('3. clearCache wins over a download in flight', () => {
  it('a blob replaced and the cache cleared mid-download: later calls run the new bytes', async () => {
    const store = new MemoryBlobStore()
    await store.upload('m.wasm', guest('counter-actor'))
    let release!: () => void
    const gate = new Promise<void>((r) => (release = r))
    let downloads = 0
    const slow = {
      download: async (p: string) => {
        const bytes = await store.download(p)
        if (downloads++ === 0) await gate
        return bytes
      },
    }
    const ex = new WasmActivityExecutor(slow)
    const first = ex.execute(def('m'), { action: 'get' })
    await sleep(20)
    await store.upload('m.wasm', guest('echo'))
    ex.clearCache()
    release()
    expect(await first).toMatchObject({ count: 0 }) // it asked before the clear
    expect(await ex.execute(def('m'), { message: 'new' })).toMatchObject({ result: 'new' })
    expect(ex.cacheStats().misses).toBe(2)
  })
})

describe('4. a kept actor runs under the current grants and limits', () => {
  it('env grants are re-applied to a kept actor', async () => {
    process.env.LOOM_ACTOR_SECRET = 'visible'
    try {
      const store = new MemoryBlobStore()
      await store.upload('env.wasm', guest('capabilities/env'))
      const ex = new WasmActivityExecutor(store, { env: ['LOOM_ACTOR_SECRET', 'LOOM_OTHER'] })
      const granted = def('env', { capabilities: { env: ['LOOM_ACTOR_SECRET', 'LOOM_OTHER'] } })
      expect(await ex.execute(granted, {}, { actorId: 'e' })).toEqual({ LOOM_ACTOR_SECRET: 'visible' })
      const narrowed = def('env', { capabilities: { env: ['LOOM_OTHER'] } })
      expect(await ex.execute(narrowed, {}, { actorId: 'e' })).toEqual({})
    } finally {
      delete process.env.LOOM_ACTOR_SECRET
    }
  })

  it('an actor past a lowered maxMemoryMB is refused (and kept), not run past the cap', async () => {
    const store = new MemoryBlobStore()
    await store.upload('echo.wasm', guest('echo'))
    const ex = new WasmActivityExecutor(store)
    await ex.execute(def('echo'), { message: 'x'.repeat(3_000_000) }, { actorId: 'big' })
    const e = await failure(ex.execute(def('echo', { limits: { maxMemoryMB: 2 } }), { message: 'y' }, { actorId: 'big' }))
    expect(e.code).toBe('OUT_OF_MEMORY')
    expect(e.actorReset).toBeUndefined()
    expect(await ex.execute(def('echo'), { message: 'z' }, { actorId: 'big' })).toMatchObject({ result: 'z' })
  })
})

describe('6. output that would block the event loop', () => {
  it('output nested past maxOutputDepth is INVALID_OUTPUT, checked off the JS thread', async () => {
    const depth = 2000
    const bytes = await guestWat(`(func (export "execute") (param i32) (result i32)
        (local $i i32) (local $p i32)
        (i32.store (i32.const 8188) (i32.const ${depth * 4}))
        (local.set $p (i32.const 8192))
        (loop $l
          (i32.store16 (local.get $p) (i32.const 91))
          (i32.store16 (i32.add (local.get $p) (i32.const ${depth * 2})) (i32.const 93))
          (local.set $p (i32.add (local.get $p) (i32.const 2)))
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br_if $l (i32.lt_u (local.get $i) (i32.const ${depth}))))
        (i32.const 8192))`)
    const store = new MemoryBlobStore()
    await store.upload('deep.wasm', bytes)
    const e = await failure(new WasmActivityExecutor(store).execute(def('deep'), {}))
    expect(e.code).toBe('INVALID_OUTPUT')
    expect(e.message).toContain('maxOutputDepth')
    const out = await new WasmActivityExecutor(store, { maxOutputDepth: 5000 }).execute(def('deep'), {})
    expect(Array.isArray(out)).toBe(true)
  })
})

describe('7. blob stores that return thenables or plain values', () => {
  it('a thenable, a Buffer returned directly and a throwing download all work or fail coded', async () => {
    const bytes = guest('echo')
    const thenable = { download: (_p: string) => ({ then: (ok: (b: Buffer) => void) => ok(bytes) }) }
    const direct = { download: (_p: string) => bytes }
    const throwing = { download: (_p: string) => { throw new Error('sync boom') } }
    const badThen = { download: (_p: string) => ({ then: () => { throw new Error('then boom') } }) }
    for (const s of [thenable, direct]) {
      expect(await new WasmActivityExecutor(s as any).execute(def('e'), { message: 'ok' })).toMatchObject({ result: 'ok' })
    }
    for (const [s, why] of [[throwing, 'sync boom'], [badThen, 'then boom']] as const) {
      const e = await failure(new WasmActivityExecutor(s as any).execute(def('e'), {}))
      expect(e.code).toBe('BLOB_NOT_FOUND')
      expect(e.message).toContain(why)
    }
  })

  it('the process survives under --force-node-api-uncaught-exceptions-policy=true', () => {
    const script = `
      const { WasmActivityExecutor } = require(${JSON.stringify(join(root, 'index.js'))})
      const bytes = require('fs').readFileSync(${JSON.stringify(join(root, 'build/echo.wasm'))})
      const stores = [
        { download: () => ({ then: (ok) => ok(bytes) }) },
        { download: () => ({ then: () => { throw new Error('x') } }) },
        { download: () => { throw new Error('y') } },
        { download: () => bytes },
      ]
      Promise.allSettled(stores.map((s) => new WasmActivityExecutor(s).execute({ name: 'e', version: '1', wasmBlobPath: 'e' }, { message: 'm' })))
        .then((r) => console.log(JSON.stringify(r.map((x) => x.status === 'fulfilled' ? 'ok' : x.reason.code))))
    `
    const out = execFileSync(process.execPath, ['--force-node-api-uncaught-exceptions-policy=true', '-e', script], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    expect(JSON.parse(out)).toEqual(['ok', 'BLOB_NOT_FOUND', 'BLOB_NOT_FOUND', 'ok'])
  })
})

describe('8. getters that throw', () => {
  it('on options, the signal and the store: coded errors, never a raw synchronous throw', async () => {
    const store = new MemoryBlobStore()
    await store.upload('echo.wasm', guest('echo'))
    const ex = new WasmActivityExecutor(store)
    const trap = (what: string) => ({ get [what]() { throw new Error(`${what} getter`) } })
    const cases: Array<[any, string]> = [
      [{ get actorId() { throw new Error('actorId getter') } }, 'INVALID_ARGUMENT'],
      [{ signal: { get aborted() { throw new Error('aborted getter') }, addEventListener() {} } }, 'INVALID_ARGUMENT'],
      [{ signal: { aborted: false, addEventListener() { throw new Error('add threw') } } }, 'INVALID_ARGUMENT'],
    ]
    for (const [options, code] of cases) {
      const p = ex.execute(def('echo'), { message: 'x' }, options)
      expect(p).toBeInstanceOf(Promise)
      expect((await failure(p)).code).toBe(code)
    }
    expect(() => new WasmActivityExecutor(trap('download') as any)).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }))
    expect(() => new WasmActivityExecutor(store, trap('maxActors') as any)).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }))
  })

  it('a signal whose removeEventListener throws does not lose the result', async () => {
    const store = new MemoryBlobStore()
    await store.upload('echo.wasm', guest('echo'))
    const ex = new WasmActivityExecutor(store)
    const signal = { aborted: false, addEventListener() {}, removeEventListener() { throw new Error('remove threw') } }
    expect(await ex.execute(def('echo'), { message: 'kept' }, { signal } as any)).toMatchObject({ result: 'kept' })
    // and on a call that finishes on a guest thread
    await store.upload('mortgage.wasm', guest('mortgage'))
    const out = await ex.execute(def('mortgage'), { principal: 300000, annualRate: 6.5, years: 30, scenarios: 200 }, { signal } as any)
    expect(out).toBeTruthy()
  })
})

describe('9. store keys no store can hold', () => {
  it('ObjectBlobStore keys a file system cannot hold are INVALID_ARGUMENT, not BLOB_UNAVAILABLE', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'loom-keys-'))
    const s = new ObjectBlobStore(`file://${dir}`)
    for (const n of [241, 256, 300]) {
      expect((await failure(s.upload('x'.repeat(n), Buffer.from('a')))).code).toBe('INVALID_ARGUMENT')
      expect((await failure(s.download('x'.repeat(n)))).code).toBe('INVALID_ARGUMENT')
    }
    // The longest segment a file store takes (room is left for its temporary-file suffix).
    expect(await s.upload('x'.repeat(240), Buffer.from('a'))).toBe('x'.repeat(240))
    expect((await s.download('x'.repeat(240))).toString()).toBe('a')
    // Cloud stores take longer segments, up to the whole key's 1024 bytes.
    const m = new ObjectBlobStore('memory://keys')
    expect(await m.upload('y'.repeat(500), Buffer.from('b'))).toBe('y'.repeat(500))
    expect((await failure(m.upload('y/'.repeat(600), Buffer.from('b')))).code).toBe('INVALID_ARGUMENT')
  })
})

const threads = () => Number(/Threads:\s+(\d+)/.exec(readFileSync('/proc/self/status', 'utf8'))![1])

describe('10. executors and threads', () => {
  it('3000 unreachable executors hold no threads', async () => {
    const store = new MemoryBlobStore()
    await store.upload('echo.wasm', guest('echo'))
    const warm = new WasmActivityExecutor(store)
    await warm.execute(def('echo'), { message: 'warm' })
    const before = threads()
    for (let i = 0; i < 3000; i++) new WasmActivityExecutor(store, { maxConcurrency: 2 })
    expect(threads() - before).toBeLessThan(5)
  })

  it('close() cancels calls in flight, refuses new ones with CLOSED, and releases actors', async () => {
    const store = new MemoryBlobStore()
    await store.upload('spin.wasm', guest('hostile/spin'))
    await store.upload('c.wasm', guest('counter-actor'))
    const ex = new WasmActivityExecutor(store)
    await ex.execute(def('c'), { action: 'increment' }, { actorId: 'a' })
    const running = failure(ex.execute(def('spin', { limits: { maxExecutionMs: 20_000 } }), {}))
    await sleep(100)
    const t0 = performance.now()
    await ex.close()
    expect(performance.now() - t0).toBeLessThan(2000)
    expect((await running).code).toBe('CANCELLED')
    expect((await failure(ex.execute(def('c'), { action: 'get' }, { actorId: 'a' }))).code).toBe('CLOSED')
    expect(ex.cacheStats()).toMatchObject({ actors: 0, modules: 0 })
    await ex.close() // idempotent
  })

  it('Symbol.asyncDispose closes the executor', async () => {
    const ex = new WasmActivityExecutor(new MemoryBlobStore())
    expect(typeof (ex as any)[Symbol.asyncDispose]).toBe('function')
    await (ex as any)[Symbol.asyncDispose]()
    expect((await failure(ex.execute(def('x'), {}))).code).toBe('CLOSED')
  })
})

describe('held in the same round (kept so)', () => {
  it('10,000 calls with aborts at random moments: no hang, no INTERNAL, steady threads', async () => {
    const store = new MemoryBlobStore()
    await store.upload('echo.wasm', guest('echo'))
    await store.upload('mortgage.wasm', guest('mortgage'))
    const ex = new WasmActivityExecutor(store)
    await ex.execute(def('mortgage'), { principal: 1, annualRate: 1, years: 1, scenarios: 1 })
    const before = threads()
    const codes = new Map<string, number>()
    const batch = async (n: number) => {
      await Promise.all(
        Array.from({ length: n }, async (_, i) => {
          const ac = new AbortController()
          const slow = i % 7 === 0
          const p = slow
            ? ex.execute(def('mortgage'), { principal: 300000, annualRate: 6, years: 30, scenarios: 20 }, { signal: ac.signal })
            : ex.execute(def('echo'), { message: `${i}` }, { signal: ac.signal })
          if (i % 3 === 0) ac.abort()
          else if (i % 3 === 1) setTimeout(() => ac.abort(), Math.random() * 5)
          try {
            await p
            codes.set('ok', (codes.get('ok') ?? 0) + 1)
          } catch (e: any) {
            codes.set(e.code, (codes.get(e.code) ?? 0) + 1)
          }
        }),
      )
    }
    for (let b = 0; b < 20; b++) await batch(500)
    expect([...codes.keys()].sort()).toEqual(expect.arrayContaining(['CANCELLED', 'ok']))
    expect(codes.has('INTERNAL')).toBe(false)
    expect([...codes.values()].reduce((a, b) => a + b, 0)).toBe(10_000)
    expect(threads() - before).toBeLessThan(20)
  })

  it('50,000 concurrent calls with NUL, lone surrogates and astral characters: 0 wrong', async () => {
    const store = new MemoryBlobStore()
    await store.upload('echo.wasm', guest('echo'))
    const ex = new WasmActivityExecutor(store)
    const texts = ['\u0000nul\u0000', 'lone \ud800 high', 'lone \udfff low', 'astral 😀𝄞', 'mixed \u0000😀\ud83d']
    let wrong = 0
    for (let b = 0; b < 10; b++) {
      const results = await Promise.all(
        Array.from({ length: 5000 }, (_, i) => {
          const message = `${texts[i % texts.length]}#${b * 5000 + i}`
          return ex.execute(def('echo'), { message, times: 1 }).then((out: any) => (out.result === message ? 0 : 1))
        }),
      )
      wrong += results.reduce((a, b) => a + b, 0)
    }
    expect(wrong).toBe(0)
  })
})

describe('11. the first calls of a fresh process, from a warm cacheDir', () => {
  // In a fresh process, code loaded from the artifact cache runs before the instance pool exists
  // (on an engine without one) and moves to the pooled engine once the pool is built.
  it('keep their time and memory limits, and actors keep their state across the move', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'loom-fresh-'))
    const names = ['hostile/spin', 'hostile/memory-bomb', 'counter-actor']
    const warm = new WasmActivityExecutor(await storeWith(...names), { cacheDir: dir })
    for (const n of names) await warm.precompile(def(n))
    const script = `
      const { readFileSync } = require('node:fs')
      const { WasmActivityExecutor } = require(${JSON.stringify(root)})
      const store = { download: async (p) => readFileSync(${JSON.stringify(join(root, 'build'))} + '/' + p) }
      const ex = new WasmActivityExecutor(store, { cacheDir: ${JSON.stringify(dir)} })
      const def = (name, limits) => ({ name, version: '1.0.0', wasmBlobPath: name + '.wasm', limits })
      const code = (p) => p.then(() => 'ok', (e) => e.code)
      const inc = async (id) => (await ex.execute(def('counter-actor'), { action: 'increment' }, { actorId: id })).count
      ;(async () => {
        // All three load while the pool is not built yet (building it takes milliseconds; under
        // load a second or third load may end after it, and loads pooled at once: a CI run
        // counted 2 moves).
        const [spin, bomb, first] = await Promise.all([
          code(ex.execute(def('hostile/spin', { maxExecutionMs: 100 }), {})),
          code(ex.execute(def('hostile/memory-bomb', { maxMemoryMB: 4 }), {})),
          inc('early'),
        ])
        for (let i = 0; i < 500 && ex.cacheStats().pooledLater < 1; i++) await new Promise((r) => setTimeout(r, 10))
        await new Promise((r) => setTimeout(r, 200))
        const counts = [first, await inc('early'), await inc('late'), await inc('early')]
        const { artifactHits, compiles, pooledLater } = ex.cacheStats()
        console.log(JSON.stringify({ spin, bomb, counts, artifactHits, compiles, pooledLater }))
      })()`
    const out = JSON.parse(execFileSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: 60_000 }))
    expect(out).toMatchObject({ spin: 'TIMEOUT', bomb: 'OUT_OF_MEMORY', counts: [1, 2, 1, 3], artifactHits: 3, compiles: 0 })
    expect(out.pooledLater).toBeGreaterThanOrEqual(1)
    expect(out.pooledLater).toBeLessThanOrEqual(3)
    await warm.close()
  })
})

describe('loading the addon again', () => {
  it('workers that load it one after another, the main thread never, all work (a recycling worker pool)', () => {
    // When the last environment using the addon goes, napi-rs shuts down the runtime it was
    // given; the core kept using it, so every later worker's calls failed with INTERNAL.
    const code = `
      const { Worker, isMainThread, workerData, parentPort } = require('node:worker_threads')
      if (isMainThread) {
        ;(async () => {
          const results = []
          for (let i = 0; i < 3; i++) {
            results.push(await new Promise((resolve, reject) => {
              const w = new Worker(__filename, { workerData: i })
              w.once('message', resolve)
              w.once('error', reject)
            }))
            await new Promise((r) => setTimeout(r, 50))
          }
          console.log(JSON.stringify(results))
        })().catch((e) => { console.error(e); process.exit(2) })
      } else {
        const { WasmActivityExecutor } = require(${JSON.stringify(root)})
        const bytes = require('node:fs').readFileSync(${JSON.stringify(join(root, 'build', 'echo.wasm'))})
        const ex = new WasmActivityExecutor({ download: async () => bytes })
        ex.precompile({ name: 'echo', version: '1', wasmBlobPath: 'echo.wasm' })
          .then(() => ex.execute({ name: 'echo', version: '1', wasmBlobPath: 'echo.wasm' }, { message: 'w' + workerData }))
          .then((o) => o.result, (e) => e.code + ': ' + e.message)
          .then((r) => { parentPort.postMessage(r); return ex.close() })
      }
    `
    const file = join(mkdtempSync(join(tmpdir(), 'loom-workers-')), 'pool.cjs')
    writeFileSync(file, code)
    const out = execFileSync(process.execPath, [file], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] })
    expect(JSON.parse(out)).toEqual(['w0', 'w1', 'w2'])
  })

  it('a second load into the same environment (a module registry reset, a VM context) works and does not abort Node', () => {
    // Jest's resetModules, vitest's vm pools and others load a native addon afresh into the same
    // Node environment: each load registers the module again, with a new napi_env. A cleanup
    // hook registered twice with the same (function, argument) aborts the whole process.
    const addon = join(root, 'loom-wasm-executor.linux-x64-gnu.node')
    const code = `
      const bytes = require('node:fs').readFileSync(${JSON.stringify(join(root, 'build', 'echo.wasm'))})
      const def = { name: 'echo', version: '1', wasmBlobPath: 'echo.wasm' }
      const run = async (binding, message) => {
        const ex = new binding.WasmActivityExecutor({ download: async () => bytes })
        const out = await ex.execute(def, { message })
        await ex.close()
        return out.result
      }
      const load = () => { const m = { exports: {} }; process.dlopen(m, ${JSON.stringify(addon)}); return m.exports }
      ;(async () => {
        const first = load()
        const a = await run(first, 'first')
        const second = load()
        const b = await run(second, 'second')
        const c = await run(first, 'first again')
        const third = load()
        console.log(JSON.stringify([a, b, c, await run(third, 'third')]))
      })().catch((e) => { console.error(e); process.exit(2) })
    `
    const out = execFileSync(process.execPath, ['-e', code], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] })
    expect(JSON.parse(out)).toEqual(['first', 'second', 'first again', 'third'])
  })

  it('an ObjectBlobStore from an earlier load is one; an object merely inheriting its prototype is not', () => {
    // napi-rs's instanceof checks the latest load's constructor: a store made by an earlier load
    // was refused as artifactStore/actorStore, and a plain object with the class's prototype got
    // INTERNAL from a failed unwrap. Native objects are recognised by their type tag now; the
    // prototype-only object is a JS store by its shape (it has a `download`), refused elsewhere.
    const addon = join(root, 'loom-wasm-executor.linux-x64-gnu.node')
    const dir = mkdtempSync(join(tmpdir(), 'loom-second-load-'))
    const code = `
      const fs = require('node:fs')
      const bytes = fs.readFileSync(${JSON.stringify(join(root, 'build', 'counter-actor.wasm'))})
      const dir = ${JSON.stringify(dir)}
      fs.mkdirSync(dir + '/blobs'); fs.mkdirSync(dir + '/artifacts'); fs.mkdirSync(dir + '/actors')
      fs.writeFileSync(dir + '/blobs/counter.wasm', bytes)
      const load = () => { const m = { exports: {} }; process.dlopen(m, ${JSON.stringify(addon)}); return m.exports }
      const outcome = (p) => p.then((v) => v, (e) => e.code)
      ;(async () => {
        const first = load()
        const blobs = new first.ObjectBlobStore('file://' + dir + '/blobs')
        const artifacts = new first.ObjectBlobStore('file://' + dir + '/artifacts')
        const actors = new first.ObjectBlobStore('file://' + dir + '/actors')
        const second = load()
        const key = 'k'.repeat(32)
        const def = { name: 'counter', version: '1', wasmBlobPath: 'counter.wasm' }
        const ex = new second.WasmActivityExecutor(blobs, { artifactStore: artifacts, artifactKey: key, actorStore: actors })
        const a = await ex.execute(def, { action: 'increment', amount: 4 }, { actorId: 'a' })
        await ex.close()
        const spoof = Object.create(second.ObjectBlobStore.prototype)
        const attempts = {}
        for (const [name, make] of Object.entries({
          blobStore: () => new second.WasmActivityExecutor(spoof),
          artifactStore: () => new second.WasmActivityExecutor(blobs, { artifactStore: spoof, artifactKey: key }),
          actorStore: () => new second.WasmActivityExecutor(blobs, { actorStore: spoof }),
        })) {
          try { await make().close(); attempts[name] = 'made' } catch (e) { attempts[name] = e.code }
        }
        console.log(JSON.stringify({
          count: a.count,
          artifacts: fs.readdirSync(dir + '/artifacts').length > 0,
          actors: fs.readdirSync(dir + '/actors', { recursive: true }).length > 0,
          attempts,
        }))
      })().catch((e) => { console.error(e); process.exit(2) })
    `
    const out = execFileSync(process.execPath, ['-e', code], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] })
    expect(JSON.parse(out)).toEqual({
      count: 4,
      artifacts: true,
      actors: true,
      attempts: { blobStore: 'made', artifactStore: 'INVALID_ARGUMENT', actorStore: 'INVALID_ARGUMENT' },
    })
  })
})
