// Hostile review round AS (the JS API under hostile values, WASI commands, components): each test
// reproduces a way through that a reviewer found, and failed on the code from before its fix.
import { execFileSync } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import { WasmActivityExecutor } from '../index'
import { def, failure } from './helpers'
import { wat } from './wat'

const root = join(__dirname, '..')

describe('a definition or an option that re-enters the executor until the JS stack runs out', () => {
  it('is refused, and Node lives: a getter, a toJSON, a signal each calling the executor again', () => {
    // Before: the error built at the deepest level was handed to napi-rs's conversion, which reads
    // its `cause` and, when that read throws (every read does at the stack's limit), describes that
    // throw the same way, without end: Node died of a real stack overflow (SIGSEGV), every time.
    const script = `
      const { readFileSync } = require('node:fs')
      const { WasmActivityExecutor } = require(${JSON.stringify(root)})
      process.on('unhandledRejection', () => {}) // promises the recursion could not attach a handler to
      const bytes = readFileSync(${JSON.stringify(join(root, 'build/echo.wasm'))})
      const ex = new WasmActivityExecutor({ download: async () => bytes })
      const d = { name: 'echo', version: '1', wasmBlobPath: 'echo.wasm' }
      const levels = {}
      const modes = {
        dropActor: (again) => ex.dropActor({ ...d, get name() { again(); return 'echo' } }, 'a'),
        actor: (again) => ex.actor({ ...d, get version() { again(); return '1' } }, 'a'),
        getter: (again) => ex.execute({ ...d, get wasmBlobPath() { again(); return 'echo.wasm' } }, {}),
        toJSON: (again) => ex.execute(d, { toJSON() { again(); return {} } }),
        options: (again) => ex.execute(d, {}, { get actorId() { again(); return undefined } }),
        signal: (again) => ex.execute(d, {}, { signal: { get aborted() { again(); return false }, addEventListener() {}, removeEventListener() {} } }),
      }
      for (const [mode, enter] of Object.entries(modes)) {
        let n = 0
        const again = () => { n++; try { enter(again) } catch {} }
        for (let pad = 0; pad < 8; pad++) {
          const padded = (k) => (k > 0 ? padded(k - 1) : again())
          padded(pad * 7)
        }
        levels[mode] = n
      }
      ex.close().then(() => console.log(JSON.stringify(levels)))`
    const out = JSON.parse(execFileSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: 120_000, stdio: ['ignore', 'pipe', 'pipe'] }))
    for (const mode of ['dropActor', 'actor', 'getter', 'toJSON', 'options', 'signal']) {
      // Each went deep enough to reach the stack's limit (hundreds of levels), and came back.
      expect(out[mode], mode).toBeGreaterThan(8 * 50)
    }
  })
})

/** A WASI command writing `first` then `second` bytes of 99-character lines to stderr, printing the
 * two writes' errnos as `[a,b]` on stdout, then exiting with `exit` (after writing "THE END"). */
function stderrWriter(first: number, second: number, exit = 0): Promise<Buffer> {
  return wat(`(module
    (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
    (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
    (memory (export "memory") 8)
    (data (i32.const 300) "[,]0123456789THE END\\n")
    (func $write (param $fd i32) (param $ptr i32) (param $len i32) (result i32)
      (i32.store (i32.const 0) (local.get $ptr)) (i32.store (i32.const 4) (local.get $len))
      (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8)))
    (func $digit (param $n i32) (drop (call $write (i32.const 1) (i32.add (i32.const 303) (local.get $n)) (i32.const 1))))
    (func (export "_start") (local $i i32) (local $a i32) (local $b i32)
      (memory.fill (i32.const 65536) (i32.const 120) (i32.const 300000))
      (loop $l
        (i32.store8 (i32.add (i32.const 65535) (local.get $i)) (i32.const 10))
        (local.set $i (i32.add (local.get $i) (i32.const 100)))
        (br_if $l (i32.lt_u (local.get $i) (i32.const 300000))))
      (local.set $a (call $write (i32.const 2) (i32.const 65536) (i32.const ${first})))
      (local.set $b (call $write (i32.const 2) (i32.const 65536) (i32.const ${second})))
      (drop (call $write (i32.const 1) (i32.const 300) (i32.const 1)))
      (call $digit (i32.rem_u (local.get $a) (i32.const 10)))
      (drop (call $write (i32.const 1) (i32.const 301) (i32.const 1)))
      (call $digit (i32.rem_u (local.get $b) (i32.const 10)))
      (drop (call $write (i32.const 1) (i32.const 302) (i32.const 1)))
      (if (i32.ne (i32.const ${exit}) (i32.const 0)) (then
        (drop (call $write (i32.const 2) (i32.const 313) (i32.const 8)))
        (call $proc_exit (i32.const ${exit}))))))`)
}

describe("a WASI command's stdio", () => {
  it('stdout past maxOutputBytes is OUTPUT_TOO_LARGE whatever the program makes of the failed write', async () => {
    // Before: the write failed with EIO, the Rust program's `expect` panicked: a TRAP
    // (unreachable), not the output's limit.
    const blobs: Record<string, Buffer> = {
      'rust.wasm': readFileSync(join(root, 'guests/rust/prebuilt/command.wasm')),
      'c.wasm': readFileSync(join(root, 'guests/c/prebuilt/command.wasm')),
    }
    const ex = new WasmActivityExecutor({ download: async (p: string) => blobs[p] }, { maxOutputBytes: 64 * 1024 })
    for (const lang of ['rust', 'c']) {
      const small = await ex.execute(def(lang), { message: 'fits' })
      expect(small).toMatchObject({ result: 'fits' })
      const e = await failure(ex.execute(def(lang), { message: 'x'.repeat(200_000) }))
      expect(e.code, lang).toBe('OUTPUT_TOO_LARGE')
      expect(e.message).toContain('over the limit of 65536')
    }
    await ex.close()
  })

  it("stderr takes every write: the first 64 KiB go to onLog, the rest is counted, and a failed run's error ends with stderr's end", async () => {
    // Before: a write past 64 KiB failed (EIO, 29): a program that checked its writes failed for
    // its logging; a failed run's error quoted stderr's first bytes, its end dropped.
    const blobs: Record<string, Buffer> = {
      'small.wasm': await stderrWriter(1000, 1000),
      'big.wasm': await stderrWriter(100_000, 100),
      'exits.wasm': await stderrWriter(100_000, 100, 3),
    }
    let logged = 0
    const notes: string[] = []
    const ex = new WasmActivityExecutor(
      { download: async (p: string) => blobs[p] },
      { onLog: (_level: string, line: string) => { logged += line.length + 1; if (line.startsWith('(')) notes.push(line) } },
    )
    expect(await ex.execute(def('small'), null)).toEqual([0, 0])
    expect(await ex.execute(def('big'), null)).toEqual([0, 0])
    await new Promise((r) => setTimeout(r, 300))
    expect(notes).toEqual(['(34564 more bytes of stderr not logged)'])
    expect(logged).toBeGreaterThan(2000 + 60_000)
    const e = await failure(ex.execute(def('exits'), null))
    expect(e.code).toBe('GUEST_ERROR')
    expect(e.exitCode).toBe(3)
    expect(e.message).toMatch(/THE END$/)
    await ex.close()
  })
})

/** A module that is both an Extism plugin (`entry` adds one to a global and outputs it) and an
 * AssemblyScript guest (`execute` runs `asBody`, then returns the one-character string at 44,
 * `asChar` at first), with `more` functions. */
function bothAbis(entry: string, asBody: string, asChar: string, more = ''): Promise<Buffer> {
  return wat(`(module
    (import "extism:host/env" "alloc" (func $alloc (param i64) (result i64)))
    (import "extism:host/env" "store_u8" (func $store (param i64 i32)))
    (import "extism:host/env" "output_set" (func $out (param i64 i64)))
    (memory (export "memory") 1)
    (global $g (mut i32) (i32.const 0))
    (func (export "${entry}") (result i32) (local $b i64)
      (global.set $g (i32.add (global.get $g) (i32.const 1)))
      (local.set $b (call $alloc (i64.const 1)))
      (call $store (local.get $b) (i32.add (i32.const 48) (global.get $g)))
      (call $out (local.get $b) (i64.const 1))
      (i32.const 0))
    (func (export "__new") (param i32 i32) (result i32) (i32.const 1024))
    (func (export "execute") (param i32) (result i32) ${asBody} (i32.const 44))
    (data (i32.const 40) "\\02\\00\\00\\00${asChar}\\00")
    ${more})`)
}

describe("an actor's state across the errors its guest returns", () => {
  it('a GUEST_ERROR the guest returned keeps a plain actor: an Extism error_set and a component err', async () => {
    // Before: every error but a budget's reset the actor, so any bad input lost its state.
    const blobs: Record<string, Buffer> = {
      'plugin.wasm': readFileSync(join(root, 'build/c/plugin.wasm')),
      'echo.wasm': readFileSync(join(root, 'build/js/echo.wasm')),
    }
    const ex = new WasmActivityExecutor({ download: async (p: string) => blobs[p] })
    const count = def('plugin', { entrypoint: 'count' })
    const a = { actorId: 'a' }
    for (const n of [1, 2, 3]) expect(await ex.execute(count, { action: 'increment' }, a)).toMatchObject({ count: n })
    const bogus = await failure(ex.execute(count, { action: 'bogus' }, a))
    expect([bogus.code, bogus.actorReset]).toEqual(['GUEST_ERROR', undefined])
    const after = await ex.executeDetailed(count, { action: 'get' }, a)
    expect([after.output, after.actorCreated]).toEqual([{ count: 3, action: 'get' }, false])
    const echo = def('echo', { limits: { maxExecutionMs: 20_000 } })
    for (const n of [1, 2]) expect(await ex.execute(echo, { count: true }, a)).toMatchObject({ calls: n })
    const err = await failure(ex.execute(echo, { fail: 'bad input' }, a))
    expect([err.code, err.actorReset]).toEqual(['GUEST_ERROR', undefined])
    const next = await ex.executeDetailed(echo, { count: true }, a)
    expect([next.output.calls, next.actorCreated]).toEqual([4, false])
    await ex.close()
  }, 60_000)

  it("a call asking for another ABI than the actor's is refused and leaves it as it was", async () => {
    // A module that is both an Extism plugin (`count`, a var) and an AssemblyScript guest.
    // Before: the call ran the kept instance's Extism entry, failed, and reset the actor.
    const both = await bothAbis('count', '', '7', '(func (export "boom") (result i32) (global.set $g (i32.const 42)) unreachable)')
    const ex = new WasmActivityExecutor({ download: async () => both })
    const extism = def('both', { abi: 'extism', entrypoint: 'count' })
    const a = { actorId: 'a' }
    expect(await ex.execute(extism, null, a)).toBe(1)
    expect(await ex.execute(extism, null, a)).toBe(2)
    const e = await failure(ex.execute(def('both', { abi: 'assemblyscript' }), null, a))
    expect([e.code, e.actorReset]).toEqual(['INVALID_ARGUMENT', undefined])
    expect(e.message).toContain('holds state of the extism ABI')
    const kept = await ex.executeDetailed(extism, null, a)
    expect([kept.output, kept.actorCreated]).toEqual([3, false])
    // A fresh instance of the same bytes runs under the ABI asked for.
    expect(await ex.execute(def('both', { abi: 'assemblyscript' }), null)).toBe(7)
    await ex.close()
    // Review AU1: restored from its last good state after a failed transactional call, it ran
    // under the ABI the next call asked for.
    const tx = new WasmActivityExecutor({ download: async () => both }, { transactional: true })
    expect(await tx.execute(extism, null, a)).toBe(1)
    expect((await failure(tx.execute(def('both', { abi: 'extism', entrypoint: 'boom' }), null, a))).code).toBe('TRAP')
    const refused = await failure(tx.execute(def('both', { abi: 'assemblyscript' }), null, a))
    expect([refused.code, refused.actorReset]).toEqual(['INVALID_ARGUMENT', undefined])
    expect(await tx.execute(extism, null, a)).toBe(2)
    await tx.close()
  })

  it('an actor stays under its ABI across a tier-up, a restore and a reload from its store', async () => {
    // A module both an Extism plugin (`bump`) and an AssemblyScript guest (`execute`), each
    // adding one to a global and returning it. Review AV1: a tier-up moved an actor made with
    // `abi: 'assemblyscript'` to a plugin's instance (its next call MISSING_EXPORT, its state
    // lost); a restore left the actor's ABI as it was; a durable actor reloaded from its store ran
    // under the ABI the call asked for.
    const both = await bothAbis('bump', '(global.set $g (i32.add (global.get $g) (i32.const 1))) (i32.store8 (i32.const 44) (i32.add (i32.const 48) (global.get $g)))', '0')
    const as = def('both', { abi: 'assemblyscript' })
    const extism = def('both', { abi: 'extism', entrypoint: 'bump' })
    const ex = new WasmActivityExecutor({ download: async () => both }, { tierUp: true })
    expect(await ex.execute(as, null, { actorId: 'a' })).toBe(1)
    expect(await ex.execute(as, null, { actorId: 'a' })).toBe(2)
    // The optimized code in the cache (precompile waits for it): the next call moves the actor to it.
    await ex.precompile(as)
    const moved = await ex.executeDetailed(as, null, { actorId: 'a' })
    expect([moved.output, moved.actorCreated]).toEqual([3, false])
    // A snapshot restores under its own ABI only, and the actor is then of that ABI.
    const snapshot = await ex.snapshotActor(as, 'a')
    expect((await failure(ex.restoreActor(extism, 'e', snapshot))).code).toBe('SNAPSHOT_INVALID')
    expect(await ex.execute(extism, null, { actorId: 'c' })).toBe(1)
    await ex.restoreActor(as, 'c', snapshot)
    expect(await ex.execute(as, null, { actorId: 'c' })).toBe(4)
    expect((await failure(ex.execute(extism, null, { actorId: 'c' }))).code).toBe('INVALID_ARGUMENT')
    // Review AW1: nor is its state a snapshot under another ABI.
    expect((await failure(ex.snapshotActor(extism, 'c'))).code).toBe('INVALID_ARGUMENT')
    await ex.close()
    // Review AW1: restored under `abi: 'wasi-command'`, an actor no call could run on.
    const command = await wat(`(module
      (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
      (memory (export "memory") 1)
      (func (export "_start"))
      (func (export "__new") (param i32 i32) (result i32) (i32.const 1024))
      (func (export "execute") (param i32) (result i32) (i32.const 44))
      (data (i32.const 40) "\\02\\00\\00\\00\\35\\00"))`)
    const grant = { capabilities: { env: ['X'] } }
    const three = new WasmActivityExecutor({ download: async () => command }, { env: { X: '1' } })
    const asCommand = def('three', { abi: 'assemblyscript', ...grant })
    expect(await three.execute(asCommand, null, { actorId: 'w' })).toBe(5)
    const taken = await three.snapshotActor(asCommand, 'w')
    const refusedRestore = await failure(three.restoreActor(def('three', { abi: 'wasi-command', ...grant }), 'w', taken))
    expect([refusedRestore.code, refusedRestore.message]).toEqual(['INVALID_ARGUMENT', expect.stringContaining('no actors to restore')])
    expect(await three.execute(asCommand, null, { actorId: 'w' })).toBe(5)
    await three.close()
    // Evicted, then reloaded from its store under the other ABI: refused, its state kept.
    const durable = new WasmActivityExecutor({ download: async () => both }, { actorStore: 'memory://abi-test', maxActors: 1 })
    expect(await durable.execute(as, null, { actorId: 'x' })).toBe(1)
    expect(await durable.execute(as, null, { actorId: 'y' })).toBe(1)
    expect((await failure(durable.execute(extism, null, { actorId: 'x' }))).code).toBe('SNAPSHOT_INVALID')
    const reloaded = await durable.executeDetailed(as, null, { actorId: 'x' })
    expect([reloaded.output, reloaded.actorCreated]).toEqual([2, false])
    await durable.close()
  }, 60_000)

  it("a plugin's proc_exit(0) midway through an actor's call fails it, and the actor goes back to a state it can trust", async () => {
    // Review AU1: the exit was a success and the instance was kept, its state torn (here the
    // second global, left at 1); a durable actor's stored.
    const exits = await wat(`(module
      (import "extism:host/env" "alloc" (func $alloc (param i64) (result i64)))
      (import "extism:host/env" "store_u8" (func $store (param i64 i32)))
      (import "extism:host/env" "output_set" (func $out (param i64 i64)))
      (import "extism:host/env" "input_length" (func $len (result i64)))
      (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
      (memory (export "memory") 1)
      (global $n (mut i32) (i32.const 0))
      (global $inside (mut i32) (i32.const 0))
      (func (export "step") (result i32) (local $b i64)
        (global.set $n (i32.add (global.get $n) (i32.const 1)))
        (local.set $b (call $alloc (i64.const 2)))
        (call $store (local.get $b) (i32.add (i32.const 48) (global.get $n)))
        (call $store (i64.add (local.get $b) (i64.const 1)) (i32.add (i32.const 48) (global.get $inside)))
        (call $out (local.get $b) (i64.const 2))
        (global.set $inside (i32.const 1))
        (if (i64.gt_u (call $len) (i64.const 1)) (then (call $exit (i32.const 0))))
        (global.set $inside (i32.const 0))
        (i32.const 0)))`)
    const ex = new WasmActivityExecutor({ download: async () => exits }, { env: { X: '1' } })
    const step = def('exits', { entrypoint: 'step', capabilities: { env: ['X'] } })
    // Stateless, as Extism's runtime takes it: a success.
    expect(await ex.execute(step, 11)).toBe(10)
    const a = { actorId: 'a' }
    expect(await ex.execute(step, 1, a)).toBe(10)
    const e = await failure(ex.execute(step, 11, a))
    expect([e.code, e.exitCode, e.actorReset]).toEqual(['GUEST_ERROR', 0, true])
    const next = await ex.executeDetailed(step, 1, a)
    expect([next.output, next.actorCreated]).toEqual([10, true])
    await ex.close()
    const tx = new WasmActivityExecutor({ download: async () => exits }, { env: { X: '1' }, transactional: true })
    expect(await tx.execute(step, 1, a)).toBe(10)
    expect((await failure(tx.execute(step, 11, a))).code).toBe('GUEST_ERROR')
    expect(await tx.execute(step, 1, a)).toBe(20)
    await tx.close()
  })
})
