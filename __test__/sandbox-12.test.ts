// Hostile review round BK (the limits measured from outside the guest, and deterministic replay):
// each test reproduces a way through that a reviewer found, and failed on the code from before
// its fix. Memory is measured in a child process of its own (the test's own heap would blur it).
import { spawnSync } from 'node:child_process'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import { guestWat, wat } from './wat'

const root = join(__dirname, '..')

/** Runs `body` (async, with `bytes`, `rssMB()` and the package's exports in scope) in a fresh
 * Node process and returns what it printed as JSON. */
function inChild(bytes: Buffer, body: string): any {
  const script = `
    const { WasmActivityExecutor } = require(${JSON.stringify(root)})
    const bytes = Buffer.from(${JSON.stringify(bytes.toString('base64'))}, 'base64')
    const store = { download: async () => bytes }
    const rssMB = () => Number(/VmRSS:\\s+(\\d+)/.exec(require('fs').readFileSync('/proc/self/status', 'utf8'))[1]) / 1024
    const sleep = (ms) => new Promise((r) => setTimeout(r, ms))
    ;(async () => { ${body} })().then((r) => console.log(JSON.stringify(r)), (e) => { console.error(e); process.exit(1) })`
  const run = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: 120_000 })
  expect(run.status, run.stderr).toBe(0)
  return JSON.parse(run.stdout.trim())
}

describe('review BK2: host memory a burst of calls leaves behind', () => {
  it.skipIf(process.platform !== 'linux')('pooled fiber stacks give back the pages deep calls touched once the calls end', async () => {
    // 500 calls at once, each 19,000 frames deep (about 0.67 MB of stack) and then waiting on a
    // host Promise, under maxMemoryMB 1: the pool's stacks kept every page touched, 336 MB,
    // after the calls settled and after close().
    const bytes = await guestWat(`
      (func $rec (param $n i32) (result i32)
        (if (result i32) (i32.eqz (local.get $n)) (then (call $wait (i32.const 36)))
          (else (i32.add (i32.const 0) (call $rec (i32.sub (local.get $n) (i32.const 1)))))))
      (func (export "execute") (param i32) (result i32)
        (drop (call $rec (i32.const 19000))) (i32.const 36))`, '(import "h" "wait" (func $wait (param i32) (result i32)))')
    const r = inChild(bytes, `
      // Optimized code from the first call (the baseline compiler's frames are larger).
      const ex = new WasmActivityExecutor(store, { tierUp: false, hostFunctions: { 'h.wait': async () => { await sleep(1000); return 1 } } })
      const def = { name: 'deep', version: '1', wasmBlobPath: 'deep.wasm', limits: { maxMemoryMB: 1 }, capabilities: { hostFunctions: ['h.wait'] } }
      await ex.execute(def, 1)
      const before = rssMB()
      const done = await Promise.all(Array.from({ length: 500 }, () => ex.execute(def, 1).then(() => 'ok', (e) => e.code)))
      await sleep(200)
      const after = rssMB()
      await ex.close()
      return { ok: done.filter((d) => d === 'ok').length, grewMB: after - before }`)
    expect(r.ok).toBe(500)
    // Each slot keeps 64 KiB of linear memory and 16 KiB of each stack resident (about 48 MB for
    // 500); the touched stacks were 336 MB more.
    expect(r.grewMB).toBeLessThan(150)
  })

  it.skipIf(process.platform !== 'linux')("an Extism plugin's freed block records go back to the system after its call", async () => {
    // Two calls at once of a plugin making 4 million 1-byte blocks (counted against its
    // maxMemoryMB while they live): the allocator kept their records, 400 MB, after the calls and
    // after close().
    const bytes = await wat(`(module (import "extism:host/env" "alloc" (func $alloc (param i64) (result i64)))
      (memory (export "memory") 1)
      (func (export "execute") (result i32) (local $i i32)
        (block $d (loop $l (br_if $d (i32.ge_u (local.get $i) (i32.const 4000000)))
          (drop (call $alloc (i64.const 1)))
          (local.set $i (i32.add (local.get $i) (i32.const 1))) (br $l)))
        (i32.const 0)))`)
    const r = inChild(bytes, `
      const ex = new WasmActivityExecutor(store)
      const def = { name: 'blocks', version: '1', wasmBlobPath: 'blocks.wasm', limits: { maxMemoryMB: 2048, maxExecutionMs: 60000 } }
      const before = rssMB()
      for (let round = 0; round < 2; round++) await Promise.all([ex.executeDetailed(def, 1).catch(() => {}), ex.executeDetailed(def, 1).catch(() => {})])
      await sleep(500)
      const after = rssMB()
      await ex.close()
      return { grewMB: after - before }`)
    expect(r.grewMB).toBeLessThan(150)
  })
})
