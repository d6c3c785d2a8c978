// Actors never lose state silently: a runtime that never frees is called out, a discarded
// instance says so, and transactional calls undo a failed call's effects.
import { execFileSync } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import { WasmActivityExecutor } from '../index'
import { def, failure, guest, MemoryBlobStore, root } from './helpers'

async function counter(options?: ConstructorParameters<typeof WasmActivityExecutor>[1]) {
  const store = new MemoryBlobStore()
  await store.upload('counter.wasm', guest('counter-actor'))
  await store.upload('echo.wasm', guest('echo'))
  await store.upload('echo-incremental.wasm', guest('echo-incremental'))
  const logs: Array<[string, string]> = []
  const ex = new WasmActivityExecutor(store, { onLog: (level, message) => logs.push([level, message]), ...options })
  return { ex, logs }
}

const flush = () => new Promise((r) => setTimeout(r, 50))

describe('say it before it bites', () => {
  it('an actor on the stub runtime (memory grows every call) is warned about once, with its growth per call', async () => {
    const { ex, logs } = await counter()
    const d = def('echo') // built with --runtime stub, as Loom's scripts build guests
    for (let i = 0; i < 3000; i++) await ex.execute(d, { message: `call ${i}` }, { actorId: 'leaky' })
    await flush()
    const warnings = logs.filter(([level, m]) => level === 'warn' && m.includes('grows its memory'))
    expect(warnings).toHaveLength(1)
    expect(warnings[0][1]).toContain('"leaky"')
    expect(warnings[0][1]).toContain('"echo"')
    expect(warnings[0][1]).toMatch(/about \d+ bytes per call/)
    expect(warnings[0][1]).toContain('--runtime incremental')
  })

  it('an actor on a collecting runtime stays flat over 100,000 calls, and is not warned about', async () => {
    const { ex, logs } = await counter()
    const d = def('echo-incremental')
    let last: any
    for (let i = 0; i < 100_000; i++) {
      last = await ex.executeDetailed(d, { message: `call ${i} ${'x'.repeat(i % 50)}` }, { actorId: 'flat' })
    }
    await flush()
    expect(last.peakMemoryBytes).toBeLessThanOrEqual(256 * 1024)
    expect(logs.filter(([, m]) => m.includes('grows its memory'))).toHaveLength(0)
  })
})

describe('no silent reset', () => {
  it('an OOM on a non-transactional actor reports actorReset: true, and the next call actorCreated: true', async () => {
    const { ex } = await counter()
    const d = def('counter', { limits: { maxMemoryMB: 2 } })
    await ex.execute(d, { action: 'increment', amount: 7 }, { actorId: 'o' })
    const first = await ex.executeDetailed(d, { action: 'get' }, { actorId: 'o' })
    expect(first).toMatchObject({ output: { count: 7 }, actorCreated: false })
    const e = await failure(ex.execute(d, { action: 'allocate', amount: 4 * 1024 * 1024 }, { actorId: 'o' }))
    expect(e.code).toBe('OUT_OF_MEMORY')
    expect(e.actorReset).toBe(true)
    expect(e.message).toContain('state lost')
    const next = await ex.executeDetailed(d, { action: 'get' }, { actorId: 'o' })
    expect(next).toMatchObject({ output: { count: 0 }, actorCreated: true })
  })

  it('a failure before anything ran (a lowered memory cap) keeps the state and says no reset', async () => {
    const { ex } = await counter()
    await ex.execute(def('counter'), { action: 'allocate', amount: 3 * 1024 * 1024 }, { actorId: 'k' })
    await ex.execute(def('counter'), { action: 'increment', amount: 2 }, { actorId: 'k' })
    const e = await failure(ex.execute(def('counter', { limits: { maxMemoryMB: 1 } }), { action: 'get' }, { actorId: 'k' }))
    expect(e.code).toBe('OUT_OF_MEMORY')
    expect(e.actorReset).toBeUndefined()
    expect(await ex.execute(def('counter'), { action: 'get' }, { actorId: 'k' })).toMatchObject({ count: 2 })
  })
})

describe('transactional calls', () => {
  it('a failing call on a transactional actor leaves its count unchanged', async () => {
    const { ex } = await counter()
    const d = def('counter')
    await ex.execute(d, { action: 'increment', amount: 5 }, { actorId: 't', transactional: true })
    const e = await failure(ex.execute(d, { action: 'fail', amount: 100 }, { actorId: 't', transactional: true }))
    expect(e.code).toBe('GUEST_ABORT')
    expect(e.actorReset).toBeUndefined()
    const after = await ex.executeDetailed(d, { action: 'get' }, { actorId: 't', transactional: true })
    expect(after).toMatchObject({ output: { count: 5 }, actorCreated: false })
    // Without transactional, the same failure loses the state (and says so).
    const lost = await failure(ex.execute(d, { action: 'fail', amount: 100 }, { actorId: 't', transactional: false }))
    expect(lost.actorReset).toBe(true)
    expect(await ex.execute(d, { action: 'get' }, { actorId: 't' })).toMatchObject({ count: 0 })
  })

  it('timeouts, OOM and cancellation roll back too (executor-wide option)', async () => {
    const store = new MemoryBlobStore()
    await store.upload('s.wasm', guest('hostile/stateful-spin'))
    await store.upload('counter.wasm', guest('counter-actor'))
    const ex = new WasmActivityExecutor(store, { transactional: true })
    const s = def('s', { limits: { maxExecutionMs: 100 } })
    for (let i = 0; i < 3; i++) await ex.execute(s, { action: 'inc' }, { actorId: 'spinner' })
    expect((await failure(ex.execute(s, { action: 'spin' }, { actorId: 'spinner' }))).code).toBe('TIMEOUT')
    expect(await ex.execute(s, { action: 'get' }, { actorId: 'spinner' })).toEqual({ count: 3 })
    const ac = new AbortController()
    setTimeout(() => ac.abort(), 50)
    const c = await failure(ex.execute(def('s', { limits: { maxExecutionMs: 10_000 } }), { action: 'spin' }, { actorId: 'spinner', signal: ac.signal }))
    expect(c.code).toBe('CANCELLED')
    expect(await ex.execute(s, { action: 'get' }, { actorId: 'spinner' })).toEqual({ count: 3 })
    const m = def('counter', { limits: { maxMemoryMB: 2 } })
    await ex.execute(m, { action: 'increment', amount: 9 }, { actorId: 'mem' })
    expect((await failure(ex.execute(m, { action: 'allocate', amount: 4 * 1024 * 1024 }, { actorId: 'mem' }))).code).toBe('OUT_OF_MEMORY')
    expect(await ex.execute(m, { action: 'get' }, { actorId: 'mem' })).toMatchObject({ count: 9 })
  })
})

describe('the example tells actor authors which runtime to use', () => {
  it('npm run example:real-wasm still keeps actor state (5, 8, 6, 6, 0) on the incremental runtime', () => {
    const out = execFileSync('npx', ['tsx', join(root, 'examples/run-real-wasm-activity.ts')], { cwd: root, encoding: 'utf8' })
    expect(out).toContain('counts: 5, 8, 6, 6, 0')
  })
})

describe('actor handles (executor.actor(definition, actorId))', () => {
  it('run on the same actor as execute(definition, input, { actorId }), in its line; drop() resets it', async () => {
    const { ex } = await counter()
    const d = def('counter')
    const a = ex.actor(d, 'h-1')
    expect(a.actorId).toBe('h-1')
    expect(await a.execute({ action: 'increment', amount: 5 })).toMatchObject({ count: 5 })
    expect(await ex.execute(d, { action: 'increment', amount: 3 }, { actorId: 'h-1' })).toMatchObject({ count: 8 })
    // Calls made at once run one at a time, in order.
    const all = await Promise.all([1, 2, 3].map(() => a.execute({ action: 'increment' })))
    expect(all.map((r: any) => r.count)).toEqual([9, 10, 11])
    const detailed = await a.executeDetailed({ action: 'get' })
    expect([detailed.output.count, detailed.actorCreated]).toEqual([11, false])
    expect(await ex.actor(d, 'h-2').execute({ action: 'get' })).toMatchObject({ count: 0 })
    expect(a.drop()).toBe(true)
    expect(await a.execute({ action: 'get' })).toMatchObject({ count: 0 })
  })

  it('its options cannot move it to another actor; a bad definition is refused when the handle is made', async () => {
    const { ex } = await counter()
    const a = ex.actor(def('counter'), 'h')
    const e = await failure(a.execute({ action: 'get' }, { actorId: 'other' } as any))
    expect(e.code).toBe('INVALID_ARGUMENT')
    expect(() => ex.actor({ name: '', version: '1', wasmBlobPath: 'x' } as any, 'h')).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }))
    expect(() => ex.actor(def('counter'), 5 as any)).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }))
    const ac = new AbortController()
    ac.abort()
    expect((await failure(a.execute({ action: 'get' }, { signal: ac.signal }))).code).toBe('CANCELLED')
  })
})

/** Resident KiB of this process's fiber stacks: readable, writable mappings of exactly 2 MiB + 64 KiB. */
function fiberStackRssKiB(): number {
  let total = 0
  let inStack = false
  for (const line of readFileSync('/proc/self/smaps', 'utf8').split('\n')) {
    const head = /^([0-9a-f]+)-([0-9a-f]+) (\S+) /.exec(line)
    if (head) {
      inStack = head[3].startsWith('rw') && BigInt(`0x${head[2]}`) - BigInt(`0x${head[1]}`) === (2048n + 64n) * 1024n
      continue
    }
    const rss = /^Rss:\s+(\d+) kB/.exec(line)
    if (rss && inStack) total += Number(rss[1])
  }
  return total
}

describe('maxActors is what the process keeps', () => {
  it('maxActors actors (2,500) all stay live and keep their state: the instance pool is sized past its reserve for fresh calls', () => {
    // A fresh process: its first executor sizes the pool. Optimized code from the first call, so
    // every actor is in the pool (baseline code runs outside it).
    const script = `
      const { readFileSync } = require('node:fs')
      const { WasmActivityExecutor } = require(${JSON.stringify(root)})
      const bytes = readFileSync(${JSON.stringify(join(root, 'build/counter-actor.wasm'))})
      const ex = new WasmActivityExecutor({ download: async () => bytes }, { maxActors: 2500, maxConcurrency: 2, tierUp: false })
      const d = { name: 'counter', version: '1', wasmBlobPath: 'counter.wasm' }
      ;(async () => {
        for (let i = 0; i < 2500; i++) await ex.execute(d, { action: 'increment' }, { actorId: 'a' + i })
        let lost = 0
        for (let i = 0; i < 2500; i++) {
          const r = await ex.executeDetailed(d, { action: 'increment' }, { actorId: 'a' + i })
          if (r.output.count !== 2 || r.actorCreated) lost++
        }
        console.log(JSON.stringify({ lost, actors: ex.cacheStats().actors }))
      })()`
    const out = JSON.parse(execFileSync(process.execPath, ['-e', script], { encoding: 'utf8' }))
    expect(out).toEqual({ lost: 0, actors: 2500 })
  })
})

describe('idle actors give memory back', () => {
  it.runIf(process.platform === 'linux')('an actor idle for a second gives back its fiber stack pages, and keeps its state', async () => {
    const { ex } = await counter({ maxActors: 400 })
    const d = def('counter')
    const n = 200
    for (let i = 0; i < n; i++) await ex.execute(d, { action: 'increment', amount: 2 }, { actorId: `idle-${i}` })
    const busy = fiberStackRssKiB()
    // Each actor holds at least a page of its stack; the sweeper gives them back after a second.
    let idle = busy
    for (let waited = 0; waited < 15_000 && busy - idle < n * 4 * 0.75; waited += 250) {
      await new Promise((r) => setTimeout(r, 250))
      idle = fiberStackRssKiB()
    }
    expect(busy - idle).toBeGreaterThanOrEqual(n * 4 * 0.75)
    // Nothing lost: every actor goes on from its count, on a stack faulted back in.
    for (let i = 0; i < n; i++) {
      expect(await ex.execute(d, { action: 'increment' }, { actorId: `idle-${i}` })).toMatchObject({ count: 3 })
    }
    expect(fiberStackRssKiB()).toBeGreaterThanOrEqual(idle + n * 4 * 0.75)
  })
})
