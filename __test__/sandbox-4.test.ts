// Hostile review rounds P and Q (see also the Rust tests named for them): each test reproduces a
// way through that a reviewer found, and failed on the code from before its fix.
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import { WasmActivityExecutor } from '../index'
import { def, guest, MemoryBlobStore } from './helpers'
import { guestWat } from './wat'

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

describe('review P: one tenant and the whole process', () => {
  it('P1: maxFuel calls parked in a host function: past 2,000 live instances outside the pool, BUSY (retryable); the parked ones finish', async () => {
    // Before: nothing bounded them; 12,000 such calls took the process to vm.max_map_count and
    // Node aborted (a wasmtime munmap panicked, or V8 could not map its heap).
    const wasm = await guestWat(
      `(func (export "execute") (param i32) (result i32) (drop (call $wait (i32.const 36))) (i32.const 36))`,
      `(import "h" "wait" (func $wait (param i32) (result i32)))`,
    )
    let hold = false
    let parked = 0
    let release!: () => void
    const released = new Promise<void>((r) => (release = r))
    const ex = new WasmActivityExecutor(
      { download: async () => wasm },
      { hostFunctions: { 'h.wait': async () => { if (hold) { parked++; await released } return 1 } } },
    )
    const d = def('p', { capabilities: { hostFunctions: ['h.wait'] }, limits: { maxFuel: 1e9, maxMemoryMB: 1 } })
    await ex.execute(d, {})
    hold = true
    const codes: Record<string, number> = {}
    let settled = 0
    const calls = Array.from({ length: 2100 }, () =>
      ex.execute(d, {}).then(
        () => { codes.ok = (codes.ok ?? 0) + 1 },
        (e) => { codes[e.code] = (codes[e.code] ?? 0) + 1; if (e.code === 'BUSY') expect(e.retryable).toBe(true) },
      ).finally(() => settled++),
    )
    const deadline = Date.now() + 50_000
    while (parked + settled < 2100 && Date.now() < deadline) await sleep(10)
    expect({ parked, ...codes }).toEqual({ parked: 2000, BUSY: 100 })
    release()
    await Promise.all(calls)
    expect(codes).toEqual({ ok: 2000, BUSY: 100 })
    // The room comes back as they end.
    hold = false
    await expect(ex.execute(d, {})).resolves.toBeDefined()
    await ex.close()
  }, 60_000)
})

describe('review S: operations on an actor take their place in its line when made', () => {
  for (const durable of [false, true]) {
    it(`S1: restoreActor / snapshotActor then execute, not awaited between: served in that order${durable ? ' (actor store)' : ''}`, async () => {
      // Before: they joined the line only once their task ran, so in most rounds the execute went
      // first: its acknowledged +1 was wiped by the restore (stored, then overwritten), and a
      // snapshot taken "before" a +100 held it.
      const d = def('counter')
      const store = new MemoryBlobStore()
      await store.upload('counter.wasm', guest('counter-actor'))
      for (let round = 0; round < 10; round++) {
        const ex = new WasmActivityExecutor(store, durable ? { actorStore: `memory://s1-${round}/x` } : {})
        await ex.execute(d, { action: 'increment', amount: 10 }, { actorId: 'a' })
        const ten = await ex.snapshotActor(d, 'a')
        await ex.execute(d, { action: 'increment', amount: 5 }, { actorId: 'a' })
        const restored = ex.restoreActor(d, 'a', ten)
        const inc = ex.execute(d, { action: 'increment', amount: 1 }, { actorId: 'a' })
        await restored
        expect(await inc).toMatchObject({ count: 11 })
        expect(await ex.execute(d, { action: 'get' }, { actorId: 'a' })).toMatchObject({ count: 11 })
        const snap = ex.snapshotActor(d, 'a')
        const big = ex.execute(d, { action: 'increment', amount: 100 }, { actorId: 'a' })
        const other = new WasmActivityExecutor(store)
        await other.restoreActor(d, 'z', await snap)
        expect(await other.execute(d, { action: 'get' }, { actorId: 'z' })).toMatchObject({ count: 11 })
        expect(await big).toMatchObject({ count: 111 })
        await other.close()
        await ex.close()
      }
    })
  }
})

describe('review T: close() and operations on an actor', () => {
  it('T1: a restoreActor made before close() never writes after close() resolved (it ends CANCELLED or CLOSED; close waits for a write under way)', async () => {
    // Before: close() resolved at once; the restore, waiting for its module's download, stored its
    // snapshot 1.5 s later, over the steps another worker had acknowledged meanwhile.
    const bytes = guest('counter-actor')
    const d = def('c')
    const dir = mkdtempSync(join(tmpdir(), 'loom-sandbox-4-'))
    const store = `file://${dir}`
    const e0 = new WasmActivityExecutor({ download: async () => bytes })
    await e0.execute(d, { action: 'increment', amount: 42 }, { actorId: 'a' })
    const snap = await e0.snapshotActor(d, 'a')
    await e0.close()
    const w1 = new WasmActivityExecutor({ download: async () => (await sleep(1500), bytes) }, { actorStore: store })
    const restored = w1.restoreActor(d, 'a', snap).then(() => 'ok', (e) => e.code)
    const snapped = w1.snapshotActor(d, 'a').then(() => 'ok', (e) => e.code)
    await w1.close()
    const w2 = new WasmActivityExecutor({ download: async () => bytes }, { actorStore: store })
    for (let i = 1; i <= 5; i++) expect(await w2.execute(d, { action: 'increment', amount: 1 }, { actorId: 'a' })).toMatchObject({ count: i })
    await w2.close()
    // CLOSED if close() came before its task started, CANCELLED if while it waited.
    expect(await restored).toMatch(/^(CANCELLED|CLOSED)$/)
    expect(await snapped).toMatch(/^(CANCELLED|CLOSED)$/)
    await sleep(300)
    const w3 = new WasmActivityExecutor({ download: async () => bytes }, { actorStore: store })
    expect(await w3.execute(d, { action: 'get' }, { actorId: 'a' })).toMatchObject({ count: 5 })
    await w3.close()
    rmSync(dir, { recursive: true, force: true })
  })
})

describe('review P: memory held by idle actors', () => {
  it('P2: maxActorMemoryMB bounds what an executor\'s live actors hold together: past it, the least recently used idle ones go', async () => {
    // Before: only maxActors × each definition's own maxMemoryMB bounded it (20 idle actors of
    // 150 MiB held 3 GB).
    const wasm = await guestWat(`(func (export "execute") (param i32) (result i32)
      (if (i32.lt_u (memory.size) (i32.const 32)) (then (drop (memory.grow (i32.const 31))) (memory.fill (i32.const 65536) (i32.const 1) (i32.const 2031616))))
      (i32.const 36))`)
    const ex = new WasmActivityExecutor({ download: async () => wasm }, { maxActorMemoryMB: 8 })
    const d = def('m')
    // Each actor holds 2 MiB: four fit in 8 MiB.
    for (let i = 0; i < 6; i++) expect((await ex.executeDetailed(d, {}, { actorId: `a${i}` })).actorCreated).toBe(true)
    // a0 and a1 went when a4 and a5 came; the last four are kept.
    const recent = []
    for (const i of [5, 4, 3, 2]) recent.push((await ex.executeDetailed(d, {}, { actorId: `a${i}` })).actorCreated)
    expect(recent).toEqual([false, false, false, false])
    expect((await ex.executeDetailed(d, {}, { actorId: 'a0' })).actorCreated).toBe(true)
    // a0's return pushed out the least recently used: a5.
    expect((await ex.executeDetailed(d, {}, { actorId: 'a2' })).actorCreated).toBe(false)
    expect((await ex.executeDetailed(d, {}, { actorId: 'a5' })).actorCreated).toBe(true)
    const kept = new WasmActivityExecutor({ download: async () => wasm }, { maxActorMemoryMB: 16 })
    for (let i = 0; i < 6; i++) await kept.execute(d, {}, { actorId: `a${i}` })
    const keptAgain = []
    for (let i = 0; i < 6; i++) keptAgain.push((await kept.executeDetailed(d, {}, { actorId: `a${i}` })).actorCreated)
    expect(keptAgain).toEqual([false, false, false, false, false, false])
    await expect(new Promise((r) => r(new WasmActivityExecutor({ download: async () => wasm }, { maxActorMemoryMB: 0 })))).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' })

    // Review U: a busy actor over the budget on its own made every call's end evict every idle
    // actor, for nothing. Now idle actors go only when they can cover the excess.
    const big = await guestWat(`(func (export "execute") (param i32) (result i32)
      (if (i32.lt_u (memory.size) (i32.const 256)) (then (drop (memory.grow (i32.const 255)))))
      (drop (call $wait (i32.const 36))) (i32.const 36))`, `(import "h" "wait" (func $wait (param i32) (result i32)))`)
    let gate = Promise.resolve()
    let open = () => {}
    const close = () => { gate = new Promise<void>((r) => (open = r)) }
    const blobs = new Map([['m.wasm', wasm], ['big.wasm', big]])
    const both = new WasmActivityExecutor(
      { download: async (path: string) => blobs.get(path)! },
      { maxActorMemoryMB: 8, hostFunctions: { 'h.wait': async () => { await gate; return 1 } } },
    )
    const bigDef = def('big', { capabilities: { hostFunctions: ['h.wait'] } })
    // t0 and t1 idle while h grows past the cap on its own and waits (busy): calls on them evict
    // nothing, and they stay.
    for (let i = 0; i < 2; i++) await both.execute(d, {}, { actorId: `t${i}` })
    close()
    let busy = both.execute(bigDef, {}, { actorId: 'h' }) // 16 MiB, over the 8 on its own
    await new Promise((r) => setTimeout(r, 50))
    const tiny = []
    for (let i = 0; i < 2; i++) tiny.push((await both.executeDetailed(d, {}, { actorId: `t${i}` })).actorCreated)
    expect(tiny).toEqual([false, false])
    open()
    await busy
    // Review CA1: busy actors are never evicted (an actor is busy while a call waits in its line),
    // so while h holds more than the cap, busy, no other actor may grow: a new one is BUSY
    // (retryable), and is made once h is idle (h is then evicted for it).
    close()
    busy = both.execute(bigDef, {}, { actorId: 'h' })
    await new Promise((r) => setTimeout(r, 50))
    await expect(both.execute(d, {}, { actorId: 't2' })).rejects.toMatchObject({ code: 'BUSY', retryable: true })
    open()
    await busy
    expect((await both.executeDetailed(d, {}, { actorId: 't2' })).actorCreated).toBe(true)
    expect((await both.executeDetailed(bigDef, {}, { actorId: 'h' })).actorCreated).toBe(true)
    await both.close()
    await ex.close()
    await kept.close()
  })
})
