// Hostile review round BB (host-side memory a guest controls): each test reproduces a way through
// that a reviewer found, and failed on the code from before its fix.
import { execFileSync, spawnSync } from 'node:child_process'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import { WasmActivityExecutor } from '../index'
import { def, failure } from './helpers'
import { guestWat, wat } from './wat'

const root = join(__dirname, '..')

const blobs = (bytes: Buffer) => ({ download: async () => bytes })

/** A WASI command polling `n` clock subscriptions that are due at once; it exits with the poll's
 * errno times 10,000 plus the events it was given (an exit code is the answer it can give). */
function poller(n: number): Promise<Buffer> {
  const subs = 65536
  const events = subs + n * 48
  const pages = Math.ceil((events + n * 32) / 65536) + 1
  return wat(`(module
    (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
    (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
    (memory (export "memory") ${pages})
    (func (export "_start") (local $errno i32)
      (local.set $errno (call $poll (i32.const ${subs}) (i32.const ${events}) (i32.const ${n}) (i32.const 8)))
      (call $exit (i32.add (i32.mul (local.get $errno) (i32.const 10000)) (i32.load (i32.const 8))))))`)
}

describe('host memory a guest makes the host hold', () => {
  it("preview 1's poll_oneoff takes at most 4,096 subscriptions: more is EINVAL, not host memory past maxMemoryMB", async () => {
    // Review BB1: wasmtime-wasi makes a table entry and a boxed future per subscription, in one go
    // no deadline stops: 490,000 of them from a guest capped at 24 MiB took 260 MiB of host memory
    // and half a second past a 20 ms maxExecutionMs.
    const grant = { capabilities: { env: ['X'] }, limits: { maxMemoryMB: 64, maxExecutionMs: 10_000 } }
    const exitOf = async (n: number) => {
      const ex = new WasmActivityExecutor(blobs(await poller(n)), { env: { X: '1' } })
      try {
        return (await failure(ex.execute(def('poll', grant), null))).exitCode
      } finally {
        await ex.close()
      }
    }
    expect(await exitOf(2)).toBe(2)
    expect(await exitOf(4096)).toBe(4096)
    expect(await exitOf(4097)).toBe(280000)
    expect(await exitOf(490_000)).toBe(280000)
  })

  it("an Extism actor's vars count in maxActorMemoryMB", async () => {
    // Review BB1: only the plugin's memory was counted, so 2,000 actors of a 0-page plugin each
    // keeping 1 MiB of vars held 2 GiB under maxActorMemoryMB: 1.
    const plugin = await wat(`(module
      (import "extism:host/env" "alloc" (func $alloc (param i64) (result i64)))
      (import "extism:host/env" "store_u8" (func $s8 (param i64 i32)))
      (import "extism:host/env" "var_set" (func $vset (param i64 i64)))
      (import "extism:host/env" "output_set" (func $out (param i64 i64)))
      (memory (export "memory") 0)
      (func (export "execute") (result i32) (local $k i64) (local $o i64)
        (local.set $k (call $alloc (i64.const 1)))
        (call $s8 (local.get $k) (i32.const 107))
        (call $vset (local.get $k) (call $alloc (i64.const 1000000)))
        (local.set $o (call $alloc (i64.const 1)))
        (call $s8 (local.get $o) (i32.const 49))
        (call $out (local.get $o) (i64.const 1))
        (i32.const 0)))`)
    const ex = new WasmActivityExecutor(blobs(plugin), { maxActorMemoryMB: 4 })
    const d = def('vars', { abi: 'extism' })
    for (let i = 0; i < 20; i++) expect(await ex.execute(d, {}, { actorId: `a${i}` })).toBe(1)
    const live = ex.cacheStats().actors
    expect(live).toBeGreaterThan(0)
    expect(live).toBeLessThanOrEqual(4)
    await ex.close()
  })
})

describe('descriptors the process needs', () => {
  it('compiled modules hold at most a quarter of RLIMIT_NOFILE: under ulimit -n 256, 300 modules leave Node its files and sockets', async () => {
    // Review BB2: each module with data keeps a memfd for its memory image. Under `ulimit -n 1024`,
    // twelve executors' default caches took every descriptor: Node's own opens and sockets failed
    // with EMFILE, and calls with INVALID_MODULE ("cannot create a memfd").
    const modules = await Promise.all(
      Array.from({ length: 300 }, (_, i) => guestWat(`(func (export "execute") (param i32) (result i32) (i32.const 36)) (func (export "m${i}"))`)),
    )
    const script = `
      const { openSync, closeSync } = require('node:fs')
      const net = require('node:net')
      const { WasmActivityExecutor } = require(${JSON.stringify(root)})
      const modules = JSON.parse(require('node:fs').readFileSync(0, 'utf8')).map((b) => Buffer.from(b, 'base64'))
      ;(async () => {
        const ex = new WasmActivityExecutor({ download: async (p) => modules[Number(p)] }, { maxCachedModules: 1000 })
        const codes = {}
        for (let i = 0; i < modules.length; i++) {
          const def = { name: 'm' + i, version: '1', wasmBlobPath: String(i) }
          const code = await ex.execute(def, null).then((out) => 'ok:' + out, (e) => e.code)
          codes[code] = (codes[code] || 0) + 1
        }
        let file = 'ok'
        try { closeSync(openSync('/etc/hostname', 'r')) } catch (e) { file = e.code }
        const socket = await new Promise((resolve) => {
          const server = net.createServer().on('error', (e) => resolve(e.code)).listen(0, '127.0.0.1', () => server.close(() => resolve('ok')))
        })
        console.log(JSON.stringify({ codes, file, socket, cached: ex.cacheStats().modules }))
        await ex.close()
      })()`
    const out = execFileSync('bash', ['-c', 'ulimit -n 256 && exec node -e "$0"', script], {
      input: JSON.stringify(modules.map((m) => m.toString('base64'))),
      encoding: 'utf8',
    })
    const result = JSON.parse(out.trim().split('\n').pop()!)
    expect(result.codes).toEqual({ 'ok:1': 300 })
    expect([result.file, result.socket]).toEqual(['ok', 'ok'])
    expect(result.cached).toBeLessThanOrEqual(64)
  }, 120_000)
})

describe('replay across code tiers', () => {
  it("a deterministic definition's calls run on optimized code from the first: the NaN of min(NaN, NaN) does not hang on whether the module tiered up", async () => {
    // Review BB4: baseline code gives the first operand's NaN, optimized code the second's, so one
    // deterministic step gave two outputs and two next snapshots depending on a worker's cache.
    const guest = await guestWat(`
      (data (i32.const 48) "\\02\\00\\00\\00\\32\\00")
      (data (i32.const 64) "\\34\\12\\c0\\7f\\78\\56\\c0\\ff")
      (func (export "execute") (param i32) (result i32)
        (select (i32.const 36) (i32.const 52)
          (i32.eq (i32.reinterpret_f32 (f32.min (f32.load (i32.const 64)) (f32.load (i32.const 68)))) (i32.const 0xffc05678))))`)
    const first = async (options: Record<string, unknown>, deterministic: boolean) => {
      const ex = new WasmActivityExecutor(blobs(guest), { shareCode: false, ...options })
      try {
        return await ex.execute(def('nan', { deterministic }), null, { now: 1, seed: 1 })
      } finally {
        await ex.close()
      }
    }
    const optimized = await first({ tierUp: false }, false)
    // The premise: a first call on baseline code answers otherwise.
    expect(await first({}, false)).not.toBe(optimized)
    expect(await first({}, true)).toBe(optimized)
  })
})

describe("a dependency's known panic", () => {
  it("wasmparser's depth assertion is COMPILE_LIMIT and leaves nothing on the process's stderr", () => {
    // Review BA1: 200 component types each importing a component of the one before (2.7 KB) made
    // wasmparser assert; the panic is refused as COMPILE_LIMIT, but Rust's hook printed it to
    // stderr, once per module, for any module's author to write there.
    const leb = (n: number) => {
      const out: number[] = []
      do {
        const b = n & 0x7f
        n >>>= 7
        out.push(n ? b | 0x80 : b)
      } while (n)
      return out
    }
    const types = [0x41, 0x00]
    for (let k = 1; k < 200; k++) types.push(0x41, 0x02, 0x02, 0x03, 0x02, 0x01, ...leb(k - 1), 0x03, 0x00, 0x01, 0x61, 0x04, 0x00)
    const content = [...leb(200), ...types]
    const chain = Buffer.from([0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00, 0x07, ...leb(content.length), ...content])
    const script = `
      const { WasmActivityExecutor, inspectModule } = require(${JSON.stringify(root)})
      const chain = Buffer.from(${JSON.stringify(chain.toString('base64'))}, 'base64')
      ;(async () => {
        const codes = []
        for (let i = 0; i < 3; i++) {
          const ex = new WasmActivityExecutor({ download: async () => chain })
          codes.push(await ex.execute({ name: 'c' + i, version: '1', wasmBlobPath: 'c' }, {}).then(() => 'ok', (e) => e.code))
          await ex.close()
        }
        codes.push(await inspectModule(chain).then(() => 'ok', (e) => e.code))
        console.log(JSON.stringify(codes))
      })()`
    const run = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8' })
    expect(JSON.parse(run.stdout.trim())).toEqual(['COMPILE_LIMIT', 'COMPILE_LIMIT', 'COMPILE_LIMIT', 'COMPILE_LIMIT'])
    expect(run.stderr).not.toContain('panicked')
  })
})
