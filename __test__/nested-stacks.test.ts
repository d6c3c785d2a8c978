// A host function's text result goes back to an AssemblyScript guest through the guest's own
// `__new`, which runs on a fiber stack of its own while the call's stack stays held, and wasmtime
// keeps that second stack (the Store's cached one) until the call's own fiber ends. The pool has
// two stacks per instance (`engine::STACKS_PER_INSTANCE`; this file's pool is 1,024 instances,
// sized by its first executor: vitest runs each file in a process of its own). It had one per
// instance and an eighth to spare, and reviews found ways to run out, each making honest calls of
// other modules BUSY (their instances were there). `stacks-default-pool.test.ts` has the other:
// calls that wait in a host function after a text result.
import { describe, expect, it } from 'vitest'
import { WasmActivityExecutor } from '../index'
import { def } from './helpers'
import { guestWat, prelude } from './wat'

/**
 * Calls `h.give`; the host's answer is written through `__new`, which first spins `spin`
 * iterations (-1: until the call's deadline; set only while `execute` waits for the host, so the
 * input's `__new` is quick). `tag` makes modules of the same code distinct.
 */
const slowNew = (spin: number, tag: number) =>
  guestWat(
    `(global $tag i32 (i32.const ${tag}))
    (global $slow (mut i32) (i32.const 0))
    (func (export "execute") (param i32) (result i32)
      (global.set $slow (i32.const 1))
      (drop (call $give (i32.const 36)))
      (global.set $slow (i32.const 0))
      (i32.const 36))`,
    `(import "h" "give" (func $give (param i32) (result i32)))`,
    prelude(
      `(if (global.get $slow) (then
        (loop $spin
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br_if $spin (i32.lt_u (local.get $i) (i32.const ${spin}))))))`,
      '(local $i i32)',
    ),
  )

const count = (codes: string[]) => codes.reduce<Record<string, number>>((m, c) => ((m[c] = (m[c] ?? 0) + 1), m), {})

describe("the fiber stacks a guest's __new runs on", () => {
  it('a hostile __new that runs until its deadline makes no other call BUSY', async () => {
    // Before: 44 of the hostile calls, all 20 honest ones and a resumed parked one were BUSY
    // (4 of 4 runs).
    // 800 calls parked in a host function hold 800 instances of the pool (1,024: this executor
    // sizes it) and a fiber stack each. On the pooled engine (optimized code: no tier-up).
    const parkWasm = await guestWat(
      `(func (export "execute") (param i32) (result i32) (drop (call $wait (i32.const 36))) (i32.const 36))`,
      `(import "h" "wait" (func $wait (param i32) (result i32)))`,
    )
    const waiting: (() => void)[] = []
    const parker = new WasmActivityExecutor(
      { download: async () => parkWasm },
      { maxActors: 1, maxConcurrency: 1, tierUp: false, hostFunctions: { 'h.wait': () => new Promise<number>((r) => waiting.push(() => r(1))) } },
    )
    const park = def('park', { capabilities: { hostFunctions: ['h.wait'] } })
    const parked = Array.from({ length: 800 }, () => parker.execute(park, 1).then(() => 'ok', (e) => e.code))
    while (waiting.length < parked.length) await new Promise((r) => setTimeout(r, 5))
    // Each hostile module's first call runs on the caller's thread, overruns its 1 ms there
    // inside `__new`, and waits for a guest thread holding a second stack: both guest threads
    // spin in other calls' `__new` until their deadlines. 220 modules, one inline gate each (all
    // cached): up to 800 + 220 + 220 stacks, past the 1,024 + 128 the pool has.
    const hostile = await Promise.all(Array.from({ length: 220 }, (_, i) => slowNew(-1, i)))
    const honest = await slowNew(1000, 0)
    const ex = new WasmActivityExecutor(
      { download: async (p: string) => (p.startsWith('x') ? hostile[Number(p.slice(1, -5))] : honest) },
      { maxActors: 1, maxConcurrency: 1024, maxCachedModules: 1000, tierUp: false, hostFunctions: { 'h.give': () => 1 } },
    )
    const caps = { capabilities: { hostFunctions: ['h.give'] } }
    const defs = hostile.map((_, i) => def(`x${i}`, { ...caps, limits: { maxExecutionMs: 10000 } }))
    for (const d of defs) await ex.precompile(d)
    const h = def('honest', caps)
    await ex.precompile(h)
    const calls: Promise<string>[] = []
    for (const d of defs) {
      calls.push(ex.execute(d, 1).then(() => 'ok', (e) => e.code))
      await new Promise((r) => setTimeout(r, 1))
    }
    const honestCalls: string[] = []
    for (let i = 0; i < 20; i++) honestCalls.push(await ex.execute(h, 1).then(() => 'ok', (e) => e.code))
    waiting.forEach((r) => r())
    expect({ hostile: count(await Promise.all(calls)), honest: count(honestCalls), parked: count(await Promise.all(parked)) }).toEqual({
      hostile: { TIMEOUT: 220 },
      honest: { ok: 20 },
      parked: { ok: 800 },
    })
    await ex.close()
    await parker.close()
  }, 120_000)
})
