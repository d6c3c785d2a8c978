// Hostile review rounds J and K: each test reproduces a way through that a reviewer found, and
// failed on the code from before its fix.
import { spawnSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import { createServer } from 'node:http'
import type { AddressInfo, Socket } from 'node:net'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { availableParallelism, tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { inspectModule, ObjectBlobStore, WasmActivityExecutor } from '../index'
import { def, failure, guest, MemoryBlobStore } from './helpers'
import { guestWat, wat } from './wat'

const dirs: string[] = []
function tempDir(): string {
  const d = mkdtempSync(join(tmpdir(), 'loom-sandbox-3-'))
  dirs.push(d)
  writeFileSync(join(d, 'f'), 'x')
  return d
}
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true })
})

/** An output of `$num`: an AS string of the decimal of n (the guest's answer is a JSON number). */
const NUM = `
  (func $num (param $n i32) (result i32)
    (local $p i32) (local $len i32) (local $t i32) (local $i i32)
    (local.set $t (local.get $n)) (local.set $len (i32.const 1))
    (block $d (loop $l (local.set $t (i32.div_u (local.get $t) (i32.const 10)))
      (br_if $d (i32.eqz (local.get $t))) (local.set $len (i32.add (local.get $len) (i32.const 1))) (br $l)))
    (local.set $p (call $new (i32.shl (local.get $len) (i32.const 1)) (i32.const 2)))
    (local.set $i (local.get $len))
    (loop $w
      (local.set $i (i32.sub (local.get $i) (i32.const 1)))
      (i32.store16 (i32.add (local.get $p) (i32.shl (local.get $i) (i32.const 1)))
        (i32.add (i32.const 48) (i32.rem_u (local.get $n) (i32.const 10))))
      (local.set $n (i32.div_u (local.get $n) (i32.const 10)))
      (br_if $w (i32.gt_u (local.get $i) (i32.const 0))))
    (local.get $p))`

/** A guest that opens its preopened directory (fd 3) `times` times, closing each one it opened
 * when `close`; it answers `opened * 100 + the errno that stopped it` (0 if none did). */
function opener(times: number, close: boolean): Promise<Buffer> {
  return guestWat(
    `${NUM}
    (data (i32.const 64) ".")
    (func (export "execute") (param i32) (result i32) (local $i i32) (local $errno i32)
      (block $out (loop $l
        (br_if $out (i32.ge_u (local.get $i) (i32.const ${times})))
        (local.set $errno (call $open (i32.const 3) (i32.const 0) (i32.const 64) (i32.const 1)
          (i32.const 0) (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 128)))
        (br_if $out (local.get $errno))
        ${close ? '(drop (call $close (i32.load (i32.const 128))))' : ''}
        (local.set $i (i32.add (local.get $i) (i32.const 1))) (br $l)))
      (call $num (i32.add (i32.mul (local.get $i) (i32.const 100)) (local.get $errno))))`,
    `(import "wasi_snapshot_preview1" "path_open" (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
     (import "wasi_snapshot_preview1" "fd_close" (func $close (param i32) (result i32)))`,
  )
}

const EMFILE = 33
const ENFILE = 41

describe('J1. descriptors a guest may hold', () => {
  it('an instance holds at most 1024 open files; a second actor still opens its own, and closing frees them', async () => {
    const dir = tempDir()
    const blobs: Record<string, Buffer> = { 'keep.wasm': await opener(5000, false), 'close.wasm': await opener(5000, true) }
    const ex = new WasmActivityExecutor({ download: async (p: string) => blobs[p] }, { filesystem: { hostDir: dir } })
    const keep = def('keep', { capabilities: { filesystem: true } })
    for (const actorId of ['a', 'b']) {
      const output = await ex.execute(keep, {}, { actorId })
      // Refused with EMFILE once its table (stdio and the preopen included) holds 1024.
      expect(output % 100).toBe(EMFILE)
      expect(Math.floor(output / 100)).toBeGreaterThan(1000)
      expect(Math.floor(output / 100)).toBeLessThan(1024)
    }
    // The kept actor still holds its files: a second call of it is refused at once.
    expect(await ex.execute(keep, {}, { actorId: 'a' })).toBe(EMFILE)
    // A guest that closes what it opens may open any number of times.
    expect(await ex.execute(def('close', { capabilities: { filesystem: true } }), {})).toBe(5000 * 100)
    await ex.close()
  })

  it("guests never take the process's last descriptors: with `ulimit -n 256`, Node still opens files and other guests still run", () => {
    const dir = tempDir()
    return opener(5000, false).then((wasm) => {
      const path = join(dir, 'flood.wasm')
      writeFileSync(path, wasm)
      const fixture = join(__dirname, 'fixtures', 'descriptor-flood.cjs')
      const r = spawnSync('bash', ['-c', `ulimit -n 256 && exec "${process.execPath}" "${fixture}" "${path}" "${dir}"`], {
        encoding: 'utf8',
        timeout: 60_000,
      })
      expect(r.status, r.stderr).toBe(0)
      const out = JSON.parse(r.stdout.trim().split('\n').pop()!)
      // The guest was stopped by the process's reserve (the top quarter, from 192 on), not its own bound.
      expect(out.got % 100).toBe(ENFILE)
      expect(Math.floor(out.got / 100)).toBeLessThan(192)
      expect(out.hostError).toBe(null)
      expect(out.hostOpened).toBe(32)
      expect(out.echoed).toEqual({ result: 'hi', length: 2, executedBy: 'WASM' })
    })
  }, 60_000)
})

/** The counter actor with a custom section appended: the same code, other bytes (another sha256). */
function counterWithSection(): Buffer {
  const name = Buffer.from('other')
  return Buffer.concat([guest('counter-actor'), Buffer.from([0, name.length + 1, name.length]), name])
}

describe('K1. an actor whose module changes under it keeps its state', () => {
  const inc = { action: 'increment', amount: 1 }

  for (const kind of ['plain', 'transactional', 'durable'] as const) {
    it(`${kind}: a call on other bytes is SNAPSHOT_MISMATCH, the state is kept, and the old bytes go on from it`, async () => {
      const store = new MemoryBlobStore()
      await store.upload('counter.wasm', guest('counter-actor'))
      const actorStore = kind === 'durable' ? new ObjectBlobStore(`file://${tempDir()}`) : undefined
      const ex = new WasmActivityExecutor(store, { actorStore, transactional: kind === 'transactional' })
      const d = def('counter')
      for (let i = 0; i < 5; i++) await ex.execute(d, inc, { actorId: 'a' })
      // New bytes at the same path, the cache cleared: the actor's state is of the old module.
      await store.upload('counter.wasm', counterWithSection())
      ex.clearCache()
      const e = await failure(ex.execute(d, inc, { actorId: 'a' }))
      expect(e.code).toBe('SNAPSHOT_MISMATCH')
      expect(e.actual).toBe(createHash('sha256').update(guest('counter-actor')).digest('hex'))
      expect(e.expected).toBe(createHash('sha256').update(counterWithSection()).digest('hex'))
      // Its snapshot is refused the same way (review L: "has no state here" before).
      expect((await failure(ex.snapshotActor(d, 'a'))).code).toBe('SNAPSHOT_MISMATCH')
      if (actorStore) {
        // And from the store, by an executor that does not hold the actor (review O: the stored
        // bytes of the other module were handed back unchecked).
        const fresh = new WasmActivityExecutor(store, { actorStore })
        expect((await failure(fresh.snapshotActor(d, 'a'))).code).toBe('SNAPSHOT_MISMATCH')
        await fresh.close()
      }
      // A new actor runs on the new bytes.
      expect((await ex.execute(d, inc, { actorId: 'b' })).count).toBe(1)
      // Back on the old bytes, the actor goes on from 5 (a durable one's stored state too).
      await store.upload('counter.wasm', guest('counter-actor'))
      ex.clearCache()
      expect((await ex.execute(d, inc, { actorId: 'a' })).count).toBe(6)
      if (actorStore) {
        const other = new WasmActivityExecutor(store, { actorStore })
        expect((await other.execute(d, { action: 'get' }, { actorId: 'a' })).count).toBe(6)
        await other.close()
      }
      // dropActor lets it start on the new bytes.
      await store.upload('counter.wasm', counterWithSection())
      ex.clearCache()
      expect(await ex.dropActor(d, 'a')).toBe(true)
      expect((await ex.execute(d, inc, { actorId: 'a' })).count).toBe(1)
      await ex.close()
    })
  }
})

describe('K3. state a snapshot cannot hold', () => {
  /** Calls the function in table slot 0 (first `one`, answering 1), then puts `two` there. */
  const tableSetter = () =>
    guestWat(`${NUM}
      (type $t (func (result i32)))
      (table 1 funcref)
      (elem (i32.const 0) $one)
      (elem declare func $two)
      (func $one (result i32) (i32.const 1))
      (func $two (result i32) (i32.const 2))
      (func (export "execute") (param i32) (result i32) (local $v i32)
        (local.set $v (call_indirect (type $t) (i32.const 0)))
        (table.set (i32.const 0) (ref.func $two))
        (call $num (local.get $v)))`)

  it('a module that changes its tables runs as a plain actor, and transactional, durable and snapshot calls are refused, from an artifact too', async () => {
    const wasm = await tableSetter()
    const blobs = { download: async () => wasm }
    const cacheDir = tempDir()
    const d = def('tables')
    for (const round of ['compiled', 'from the artifact']) {
      // shareCode: false: the second round must load the artifact, not the first round's code.
      const ex = new WasmActivityExecutor(blobs, { cacheDir, shareCode: false })
      // A plain actor keeps its table: 1, then 2.
      expect(await ex.execute(d, {}, { actorId: 'p' })).toBe(1)
      expect(await ex.execute(d, {}, { actorId: 'p' })).toBe(2)
      // A rollback would restore memory and globals onto the initial table, silently.
      const t = await failure(ex.execute(d, {}, { actorId: 't', transactional: true }))
      expect(t.code, round).toBe('INVALID_ARGUMENT')
      expect(t.message).toContain('changes tables or drops segments')
      expect((await failure(ex.snapshotActor(d, 'p'))).code).toBe('INVALID_ARGUMENT')
      const durable = new WasmActivityExecutor(blobs, { cacheDir, shareCode: false, actorStore: new ObjectBlobStore(`file://${tempDir()}`) })
      expect((await failure(durable.execute(d, {}, { actorId: 'd' }))).code).toBe('INVALID_ARGUMENT')
      if (round === 'from the artifact') expect(ex.cacheStats().artifactHits).toBeGreaterThan(0)
      await ex.close()
      await durable.close()
    }
  })
})

describe('K5. Extism vars count what they cost the host', () => {
  /** A plugin setting `n` vars of distinct 3-byte keys, each to a 1-byte value. */
  const setter = (n: number) =>
    wat(`(module
      (import "extism:host/env" "alloc" (func $alloc (param i64) (result i64)))
      (import "extism:host/env" "store_u8" (func $store (param i64 i32)))
      (import "extism:host/env" "var_set" (func $set (param i64 i64)))
      (import "extism:host/env" "output_set" (func $out (param i64 i64)))
      (memory (export "memory") 1)
      (func $letter (param $k i64) (param $at i64) (param $n i32)
        (call $store (i64.add (local.get $k) (local.get $at)) (i32.add (i32.const 65) (i32.rem_u (local.get $n) (i32.const 26)))))
      (func (export "execute") (result i32) (local $i i32) (local $k i64) (local $v i64)
        (local.set $v (call $alloc (i64.const 1)))
        (loop $l
          (local.set $k (call $alloc (i64.const 3)))
          (call $letter (local.get $k) (i64.const 0) (local.get $i))
          (call $letter (local.get $k) (i64.const 1) (i32.div_u (local.get $i) (i32.const 26)))
          (call $letter (local.get $k) (i64.const 2) (i32.div_u (local.get $i) (i32.const 676)))
          (call $set (local.get $k) (local.get $v))
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br_if $l (i32.lt_u (local.get $i) (i32.const ${n}))))
        ;; The output: the value's byte, "1".
        (call $store (local.get $v) (i32.const 49))
        (call $out (local.get $v) (i64.const 1))
        (i32.const 0)))`)

  it('8,500 vars of 3 bytes are past the 1 MiB of vars (128 bytes each besides its bytes); 7,500 fit', async () => {
    // 400,000 such vars held 54 MiB of host memory where 1.2 MB was counted; review BE2 measured
    // about 110 bytes per var, where 64 were counted.
    const blobs: Record<string, Buffer> = { 'many.wasm': await setter(8_500), 'fit.wasm': await setter(7_500) }
    const ex = new WasmActivityExecutor({ download: async (p: string) => blobs[p] })
    const e = await failure(ex.execute(def('many'), {}))
    expect(e.code).toBe('OUT_OF_MEMORY')
    expect(await ex.execute(def('fit'), {}, { actorId: 'a' })).toBe(1)
    await ex.close()
  })
})

describe('J3. close() closes the network', () => {
  it("a pooled keep-alive connection closes with the executor, not 30 s later", async () => {
    const open = new Set<Socket>()
    const server = createServer((_req, res) => res.end('{}'))
    server.keepAliveTimeout = 120_000 // the server keeps it; only the client can close it
    server.on('connection', (s) => {
      open.add(s)
      s.on('close', () => open.delete(s))
    })
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
    const port = (server.address() as AddressInfo).port
    try {
      const ex = new WasmActivityExecutor(
        { download: async () => guest('host/http') },
        { network: { allowedHosts: [`127.0.0.1:${port}`] } },
      )
      const out: any = await ex.execute(def('http', { capabilities: { network: true } }), {
        requests: [JSON.stringify({ url: `http://127.0.0.1:${port}/` })],
      })
      expect(out.responses[0].status).toBe(200)
      expect(open.size).toBe(1) // kept alive in the executor's pool
      await ex.close()
      const deadline = Date.now() + 10_000
      while (open.size > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50))
      expect(open.size).toBe(0)
      // The executor stays usable as a JS object: a call after close is CLOSED.
      expect((await failure(ex.execute(def('http'), {}))).code).toBe('CLOSED')
    } finally {
      server.closeAllConnections()
      await new Promise((r) => server.close(r))
    }
  }, 30_000)
})

describe('L4. options.env reads only its own keys', () => {
  it('a key added to Object.prototype is not offered', async () => {
    const proto = Object.prototype as any
    proto.LOOM_POLLUTED = 'from the prototype'
    try {
      const ex = new WasmActivityExecutor({ download: async () => guest('capabilities/env') }, { env: { LOOM_OWN: 'own' } })
      const e = await failure(ex.execute(def('env', { capabilities: { env: ['LOOM_POLLUTED'] } }), {}))
      expect(e.code).toBe('CAPABILITY_DENIED')
      expect(await ex.execute(def('env', { capabilities: { env: ['LOOM_OWN'] } }), {})).toEqual({ LOOM_OWN: 'own' })
    } finally {
      delete proto.LOOM_POLLUTED
    }
  })
})

describe("M5. a deterministic call's clocks and randomness stay in that call", () => {
  /** Answers [realtime ns, monotonic ns, 8 random bytes] as hex strings (WASI preview 1). */
  const clocks = () =>
    guestWat(
      `(func $hex (param $v i64) (param $at i32) (local $k i32) (local $n i32)
        (loop $l
          (local.set $n (i32.wrap_i64 (i64.and (i64.shr_u (local.get $v)
            (i64.extend_i32_u (i32.sub (i32.const 60) (i32.shl (local.get $k) (i32.const 2))))) (i64.const 15))))
          (i32.store16 (i32.add (local.get $at) (i32.shl (local.get $k) (i32.const 1)))
            (select (i32.add (local.get $n) (i32.const 48)) (i32.add (local.get $n) (i32.const 87)) (i32.lt_u (local.get $n) (i32.const 10))))
          (local.set $k (i32.add (local.get $k) (i32.const 1)))
          (br_if $l (i32.lt_u (local.get $k) (i32.const 16)))))
      (func $ch (param $at i32) (param $c i32) (i32.store16 (local.get $at) (local.get $c)))
      (func (export "execute") (param i32) (result i32)
        (drop (call $clock (i32.const 0) (i64.const 1) (i32.const 1000)))
        (drop (call $clock (i32.const 1) (i64.const 1) (i32.const 1008)))
        (drop (call $rand (i32.const 1016) (i32.const 8)))
        (i32.store (i32.const 8188) (i32.const 116))
        (call $ch (i32.const 8192) (i32.const 91)) (call $ch (i32.const 8194) (i32.const 34))
        (call $hex (i64.load (i32.const 1000)) (i32.const 8196))
        (call $ch (i32.const 8228) (i32.const 34)) (call $ch (i32.const 8230) (i32.const 44)) (call $ch (i32.const 8232) (i32.const 34))
        (call $hex (i64.load (i32.const 1008)) (i32.const 8234))
        (call $ch (i32.const 8266) (i32.const 34)) (call $ch (i32.const 8268) (i32.const 44)) (call $ch (i32.const 8270) (i32.const 34))
        (call $hex (i64.load (i32.const 1016)) (i32.const 8272))
        (call $ch (i32.const 8304) (i32.const 34)) (call $ch (i32.const 8306) (i32.const 93))
        (i32.const 8192))`,
      `(import "wasi_snapshot_preview1" "clock_time_get" (func $clock (param i32 i64 i32) (result i32)))
       (import "wasi_snapshot_preview1" "random_get" (func $rand (param i32 i32) (result i32)))`,
    )

  it("an actor's call after a deterministic one reads the real clock and fresh randomness", async () => {
    const wasm = await clocks()
    const ex = new WasmActivityExecutor({ download: async () => wasm }, { env: { X: '1' } })
    const det = def('clocks', { deterministic: true, capabilities: { env: ['X'] } } as any)
    const plain = def('clocks', { capabilities: { env: ['X'] } })
    const ms = (o: string[]) => Number(BigInt('0x' + o[0]) / 1_000_000n)
    const fresh = await ex.execute(det, null, { now: 2000, seed: 7 })
    expect(ms(fresh)).toBe(2000)
    const mono = (o: string[]) => BigInt('0x' + o[1])
    for (const actorId of ['a', 'b']) {
      let before = 0n
      if (actorId === 'b') {
        const first = await ex.execute(plain, null, { actorId })
        expect(Math.abs(ms(first) - Date.now())).toBeLessThan(60_000)
        before = mono(first)
      }
      const d = await ex.execute(det, null, { actorId, now: 2000, seed: 7 })
      // The same as a fresh deterministic call: replayable.
      expect(d).toEqual(fresh)
      const after = await ex.execute(plain, null, { actorId })
      expect(Math.abs(ms(after) - Date.now())).toBeLessThan(60_000)
      // The monotonic clock did not go back (review O: a rebuilt context started it from 0).
      expect(mono(after) > before).toBe(true)
      expect(after[2]).not.toBe(fresh[2])
      // And the next deterministic call is deterministic again.
      expect(await ex.execute(det, null, { actorId, now: 2000, seed: 7 })).toEqual(fresh)
    }
    await ex.close()
  })
})

describe('M4. heartbeats up to their limit', () => {
  /** Sends one heartbeat: {"c":"aaa…"} with `n` a's, built in the guest. */
  const beat = (n: number) =>
    guestWat(
      `(func (export "execute") (param i32) (result i32) (local $s i32) (local $i i32) (local $len i32)
        (local.set $len (i32.add (i32.const ${n}) (i32.const 8)))
        (local.set $s (call $new (i32.shl (local.get $len) (i32.const 1)) (i32.const 2)))
        ;; {"c":" then the a's, then "}
        (i32.store16 (local.get $s) (i32.const 123)) (i32.store16 offset=2 (local.get $s) (i32.const 34))
        (i32.store16 offset=4 (local.get $s) (i32.const 99)) (i32.store16 offset=6 (local.get $s) (i32.const 34))
        (i32.store16 offset=8 (local.get $s) (i32.const 58)) (i32.store16 offset=10 (local.get $s) (i32.const 34))
        (block $d (loop $l (br_if $d (i32.ge_u (local.get $i) (i32.const ${n})))
          (i32.store16 offset=12 (i32.add (local.get $s) (i32.shl (local.get $i) (i32.const 1))) (i32.const 97))
          (local.set $i (i32.add (local.get $i) (i32.const 1))) (br $l)))
        (i32.store16 offset=12 (i32.add (local.get $s) (i32.shl (local.get $i) (i32.const 1))) (i32.const 34))
        (i32.store16 offset=14 (i32.add (local.get $s) (i32.shl (local.get $i) (i32.const 1))) (i32.const 125))
        (call $progress (local.get $s))
        (i32.const 36))`,
      `(import "loom" "progress" (func $progress (param i32)))`,
    )

  it('a heartbeat of 20,000 characters arrives whole and parsed (it was cut at 4,096, and so no JSON)', async () => {
    const wasm = await beat(20_000)
    const ex = new WasmActivityExecutor({ download: async () => wasm })
    const seen: any[] = []
    await ex.execute(def('beat'), {}, { onProgress: (d: any) => seen.push(d) })
    expect(seen).toHaveLength(1)
    expect(seen[0]).toEqual({ c: 'a'.repeat(20_000) })
  })
})

describe('M6. maxOutputBytes counts UTF-16 bytes on every ABI', () => {
  const built = (p: string) => readFileSync(join(__dirname, '..', 'build', p))
  it('an output of exactly the limit passes and one over it is OUTPUT_TOO_LARGE, for ASCII and CJK text alike', async () => {
    const blobs: Record<string, Buffer> = {
      'echo.wasm': guest('echo'),
      'plugin.wasm': built('c/plugin.wasm'),
      'cmd.wasm': built('c/command.wasm'),
      'js.wasm': built('js/echo.wasm'),
    }
    const store = { download: async (p: string) => blobs[p] }
    const cacheDir = tempDir() // the JS component compiles once
    const free = new WasmActivityExecutor(store, { cacheDir })
    for (const name of ['echo', 'plugin', 'cmd', 'js']) {
      for (const message of ['x'.repeat(300), '漢'.repeat(150)]) {
        const out = await free.execute(def(name), { message })
        // What JS holds: two bytes per UTF-16 unit (the guests write compact JSON).
        const size = JSON.stringify(out).length * 2
        const at = new WasmActivityExecutor(store, { cacheDir, maxOutputBytes: size })
        expect(await at.execute(def(name), { message }), `${name} at the limit`).toEqual(out)
        const under = new WasmActivityExecutor(store, { cacheDir, maxOutputBytes: size - 2 })
        const e = await failure(under.execute(def(name), { message }))
        expect([e.code, e.size, e.limit], `${name} over it`).toEqual(['OUTPUT_TOO_LARGE', size, size - 2])
      }
    }
  }, 60_000)
})

describe('M7. inspectModule is bounded like a compile', () => {
  it('64 inspections at once compile one per core, not 64 threads at once', async () => {
    const threads = () => Number(/Threads:\s+(\d+)/.exec(readFileSync('/proc/self/status', 'utf8'))![1])
    const bytes = guest('mortgage')
    await inspectModule(bytes) // the runtime's own threads are up
    const before = threads()
    let most = before
    const watch = setInterval(() => (most = Math.max(most, threads())), 1)
    const all = await Promise.all(Array.from({ length: 64 }, () => inspectModule(bytes)))
    clearInterval(watch)
    most = Math.max(most, threads())
    expect(new Set(all.map((i) => i.sha256)).size).toBe(1)
    expect(all[0].abi).toBe('assemblyscript')
    expect(most - before).toBeLessThanOrEqual(availableParallelism() + 2)
  })
})

describe('N1. the newest heartbeat arrives even when the call is ended from outside', () => {
  it('a heartbeat held back by the rate limit reaches onProgress before a TIMEOUT or CANCELLED while the guest waits in a host call', async () => {
    // {"a":1}, then {"a":2} within the 100 ms, then a host function that never answers.
    const wasm = await guestWat(
      `(data (i32.const 200) "\\0e\\00\\00\\00{\\00\\"\\00a\\00\\"\\00:\\001\\00}\\00")
      (data (i32.const 300) "\\0e\\00\\00\\00{\\00\\"\\00a\\00\\"\\00:\\002\\00}\\00")
      (data (i32.const 400) "\\04\\00\\00\\00{\\00}\\00")
      (func (export "execute") (param i32) (result i32)
        (call $progress (i32.const 204))
        (call $progress (i32.const 304))
        (drop (call $wait (i32.const 404)))
        (i32.const 36))`,
      `(import "loom" "progress" (func $progress (param i32)))
       (import "h" "wait" (func $wait (param i32) (result i32)))`,
    )
    const ex = new WasmActivityExecutor({ download: async () => wasm }, { hostFunctions: { 'h.wait': () => new Promise(() => {}) } })
    for (const mode of ['timeout', 'cancel']) {
      const seen: any[] = []
      const ac = new AbortController()
      const d = def('g', { capabilities: { hostFunctions: ['h.wait'] }, limits: { maxExecutionMs: mode === 'timeout' ? 300 : 10_000 } })
      if (mode === 'cancel') setTimeout(() => ac.abort(), 150)
      const e = await failure(ex.execute(d, {}, { onProgress: (p: any) => seen.push(p), signal: ac.signal }))
      expect(e.code).toBe(mode === 'timeout' ? 'TIMEOUT' : 'CANCELLED')
      expect(e.lastProgress).toEqual({ a: 2 })
      expect(seen, mode).toEqual([{ a: 1 }, { a: 2 }])
    }
    await ex.close()
  })
})

describe("S1. a snapshot is taken against the image of the restoring executor's own grants, not whoever asked first", () => {
  // An Extism plugin whose `_initialize` copies its WASI environment into memory; `execute`
  // returns that string. A pristine actor's memory is then its initial image exactly.
  const envPlugin = (initializer = '(func (export "_initialize") (drop (call $environ_get (i32.const 1024) (i32.const 2048))))') =>
    wat(`(module
      (import "wasi_snapshot_preview1" "environ_get" (func $environ_get (param i32 i32) (result i32)))
      (import "extism:host/env" "alloc" (func $alloc (param i64) (result i64)))
      (import "extism:host/env" "store_u8" (func $store_u8 (param i64 i32)))
      (import "extism:host/env" "output_set" (func $output_set (param i64 i64)))
      (memory (export "memory") 1)
      ${initializer}
      (func (export "execute") (result i32)
        (local $n i32) (local $off i64) (local $i i32)
        (block $done (loop $l
          (br_if $done (i32.eqz (i32.load8_u (i32.add (i32.const 2048) (local.get $n)))))
          (local.set $n (i32.add (local.get $n) (i32.const 1)))
          (br $l)))
        (local.set $off (call $alloc (i64.extend_i32_u (i32.add (local.get $n) (i32.const 2)))))
        (call $store_u8 (local.get $off) (i32.const 34))
        (block $d2 (loop $l2
          (br_if $d2 (i32.ge_u (local.get $i) (local.get $n)))
          (call $store_u8 (i64.add (local.get $off) (i64.extend_i32_u (i32.add (local.get $i) (i32.const 1))))
                          (i32.load8_u (i32.add (i32.const 2048) (local.get $i))))
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br $l2)))
        (call $store_u8 (i64.add (local.get $off) (i64.extend_i32_u (i32.add (local.get $n) (i32.const 1)))) (i32.const 34))
        (call $output_set (local.get $off) (i64.extend_i32_u (i32.add (local.get $n) (i32.const 2))))
        (i32.const 0)))`)

  it("another tenant's environment never comes back in a restored actor (review S)", async () => {
    const bytes = await envPlugin()
    const store = () => ({ download: async () => bytes })
    const d = def('cfg', { capabilities: { env: ['TOKEN'] } })
    // The attacker's pristine actor, snapshotted in an executor of its own.
    const a1 = new WasmActivityExecutor(store(), { env: { TOKEN: 'attacker' }, shareCode: false })
    expect(await a1.execute(d, {}, { actorId: 'x' })).toBe('TOKEN=attacker')
    const snap = await a1.snapshotActor(d, 'x')
    await a1.close()
    // The victim's executor computes the module's image first (its snapshot), with its secret
    // in the environment; the attacker's next executor takes the victim's code.
    const victim = new WasmActivityExecutor(store(), { env: { TOKEN: 'victim-secret' }, tierUp: false })
    expect(await victim.execute(d, {}, { actorId: 'v' })).toBe('TOKEN=victim-secret')
    await victim.snapshotActor(d, 'v')
    const a2 = new WasmActivityExecutor(store(), { env: { TOKEN: 'attacker' } })
    await a2.restoreActor(d, 'x', snap)
    expect(await a2.execute(d, {}, { actorId: 'x' })).toBe('TOKEN=attacker')
    expect(a2.cacheStats().sharedHits).toBe(1)
    // And the other way round (review S's poison): the attacker's executor makes the image of a
    // module first; the victim's executor takes that module and restores its own snapshot: it gets
    // its own configuration back, not the attacker's.
    const other = Buffer.concat([bytes, Buffer.from([0, 6, 5]), Buffer.from('other')])
    const otherStore = () => ({ download: async () => other })
    const own = new WasmActivityExecutor(otherStore(), { env: { TOKEN: 'victim-secret' }, shareCode: false })
    await own.execute(d, {}, { actorId: 'w' })
    const vsnap = await own.snapshotActor(d, 'w')
    await own.close()
    const a3 = new WasmActivityExecutor(otherStore(), { env: { TOKEN: 'attacker' }, tierUp: false })
    await a3.execute(d, {}, { actorId: 'y' })
    await a3.snapshotActor(d, 'y')
    const victim2 = new WasmActivityExecutor(otherStore(), { env: { TOKEN: 'victim-secret' } })
    await victim2.restoreActor(d, 'w', vsnap)
    expect(await victim2.execute(d, {}, { actorId: 'w' })).toBe('TOKEN=victim-secret')
    expect(victim2.cacheStats().sharedHits).toBe(1)
    for (const ex of [victim, a2, a3, victim2]) await ex.close()
  })

  it('an initializer that needs its grants still snapshots and persists (review T)', async () => {
    // Traps unless the environment it is granted is there: an image made with nothing granted
    // failed every snapshot and durable call of it.
    const bytes = await envPlugin(`(func (export "_initialize")
      (drop (call $environ_get (i32.const 1024) (i32.const 2048)))
      (if (i32.eqz (i32.load8_u (i32.const 2048))) (then unreachable)))`)
    const d = def('needs', { capabilities: { env: ['TOKEN'] } })
    const ex = new WasmActivityExecutor({ download: async () => bytes }, { env: { TOKEN: 't' }, actorStore: new ObjectBlobStore('memory://') })
    expect(await ex.execute(d, {}, { actorId: 'a' })).toBe('TOKEN=t')
    expect(await ex.execute(d, {}, { actorId: 'a' })).toBe('TOKEN=t')
    expect((await ex.snapshotActor(d, 'a')).length).toBeGreaterThan(0)
    await ex.close()
  })
})
