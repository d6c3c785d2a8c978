// Guests in any language: Extism plugins (C), WASI command modules (C, Rust) and components
// (JavaScript), built from source by `npm run guests:polyglot`, under the same promises as the
// AssemblyScript path: limits, cancellation, actors, cache tiers, typed errors.
import createPlugin from '@extism/extism'
import { mkdtempSync, readFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { beforeAll, describe, expect, it } from 'vitest'
import { WasmActivityExecutor, inspectModule } from '../index'
import { def, failure, guest, MemoryBlobStore, root } from './helpers'
import { wat } from './wat'

const built = (path: string) => readFileSync(join(root, 'build', path))
const echoInputs = [
  { message: 'hello', times: 2 },
  { message: 'héllo 🌍 "quoted" \\ back', times: 3 },
  { message: '', times: 0 },
  { message: 'x'.repeat(5000), times: 1 },
  { message: 'line\nbreak\ttab', times: 1 },
]

async function executorWith(blobs: Record<string, Buffer>, options?: ConstructorParameters<typeof WasmActivityExecutor>[1]) {
  const store = new MemoryBlobStore()
  for (const [name, bytes] of Object.entries(blobs)) await store.upload(`${name}.wasm`, bytes)
  const logs: Array<[string, string]> = []
  const ex = new WasmActivityExecutor(store, { onLog: (l, m) => logs.push([l, m]), ...options })
  return { ex, logs, store }
}

/** An Extism plugin of hand-written WAT: `body` is its `execute`'s (returning 0 after it), with the
 * kernel's alloc, store_u8, output_set, input_length, log_info and error_set imported, and
 * `$one` setting the output "1". */
function kernelPlugin(body: string, imports = ''): Promise<Buffer> {
  return wat(`(module
    (import "extism:host/env" "alloc" (func $alloc (param i64) (result i64)))
    (import "extism:host/env" "store_u8" (func $store (param i64 i32)))
    (import "extism:host/env" "output_set" (func $out (param i64 i64)))
    (import "extism:host/env" "input_length" (func $len (result i64)))
    (import "extism:host/env" "log_info" (func $log (param i64)))
    (import "extism:host/env" "error_set" (func $err (param i64)))
    ${imports}
    (memory (export "memory") 1)
    (func $one (local $b i64)
      (local.set $b (call $alloc (i64.const 1)))
      (call $store (local.get $b) (i32.const 49))
      (call $out (local.get $b) (i64.const 1)))
    (func (export "execute") (result i32) ${body} (i32.const 0)))`)
}

describe('ABI detection', () => {
  it('inspectModule names each guest ABI', async () => {
    expect((await inspectModule(guest('echo'))).abi).toBe('assemblyscript')
    expect((await inspectModule(built('c/plugin.wasm'))).abi).toBe('extism')
    expect((await inspectModule(built('c/command.wasm'))).abi).toBe('wasi-command')
    expect((await inspectModule(built('rust/command.wasm'))).abi).toBe('wasi-command')
    expect((await inspectModule(built('js/echo.wasm'))).abi).toBe('component')
    // Anything but bytes rejects (never throws) with INVALID_ARGUMENT.
    for (const notBytes of [undefined, {}, 'echo', 5]) {
      const p = (inspectModule as any)(notBytes)
      expect(p).toBeInstanceOf(Promise)
      expect((await failure(p)).code).toBe('INVALID_ARGUMENT')
    }
  })

  it('a module that fits none is INVALID_MODULE saying why each ABI did not fit', async () => {
    const none = await wat('(module (memory (export "memory") 1) (func (export "run")))')
    const { ex } = await executorWith({ none })
    const e = await failure(ex.execute(def('none'), {}))
    expect(e.code).toBe('INVALID_MODULE')
    for (const abi of ['assemblyscript', 'wasi-command', 'extism', 'component']) expect(e.message).toContain(abi)
    // definition.abi forces one; a module that does not fit it is MISSING_EXPORT.
    const forced = await failure(ex.execute(def('none', { abi: 'extism', entrypoint: 'run' } as any), {}))
    expect(forced.code).toBe('MISSING_EXPORT')
    expect((await failure(ex.execute(def('none', { abi: 'cobol' } as any), {}))).code).toBe('INVALID_ARGUMENT')
  })
})

describe('Extism plugins (C, built with zig cc)', () => {
  let plugin: Buffer
  beforeAll(() => {
    plugin = built('c/plugin.wasm')
  })
  const d = (entrypoint: string, extra: object = {}) => def('plugin', { entrypoint, ...extra } as any)

  it('give the same outputs here as in Extism\'s own JS SDK', async () => {
    const { ex } = await executorWith({ plugin })
    const sdk = await createPlugin({ wasm: [{ data: plugin }] }, { useWasi: false, config: { greeting: 'hi' } })
    for (const input of echoInputs) {
      const ours = await ex.execute(d('execute'), input)
      const theirs = JSON.parse((await sdk.call('execute', JSON.stringify(input)))!.text())
      expect(ours).toEqual(theirs)
    }
    const config = await ex.execute(d('config', { config: { greeting: 'hi' } }), {})
    expect(config).toEqual(JSON.parse((await sdk.call('config', '{}'))!.text()))
    // Vars: an actor keeps them like the SDK's plugin instance does.
    for (let i = 0; i < 3; i++) {
      const ours = await ex.execute(d('count'), { action: 'increment', amount: 2 }, { actorId: 'v' })
      const theirs = JSON.parse((await sdk.call('count', JSON.stringify({ action: 'increment', amount: 2 })))!.text())
      expect(ours).toEqual(theirs)
    }
    await sdk.close()
  })

  it('vars are fresh per stateless call, kept per actor, and travel in snapshots', async () => {
    const { ex, store } = await executorWith({ plugin })
    for (let i = 0; i < 2; i++) expect(await ex.execute(d('count'), { action: 'increment' })).toMatchObject({ count: 1 })
    for (const n of [1, 2, 3]) expect(await ex.execute(d('count'), { action: 'increment' }, { actorId: 'a' })).toMatchObject({ count: n })
    const snap = await ex.snapshotActor(d('count'), 'a')
    const other = new WasmActivityExecutor(store)
    await other.restoreActor(d('count'), 'a', snap)
    expect(await other.execute(d('count'), { action: 'increment' }, { actorId: 'a' })).toMatchObject({ count: 4 })
  })

  it('error_set and a non-zero return are GUEST_ERROR with the plugin\'s message; logs reach onLog', async () => {
    const { ex, logs } = await executorWith({ plugin })
    const e = await failure(ex.execute(d('fail'), {}))
    expect([e.code, e.guestMessage, e.exitCode, e.retryable]).toEqual(['GUEST_ERROR', 'the plugin refused this input', 1, false])
    await ex.execute(d('config'), {})
    await new Promise((r) => setTimeout(r, 50))
    expect(logs).toContainEqual(['info', 'config read'])
    expect((await failure(ex.execute(d('missing'), {}))).code).toBe('MISSING_EXPORT')
  })

  it('a spinning plugin ends in TIMEOUT, a growing one in OUT_OF_MEMORY, a cancelled one in CANCELLED', async () => {
    const { ex } = await executorWith({ plugin })
    expect((await failure(ex.execute(d('spin', { limits: { maxExecutionMs: 100 } }), {}))).code).toBe('TIMEOUT')
    expect((await failure(ex.execute(d('grow', { limits: { maxMemoryMB: 8 } }), {}))).code).toBe('OUT_OF_MEMORY')
    expect((await failure(ex.execute(d('spin', { limits: { maxFuel: 1e6 } }), {}))).code).toBe('OUT_OF_FUEL')
    const ac = new AbortController()
    setTimeout(() => ac.abort(), 50)
    expect((await failure(ex.execute(d('spin'), {}, { signal: ac.signal }))).code).toBe('CANCELLED')
  })

  it('a plugin that lies to the kernel traps (bad offsets, lengths, blocks); a huge alloc is OUT_OF_MEMORY', async () => {
    const lie = (body: string) =>
      wat(`(module
        (import "extism:host/env" "load_u64" (func $load (param i64) (result i64)))
        (import "extism:host/env" "output_set" (func $out (param i64 i64)))
        (import "extism:host/env" "error_set" (func $err (param i64)))
        (import "extism:host/env" "alloc" (func $alloc (param i64) (result i64)))
        (import "extism:host/env" "input_load_u8" (func $in8 (param i64) (result i32)))
        (memory (export "memory") 1)
        (func (export "execute") (result i32) ${body} (i32.const 0)))`)
    const cases: Array<[string, string]> = [
      ['(drop (call $load (i64.const 999999)))', 'TRAP'],
      ['(drop (call $load (i64.const -8)))', 'TRAP'],
      ['(call $out (i64.const 1) (i64.const 99999999))', 'TRAP'],
      ['(call $err (i64.const 12345))', 'TRAP'],
      ['(drop (call $in8 (i64.const 1000)))', 'TRAP'],
      ['(drop (call $alloc (i64.const 9000000000)))', 'OUT_OF_MEMORY'],
    ]
    for (const [body, code] of cases) {
      const { ex } = await executorWith({ liar: await lie(body) })
      const e = await failure(ex.execute(def('liar', { limits: { maxMemoryMB: 16 } }), { a: 1 }))
      expect([body, e.code]).toEqual([body, code])
      expect(await ex.execute(def('liar', { limits: { maxMemoryMB: 16 } }) as any, {}).catch((x: any) => x.code)).toBe(code)
    }
  })

  it('output_set of no bytes is no output wherever it points, as in Extism\'s kernel (it trapped at offset 0)', async () => {
    const at = (offset: string) => kernelPlugin(`(call $one) (call $out (i64.const ${offset}) (i64.const 0))`)
    for (const offset of ['0', '99999999']) {
      const { ex } = await executorWith({ empty: await at(offset) })
      const e = await failure(ex.execute(def('empty'), {}))
      // The same as a plugin that never set an output: no JSON.
      expect([offset, e.code, e.message]).toEqual([offset, 'INVALID_OUTPUT', expect.stringContaining('Unexpected end of JSON input')])
    }
    // An output set again after it is the output.
    const { ex } = await executorWith({ again: await kernelPlugin('(call $out (i64.const 0) (i64.const 0)) (call $one)') })
    expect(await ex.execute(def('again'), {})).toBe(1)
  })

  it('a big alloc and free run off the JS thread, and an alloc stops at its call\'s deadline (review BZ1)', async () => {
    // One alloc(1 GiB) was zeroed on the JS thread when the call ran there (inline): the event
    // loop held 600-740 ms; and in one host call, 0.6-0.9 s past a 50 ms maxExecutionMs.
    const big = await kernelPlugin(`(local $b i64) (local.set $b (call $alloc (i64.const 536870912))) (call $free (local.get $b)) (call $one)`,
      '(import "extism:host/env" "free" (func $free (param i64)))')
    const { ex } = await executorWith({ big: await big, small: await kernelPlugin('(call $one)') }, { maxMemoryMB: 600 })
    // Warm: the module's calls run inline on this thread while they fit its inline gate.
    for (let i = 0; i < 5; i++) expect(await ex.execute(def('small'), {})).toBe(1)
    await ex.precompile(def('big'))
    const started = performance.now()
    const call = ex.execute(def('big'), {})
    // What execute() itself took on this thread: the guest's first slice at most, not the alloc.
    const onThisThread = performance.now() - started
    expect(await call).toBe(1)
    expect(onThisThread).toBeLessThan(100)
    const e = await failure(ex.execute(def('big', { limits: { maxExecutionMs: 5 } }), {}))
    expect(e.code).toBe('TIMEOUT')
    await ex.close()
  })

  it('a flood of tiny blocks meets maxMemoryMB (each block costs its bookkeeping); a huge log line is cut', async () => {
    // alloc(1) n times, then the output "1". A 1-byte block was counted as 1 byte while the
    // host kept an entry for it: 1.2 GiB of host memory past a 32 MiB cap.
    const flood = await kernelPlugin(`
      (local $n i64)
      ;; The input's length picks the mode: 1 byte "1" logs a 1 MiB line; else n = length * 10,000.
      (if (i64.eq (call $len) (i64.const 1))
        (then (call $log (call $alloc (i64.const 1048576))))
        (else
          (local.set $n (i64.mul (call $len) (i64.const 10000)))
          (loop $more
            (drop (call $alloc (i64.const 1)))
            (local.set $n (i64.sub (local.get $n) (i64.const 1)))
            (br_if $more (i64.gt_s (local.get $n) (i64.const 0))))))
      (call $one)`)
    const { ex, logs } = await executorWith({ flood })
    const d = def('flood', { limits: { maxMemoryMB: 16 } })
    // 100,000 blocks fit 16 MiB; 300,000 do not (their bytes alone would: 0.3 MB).
    expect(await ex.execute(d, 'x'.repeat(8))).toBe(1)
    const e = await failure(ex.execute(d, 'x'.repeat(28)))
    expect(e.code).toBe('OUT_OF_MEMORY')
    expect(await ex.execute(d, 1)).toBe(1)
    await new Promise((r) => setTimeout(r, 50))
    const line = logs.find(([level]) => level === 'info')
    expect(line?.[1].length).toBe(4097)
    expect(line?.[1].endsWith('…')).toBe(true)
  })

  it('freed blocks are reused and given back: allocating and freeing 1 MiB 200 times fits 16 MiB', async () => {
    // Review V: free took a block out of the map and kept its bytes counted, so the 17th round
    // met the cap (Extism's own kernel reuses freed memory). Holding them all still does.
    const rounds = await kernelPlugin(
      `
      (local $n i64) (local $b i64)
      (local.set $n (i64.const 200))
      (loop $more
        (local.set $b (call $alloc (i64.const 1048576)))
        (call $store (i64.add (local.get $b) (i64.const 1048575)) (i32.const 7))
        (if (i64.eq (call $len) (i64.const 1)) (then (call $free (local.get $b))))
        (local.set $n (i64.sub (local.get $n) (i64.const 1)))
        (br_if $more (i64.gt_s (local.get $n) (i64.const 0))))
      (call $one)`,
      '(import "extism:host/env" "free" (func $free (param i64)))',
    )
    const { ex } = await executorWith({ rounds })
    const d = def('rounds', { limits: { maxMemoryMB: 16 } })
    expect(await ex.execute(d, 1)).toBe(1)
    expect((await failure(ex.execute(d, 22))).code).toBe('OUT_OF_MEMORY')
  })

  it('a plugin built for WASI that ends with proc_exit: 0 is a success with its output, n is GUEST_ERROR with exitCode n', async () => {
    // Extism's own runtime takes proc_exit(n) as the plugin's return code; here it was a TRAP.
    const exits = await kernelPlugin(
      `(call $one)
      ;; Input "1" (length 1) exits with 0; anything longer with 3.
      (call $exit (select (i32.const 0) (i32.const 3) (i64.eq (call $len) (i64.const 1))))
      (unreachable)`,
      '(import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))',
    )
    const { ex } = await executorWith({ exits }, { env: ['HOME'] })
    const d = def('exits', { capabilities: { env: ['HOME'] } })
    expect(await ex.execute(d, 1)).toBe(1)
    const e = await failure(ex.execute(d, 12))
    expect([e.code, e.exitCode]).toEqual(['GUEST_ERROR', 3])
  })

  it("a huge error_set is cut to 4096 characters; a call's blocks go when it ends (an actor's next call under a lower cap)", async () => {
    // error_set of a 560 MiB block made a message longer than any JS string: Node exited, or the
    // call never settled. An actor kept its last call's blocks, counted against its next call.
    const plugin = await kernelPlugin(`
      ;; Input of 1 byte: fail with a 32 MiB error; of 3: 32 MiB of blocks, then "1"; else just "1".
      (if (i64.eq (call $len) (i64.const 1))
        (then (call $err (call $alloc (i64.const 33554432))) (return (i32.const 1))))
      (if (i64.eq (call $len) (i64.const 3))
        (then (drop (call $alloc (i64.const 33554432)))))
      (call $one)`)
    const { ex } = await executorWith({ plugin })
    const e = await failure(ex.execute(def('plugin', { limits: { maxMemoryMB: 64 } }), 1))
    expect([e.code, e.guestMessage.length, e.guestMessage.endsWith('…')]).toEqual(['GUEST_ERROR', 4097, true])
    expect(await ex.execute(def('plugin', { limits: { maxMemoryMB: 64 } }), 123, { actorId: 'a' })).toBe(1)
    expect(await ex.execute(def('plugin', { limits: { maxMemoryMB: 16 } }), 12, { actorId: 'a' })).toBe(1)
  })

  it('kernel memory counts against maxMemoryMB (a huge input does not fit a small cap)', async () => {
    const { ex } = await executorWith({ plugin })
    const e = await failure(ex.execute(d('execute', { limits: { maxMemoryMB: 2 } }), { message: 'x'.repeat(3_000_000) }))
    expect(e.code).toBe('OUT_OF_MEMORY')
  })
})

describe('WASI command modules (C with zig cc, Rust with rustc)', () => {
  for (const [lang, path] of [['C', 'c/command.wasm'], ['Rust', 'rust/command.wasm']] as const) {
    it(`${lang}: input on stdin, output on stdout, the same as the AssemblyScript echo`, async () => {
      const { ex } = await executorWith({ cmd: built(path), echo: guest('echo') })
      for (const input of echoInputs) {
        expect(await ex.execute(def('cmd'), input)).toEqual(await ex.execute(def('echo'), input))
      }
    })
  }

  it('exit code != 0 is GUEST_ERROR with the tail of stderr; stderr lines reach onLog', async () => {
    const { ex, logs } = await executorWith({ cmd: built('c/command.wasm') })
    const e = await failure(ex.execute(def('cmd'), { exit: 3 }))
    expect([e.code, e.exitCode]).toEqual(['GUEST_ERROR', 3])
    expect(e.message).toContain('refusing: asked to exit with 3')
    await new Promise((r) => setTimeout(r, 50))
    expect(logs).toContainEqual(['warn', 'refusing: asked to exit with 3'])
    // Codes wasmtime-wasi itself refuses (past 125) are the guest's answer too, not a TRAP.
    for (const code of [126, 255, -1]) {
      const past = await failure(ex.execute(def('cmd'), { exit: code }))
      expect([past.code, past.exitCode, past.message]).toEqual(['GUEST_ERROR', code, `guest error: exit code ${code}: refusing: asked to exit with ${code}`])
    }
  })

  it('limits hold: TIMEOUT, OUT_OF_MEMORY, OUTPUT_TOO_LARGE; no actors; no grants beyond the definition\'s', async () => {
    const { ex } = await executorWith({ cmd: built('c/command.wasm') }, { maxOutputBytes: 100 })
    expect((await failure(ex.execute(def('cmd', { limits: { maxExecutionMs: 100 } }), { spin: true }))).code).toBe('TIMEOUT')
    expect((await failure(ex.execute(def('cmd', { limits: { maxMemoryMB: 4 } }), { grow: true }))).code).toBe('OUT_OF_MEMORY')
    expect((await failure(ex.execute(def('cmd'), { message: 'y'.repeat(200) }))).code).toBe('OUTPUT_TOO_LARGE')
    const actor = await failure(ex.execute(def('cmd'), { message: 'a' }, { actorId: 'x' }))
    expect(actor.code).toBe('INVALID_ARGUMENT')
    expect(actor.message).toContain('stateless')
  })
})

describe('components (JavaScript, built with componentize-js against wit/activity.wit)', () => {
  let component: Buffer
  beforeAll(() => {
    component = built('js/echo.wasm')
  })

  it("a component actor's environment is read at each call; its filesystem grant is fixed for its life (review AZ2)", async () => {
    const name = `LOOM_AZ2_${process.pid}`
    const dir = mkdtempSync(join(tmpdir(), 'loom-az2-'))
    const { ex } = await executorWith({ js: component }, { env: [name], filesystem: { hostDir: dir } })
    const withEnv = def('js', { capabilities: { env: [name] } })
    const counted: unknown[] = []
    try {
      // Before, a variable of the process that changed, or went, had every later call refused.
      for (const value of ['one', 'two', undefined, 'three']) {
        if (value === undefined) delete process.env[name]
        else process.env[name] = value
        counted.push(await ex.execute(withEnv, { count: true }, { actorId: 'a' }))
      }
    } finally {
      delete process.env[name]
    }
    expect(counted).toEqual([1, 2, 3, 4].map((calls) => ({ calls })))
    // A directory granted or taken back is still refused: its handles could not be taken back.
    const granted = await failure(ex.execute(def('js', { capabilities: { env: [name], filesystem: true } }), { count: true }, { actorId: 'a' }))
    expect([granted.code, granted.message]).toEqual(['INVALID_ARGUMENT', expect.stringContaining('filesystem grant')])
    expect(await ex.execute(withEnv, { count: true }, { actorId: 'a' })).toEqual({ calls: 5 })
  })

  it('run the echo contract; err(message) is GUEST_ERROR; log reaches onLog; an actor keeps its instance', async () => {
    const { ex, logs } = await executorWith({ js: component, echo: guest('echo') })
    for (const input of echoInputs) expect(await ex.execute(def('js'), input)).toEqual(await ex.execute(def('echo'), input))
    const e = await failure(ex.execute(def('js'), { fail: 'no thanks' }))
    expect([e.code, e.guestMessage]).toEqual(['GUEST_ERROR', 'no thanks'])
    // A long err(message) is cut as log lines are.
    const long = await failure(ex.execute(def('js'), { fail: 'y'.repeat(100_000) }))
    expect([long.code, long.guestMessage.length, long.guestMessage.endsWith('…')]).toEqual(['GUEST_ERROR', 4097, true])
    await ex.execute(def('js'), { message: 'm', log: 'hello from js' })
    await new Promise((r) => setTimeout(r, 50))
    expect(logs).toContainEqual(['info', 'hello from js'])
    for (const n of [1, 2, 3]) expect(await ex.execute(def('js'), { count: true }, { actorId: 'c' })).toEqual({ calls: n })
    expect(await ex.execute(def('js'), { count: true })).toEqual({ calls: 1 })
    const t = await failure(ex.execute(def('js'), { count: true }, { actorId: 'c', transactional: true }))
    expect(t.code).toBe('INVALID_ARGUMENT')
  })

  it('limits hold: TIMEOUT, OUT_OF_MEMORY, CANCELLED', async () => {
    const { ex } = await executorWith({ js: component })
    expect((await failure(ex.execute(def('js', { limits: { maxExecutionMs: 200 } }), { spin: true }))).code).toBe('TIMEOUT')
    expect((await failure(ex.execute(def('js', { limits: { maxMemoryMB: 64 } }), { grow: 200 }))).code).toBe('OUT_OF_MEMORY')
    const ac = new AbortController()
    setTimeout(() => ac.abort(), 100)
    expect((await failure(ex.execute(def('js'), { spin: true }, { signal: ac.signal }))).code).toBe('CANCELLED')
  })
})

describe('every ABI uses the artifact cache', () => {
  it('a second executor with the same cacheDir loads every guest without compiling', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'loom-abi-cache-'))
    const blobs = { plugin: built('c/plugin.wasm'), cmd: built('c/command.wasm'), js: built('js/echo.wasm'), echo: guest('echo') }
    const { ex: first } = await executorWith(blobs, { cacheDir: dir, shareCode: false })
    for (const name of Object.keys(blobs)) await first.precompile(def(name))
    expect(first.cacheStats()).toMatchObject({ compiles: 4, artifactHits: 0 })
    // shareCode: false, or the second would take the code the first holds (see "Code shared").
    const { ex: second } = await executorWith(blobs, { cacheDir: dir, shareCode: false })
    expect(await second.execute(def('plugin'), { message: 'p' })).toMatchObject({ result: 'p' })
    expect(await second.execute(def('cmd'), { message: 'c' })).toMatchObject({ result: 'c' })
    expect(await second.execute(def('js'), { message: 'j' })).toMatchObject({ result: 'j' })
    expect(await second.execute(def('echo'), { message: 'e' })).toMatchObject({ result: 'e' })
    expect(second.cacheStats()).toMatchObject({ compiles: 0, artifactHits: 4 })
  })
})
