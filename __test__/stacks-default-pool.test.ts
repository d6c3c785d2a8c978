// The pool that default options size on a 2-core machine (1,264 instances: `engine::pool_for`),
// full of calls that wait in a host function after another returned them text: each holds two
// fiber stacks (see `nested-stacks.test.ts`). The pool has two per instance. Before, with 1,024
// second stacks, 1,144 such calls took all 2,288 stacks with 120 instances free: 120 more were
// BUSY after their first host function had run, and so were honest calls of another module.
import { describe, expect, it } from 'vitest'
import { WasmActivityExecutor } from '../index'
import { def } from './helpers'
import { guestWat } from './wat'

const count = (codes: string[]) => codes.reduce<Record<string, number>>((m, c) => ((m[c] = (m[c] ?? 0) + 1), m), {})

describe('fiber stacks in the default pool', () => {
  it('1,200 calls waiting after a text result, and honest calls beside them, none BUSY', async () => {
    const both = await guestWat(
      `(func (export "execute") (param i32) (result i32) (drop (call $give (i32.const 36))) (drop (call $wait (i32.const 36))) (i32.const 36))`,
      `(import "h" "give" (func $give (param i32) (result i32))) (import "h" "wait" (func $wait (param i32) (result i32)))`,
    )
    const honest = await guestWat(
      `(func (export "execute") (param i32) (result i32) (drop (call $give (i32.const 36))) (i32.const 36))`,
      `(import "h" "give" (func $give (param i32) (result i32)))`,
    )
    const waiting: (() => void)[] = []
    const ex = new WasmActivityExecutor(
      { download: async (p: string) => (p === 'both.wasm' ? both : honest) },
      {
        // The defaults on 2 CPUs, written out: this file's pool is 1,264 on any machine.
        maxActors: 1000,
        maxConcurrency: 2,
        tierUp: false,
        hostFunctions: { 'h.give': () => 1, 'h.wait': () => new Promise<number>((r) => waiting.push(() => r(1))) },
      },
    )
    const d = def('both', { capabilities: { hostFunctions: ['h.give', 'h.wait'] } })
    const h = def('honest', { capabilities: { hostFunctions: ['h.give'] } })
    await ex.precompile(d)
    await ex.precompile(h)
    const parked = Array.from({ length: 1200 }, () => ex.execute(d, 1).then(() => 'ok', (e) => e.code))
    const settled = Promise.all(parked)
    let done = false
    void settled.then(() => (done = true))
    while (waiting.length < parked.length && !done) await new Promise((r) => setTimeout(r, 5))
    const honestCalls: string[] = []
    for (let i = 0; i < 10; i++) honestCalls.push(await ex.execute(h, 1).then(() => 'ok', (e) => e.code))
    waiting.forEach((r) => r())
    expect({ waited: waiting.length, honest: count(honestCalls), parked: count(await settled) }).toEqual({
      waited: 1200,
      honest: { ok: 10 },
      parked: { ok: 1200 },
    })
    await ex.close()
  }, 120_000)
})
