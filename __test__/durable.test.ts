// Durable actors: snapshots that move an actor between executors, an actor store that survives a
// killed worker and decides who owns an actor, on real stores (a file store, Azurite) with
// worker processes.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process'
import { mkdtempSync, readdirSync, statSync, symlinkSync, unlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { ObjectBlobStore, WasmActivityExecutor } from '../index'
import { startAzurite, startLossyProxy, startMoto, startS3, type Service } from './emulators'
import { claimingMemory, def, failure, guest, MemoryBlobStore, root } from './helpers'

async function counterStore() {
  const store = new MemoryBlobStore()
  await store.upload('counter.wasm', guest('counter-actor'))
  await store.upload('echo.wasm', guest('echo'))
  return store
}

describe('snapshotActor / restoreActor', () => {
  it('move an actor from one executor to another', async () => {
    const store = await counterStore()
    const a = new WasmActivityExecutor(store)
    for (const amount of [5, 3]) await a.execute(def('counter'), { action: 'increment', amount }, { actorId: 'c' })
    const snap = await a.snapshotActor(def('counter'), 'c')
    expect(Buffer.isBuffer(snap)).toBe(true)
    expect(snap.length).toBeLessThan(64 * 1024)
    const b = new WasmActivityExecutor(store)
    await b.restoreActor(def('counter'), 'c', snap)
    expect(await b.execute(def('counter'), { action: 'decrement', amount: 2 }, { actorId: 'c' })).toMatchObject({ count: 6 })
  })

  it('a foreign snapshot is SNAPSHOT_MISMATCH, a corrupt one SNAPSHOT_INVALID; the actor is untouched', async () => {
    const store = await counterStore()
    const ex = new WasmActivityExecutor(store)
    await ex.execute(def('counter'), { action: 'increment', amount: 4 }, { actorId: 'c' })
    await ex.execute(def('echo'), { message: 'x' }, { actorId: 'e' })
    const echoSnap = await ex.snapshotActor(def('echo'), 'e')
    const mismatch = await failure(ex.restoreActor(def('counter'), 'c', echoSnap))
    expect(mismatch.code).toBe('SNAPSHOT_MISMATCH')
    const good = await ex.snapshotActor(def('counter'), 'c')
    for (const bad of [good.subarray(0, good.length - 1), Buffer.from('not a snapshot at all, just some text that is long enough'), Buffer.concat([good, Buffer.from([0])])]) {
      expect((await failure(ex.restoreActor(def('counter'), 'c', bad))).code).toBe('SNAPSHOT_INVALID')
    }
    const flipped = Buffer.from(good)
    flipped[Math.floor(flipped.length / 2)] ^= 0x10
    expect((await failure(ex.restoreActor(def('counter'), 'c', flipped))).code).toBe('SNAPSHOT_INVALID')
    expect(await ex.execute(def('counter'), { action: 'get' }, { actorId: 'c' })).toMatchObject({ count: 4 })
  })

  it('a forged snapshot claiming a large memory without data: the memory is grown and counted, not made resident (review X)', async () => {
    const store = await counterStore()
    const big = def('counter', { limits: { maxMemoryMB: 512 } })
    const ex = new WasmActivityExecutor(store)
    await ex.execute(big, { action: 'increment', amount: 5 }, { actorId: 'c' })
    // The snapshot's memory size set to 256 MiB.
    const snap = claimingMemory(await ex.snapshotActor(big, 'c'), 256 << 20)
    const rss = process.memoryUsage().rss
    await ex.restoreActor(big, 'c', snap)
    const out = await ex.executeDetailed(big, { action: 'get' }, { actorId: 'c' })
    expect(out.output).toMatchObject({ count: 5 })
    expect(out.peakMemoryBytes).toBeGreaterThanOrEqual(256 << 20)
    // Before: every page of the 256 MiB was written on restore (and again on the move to optimized code).
    expect(process.memoryUsage().rss - rss).toBeLessThan(64 << 20)
    // Over the definition's cap: refused.
    expect((await failure(ex.restoreActor(big, 'c', claimingMemory(snap, 1024 << 20)))).code).toBe('SNAPSHOT_INVALID')
    await ex.close()
  })
})

/** A worker process with its actors in `url`. */
class Worker {
  child: ChildProcess
  private waiting = new Map<number, (v: any) => void>()
  private next = 0
  ready: Promise<void>
  constructor(url: string, options: object = {}, env: NodeJS.ProcessEnv = {}) {
    this.child = spawn(process.execPath, [join(root, '__test__/fixtures/durable-worker.cjs'), url, JSON.stringify(options)], {
      stdio: ['pipe', 'pipe', 'inherit'],
      env: { ...process.env, ...env },
    })
    let ready!: () => void
    this.ready = new Promise((r) => (ready = r))
    createInterface({ input: this.child.stdout! }).on('line', (line) => {
      const msg = JSON.parse(line)
      if (msg.ready) return ready()
      this.waiting.get(msg.id)?.(msg)
      this.waiting.delete(msg.id)
    })
  }
  call(action: string, actorId = 'a', amount?: number): Promise<any> {
    const id = this.next++
    return new Promise((resolve) => {
      this.waiting.set(id, resolve)
      this.child.stdin!.write(JSON.stringify({ id, action, actorId, amount }) + '\n')
    })
  }
  kill() {
    this.child.kill('SIGKILL')
    return new Promise((r) => this.child.once('exit', r))
  }
}

// `mustConflict`: whether the race must show an ACTOR_CONFLICT. Where answers get lost, a write's
// retry waits ~100 ms, the other worker runs alone meanwhile, and the two may never collide.
function handOver(url: () => string, options: () => object = () => ({}), env: () => NodeJS.ProcessEnv = () => ({}), mustConflict = true) {
  it('worker A runs the counter to 8 and is killed with SIGKILL; worker B continues at 8', async () => {
    const a = new Worker(url(), options(), env())
    await a.ready
    expect((await a.call('increment', 'h', 5)).ok).toMatchObject({ count: 5 })
    expect((await a.call('increment', 'h', 3)).ok).toMatchObject({ count: 8 })
    await a.kill()
    const b = new Worker(url(), options(), env())
    await b.ready
    expect((await b.call('get', 'h')).ok).toMatchObject({ count: 8 })
    expect((await b.call('decrement', 'h', 2)).ok).toMatchObject({ count: 6 })
    await b.kill()
  })

  it('two workers racing on one actor: exactly one wins each step, none is lost', async () => {
    const workers = [new Worker(url(), options(), env()), new Worker(url(), options(), env())]
    await Promise.all(workers.map((w) => w.ready))
    const steps = 40
    let conflicts = 0
    const race = async (w: Worker) => {
      let done = 0
      while (done < steps) {
        const r = await w.call('increment', 'race')
        if (r.ok) done++
        else if (r.error === 'ACTOR_CONFLICT') conflicts++
        else throw new Error(`unexpected ${r.error}: ${r.message}`)
      }
    }
    await Promise.all(workers.map(race))
    const final = await workers[0].call('get', 'race')
    const total = final.ok ? final.ok.count : (await workers[0].call('get', 'race')).ok.count
    expect(total).toBe(2 * steps)
    if (mustConflict) expect(conflicts).toBeGreaterThan(0) // they did race
    await Promise.all(workers.map((w) => w.kill()))
  })
}

describe('an actor store on a local directory (file://)', () => {
  const dir = mkdtempSync(join(tmpdir(), 'loom-actors-'))
  handOver(() => `file://${dir}`)

  it('a failed call leaves the stored state; dropActor deletes it', async () => {
    const store = await counterStore()
    const actorStore = new ObjectBlobStore(`file://${mkdtempSync(join(tmpdir(), 'loom-actors-'))}`)
    const ex = new WasmActivityExecutor(store, { actorStore })
    await ex.execute(def('counter'), { action: 'increment', amount: 7 }, { actorId: 'f' })
    const e = await failure(ex.execute(def('counter'), { action: 'fail' }, { actorId: 'f' }))
    expect(e.code).toBe('GUEST_ABORT')
    expect(e.actorReset).toBeUndefined()
    const other = new WasmActivityExecutor(store, { actorStore })
    expect(await other.execute(def('counter'), { action: 'get' }, { actorId: 'f' })).toMatchObject({ count: 7 })
    other.dropActor(def('counter'), 'f')
    expect(await other.execute(def('counter'), { action: 'get' }, { actorId: 'f' })).toMatchObject({ count: 0 })
  })

  it('an actor dropped and made anew elsewhere: a worker still holding its old state gets ACTOR_CONFLICT', async () => {
    // The file store's versions counted from 1 again after a delete: A's stale "version 1"
    // matched B's new actor, and A's write silently replaced B's state.
    const store = await counterStore()
    const url = `file://${mkdtempSync(join(tmpdir(), 'loom-actors-'))}`
    const a = new WasmActivityExecutor(store, { actorStore: url })
    const b = new WasmActivityExecutor(store, { actorStore: url })
    const o = { actorId: 'acct' }
    expect(await a.execute(def('counter'), { action: 'increment', amount: 100 }, o)).toMatchObject({ count: 100 })
    expect(await b.execute(def('counter'), { action: 'get' }, o)).toMatchObject({ count: 100 })
    b.dropActor(def('counter'), 'acct')
    expect(await b.execute(def('counter'), { action: 'increment', amount: 1 }, o)).toMatchObject({ count: 1 })
    expect((await failure(a.execute(def('counter'), { action: 'increment', amount: 5 }, o))).code).toBe('ACTOR_CONFLICT')
    const c = new WasmActivityExecutor(store, { actorStore: url })
    expect(await c.execute(def('counter'), { action: 'get' }, o)).toMatchObject({ count: 1 })
  })

  it("close() waits for persist: 'async' writes and dropActor's deletes: a worker that exits right after keeps every step", () => {
    // Both were detached jobs close() did not wait for: 7 of 10 acknowledged steps were lost.
    const dir = mkdtempSync(join(tmpdir(), 'loom-actors-'))
    const worker = (script: string) => asyncWriter(dir, `${script}; await ex.close(); process.exit(0)`)
    const counts = []
    for (let i = 0; i < 5; i++) {
      counts.push(JSON.parse(worker(`console.log(JSON.stringify((await ex.execute(def, { action: 'increment', amount: 1 }, { actorId: 'n' })).count))`)))
    }
    expect(counts).toEqual([1, 2, 3, 4, 5])
    for (let i = 0; i < 3; i++) {
      worker(`await ex.execute(def, { action: 'increment', amount: 42 }, { actorId: 'd' }); ex.dropActor(def, 'd')`)
      expect(JSON.parse(worker(`console.log(JSON.stringify((await ex.execute(def, { action: 'get' }, { actorId: 'd' })).count))`))).toBe(0)
    }
  })

  it("a main thread that ends on its own, without close(), keeps every persist: 'async' step and drop", () => {
    // Review BV2: the writes under way did not hold Node's event loop; once the calls had
    // resolved the process exited and 2 of 8 stores under load lost acknowledged steps.
    const dir = mkdtempSync(join(tmpdir(), 'loom-actors-'))
    const run = (script: string) => asyncWriter(dir, `const ids = Array.from({ length: 100 }, (_, i) => 'a' + i); ${script}`)
    const read = () => JSON.parse(run(`console.log(JSON.stringify(await Promise.all(ids.map(async (id) => (await ex.execute(def, { action: 'get' }, { actorId: id })).count)))); await ex.close()`))
    for (const round of [1, 2]) {
      run(`await Promise.all(ids.map((id) => ex.execute(def, { action: 'increment', amount: 1 }, { actorId: id })))`)
      expect(read()).toEqual(Array(100).fill(round))
    }
    run(`await ex.execute(def, { action: 'increment', amount: 7 }, { actorId: 'd' }); ex.dropActor(def, 'd')`)
    expect(JSON.parse(run(`console.log(JSON.stringify((await ex.execute(def, { action: 'get' }, { actorId: 'd' })).count)); await ex.close()`))).toBe(0)
  })
})

/** Runs `script` (an async function's body, given `ex`, an executor on the `file://` actor store
 * `dir` with `persist: 'async'`, and `def`, the counter's definition) in a process of its own, which
 * ends when its event loop does (or as `script` ends it); its standard output. */
function asyncWriter(dir: string, script: string): string {
  return execFileSync(process.execPath, ['-e', `
    const { WasmActivityExecutor } = require(${JSON.stringify(root)})
    const bytes = require('node:fs').readFileSync(${JSON.stringify(join(root, 'build', 'counter-actor.wasm'))})
    const ex = new WasmActivityExecutor({ download: async () => bytes }, { actorStore: ${JSON.stringify(`file://${dir}`)}, persist: 'async' })
    const def = { name: 'counter', version: '1', wasmBlobPath: 'counter.wasm' }
    ;(async () => { ${script} })().catch((e) => { console.error(e); process.exit(2) })
  `], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] })
}

/** Every file under `dir` whose name ends with `ext`. */
function filesUnder(dir: string, ext: string): string[] {
  return readdirSync(dir, { recursive: true, encoding: 'utf8' }).map((f) => join(dir, f)).filter((f) => f.endsWith(ext) && statSync(f).isFile())
}

/** This process's OS threads. */
const threadCount = () => readdirSync('/proc/self/task').length

/** Another process holding an exclusive flock on `path` until `release` is called. */
async function holdLock(path: string): Promise<{ release: () => Promise<void> }> {
  const holder = spawn('python3', ['-c', `import fcntl, sys\nf = open(sys.argv[1], 'a')\nfcntl.flock(f, fcntl.LOCK_EX)\nprint('held', flush=True)\nsys.stdin.read()`, path], {
    stdio: ['pipe', 'pipe', 'inherit'],
  })
  await new Promise((resolve, reject) => {
    holder.stdout!.once('data', resolve)
    holder.once('exit', reject)
  })
  return {
    release: async () => {
      const exited = new Promise((r) => holder.once('exit', r))
      holder.stdin!.end()
      await exited
    },
  }
}

describe('a hostile or stuck file:// actor store', () => {
  const quick = def('counter', { limits: { maxExecutionMs: 300 } })

  it('a lock held by another process: calls end at their deadline, leave no thread behind, and their writes never land', async () => {
    const store = await counterStore()
    const dir = mkdtempSync(join(tmpdir(), 'loom-actors-'))
    const ex = new WasmActivityExecutor(store, { actorStore: new ObjectBlobStore(`file://${dir}`) })
    expect(await ex.execute(quick, { action: 'increment' }, { actorId: 'l' })).toMatchObject({ count: 1 })
    const [lock] = filesUnder(dir, '.lock')
    const holder = await holdLock(lock)
    const before = threadCount()
    for (let i = 0; i < 8; i++) {
      const started = Date.now()
      const e = await failure(ex.execute(quick, { action: 'increment' }, { actorId: 'l' }))
      expect(e.code).toBe('TIMEOUT')
      expect(Date.now() - started).toBeLessThan(5000)
    }
    // Each call's wait for the lock stopped with the call (before: one thread stuck in flock per call, +6 to +8
    // here). Pools may still grow by a thread or two.
    await new Promise((r) => setTimeout(r, 200))
    expect(threadCount()).toBeLessThanOrEqual(before + 3)
    await holder.release()
    await new Promise((r) => setTimeout(r, 200))
    // None of the eight timed-out increments was written once the lock came free: the store holds 1.
    expect(await ex.execute(quick, { action: 'increment' }, { actorId: 'l' })).toMatchObject({ count: 2 })
    const other = new WasmActivityExecutor(store, { actorStore: new ObjectBlobStore(`file://${dir}`) })
    expect(await other.execute(quick, { action: 'get' }, { actorId: 'l' })).toMatchObject({ count: 2 })
  }, 60_000)

  it('a FIFO, a symlink or a giant planted where a snapshot is: SNAPSHOT_INVALID at once, nothing read or followed', async () => {
    const store = await counterStore()
    const dir = mkdtempSync(join(tmpdir(), 'loom-actors-'))
    const url = `file://${dir}`
    const first = new WasmActivityExecutor(store, { actorStore: new ObjectBlobStore(url) })
    await first.execute(quick, { action: 'increment' }, { actorId: 'p' })
    const [snap] = filesUnder(dir, '.snap')
    const secret = join(mkdtempSync(join(tmpdir(), 'loom-secret-')), 'secret')
    writeFileSync(secret, 'not a snapshot')
    const plants: Array<[string, () => void, string]> = [
      ['a FIFO (an open that would block forever)', () => execFileSync('mkfifo', [snap]), 'not a regular file'],
      ['a symlink', () => symlinkSync(secret, snap), 'not an actor store file'],
      // 1 GiB, sparse, behind a well-formed header: over what an actor with a 256 MiB memory limit can need.
      ['a giant', () => {
        writeFileSync(snap, Buffer.concat([Buffer.from('LOOMACT1'), Buffer.alloc(8)]))
        execFileSync('truncate', ['-s', '1G', snap])
      }, 'more than an actor'],
    ]
    for (const [what, plant, why] of plants) {
      unlinkSync(snap)
      plant()
      const fresh = new WasmActivityExecutor(store, { actorStore: new ObjectBlobStore(url) })
      const started = Date.now()
      const e = await failure(fresh.execute(def('counter'), { action: 'get' }, { actorId: 'p' }))
      expect(e.code, what).toBe('SNAPSHOT_INVALID')
      expect(e.message, what).toContain(why)
      expect(Date.now() - started, what).toBeLessThan(5000)
    }
  }, 60_000)

  it('a FIFO planted as the lock file, a symlink as the temporary file: refused or removed, never written through', async () => {
    const store = await counterStore()
    const dir = mkdtempSync(join(tmpdir(), 'loom-actors-'))
    const ex = new WasmActivityExecutor(store, { actorStore: new ObjectBlobStore(`file://${dir}`) })
    await ex.execute(quick, { action: 'increment' }, { actorId: 'q' })
    const [lock] = filesUnder(dir, '.lock')
    unlinkSync(lock)
    execFileSync('mkfifo', [lock])
    const e = await failure(ex.execute(def('counter'), { action: 'increment' }, { actorId: 'q' }))
    expect(e.code).toBe('BLOB_UNAVAILABLE')
    unlinkSync(lock)
    // The writer's temporary file (`<key>.tmp<pid>`) planted as a link to a file of the victim's.
    const victim = join(mkdtempSync(join(tmpdir(), 'loom-victim-')), 'victim')
    writeFileSync(victim, 'precious')
    symlinkSync(victim, lock.replace(/\.lock$/, `.tmp${process.pid}`))
    expect(await ex.execute(def('counter'), { action: 'increment' }, { actorId: 'q' })).toMatchObject({ count: 2 })
    expect(execFileSync('cat', [victim]).toString()).toBe('precious')
  }, 60_000)
})

describe('an actor store on Azurite (az://)', () => {
  let az: Service
  beforeAll(async () => {
    az = await startAzurite('actors')
  })
  afterAll(async () => az && (await az.stop()))
  const env = () => ({ AZURITE_BLOB_STORAGE_URL: `http://127.0.0.1:${az.port}` })
  handOver(() => 'az://actors/loom', () => ({ account_name: 'devstoreaccount1', use_emulator: true }), env)
})

describe('an actor store on S3 (moto: an S3 emulator that honours conditional writes)', () => {
  let s3: Service
  beforeAll(async () => {
    s3 = await startMoto('actors')
  }, 600_000)
  afterAll(async () => s3 && (await s3.stop()))
  const options = () => ({
    endpoint: `http://127.0.0.1:${s3.port}`, allow_http: true, access_key_id: 'test', secret_access_key: 'test',
    region: 'us-east-1', conditional_put: 'etag',
  })
  handOver(() => 's3://actors/loom', options)
})

// object_store retries a PUT whose answer was a 5xx or never came; the retry then fails its
// condition on the write that did land. Before, that was ACTOR_CONFLICT for a step that was
// stored: the caller retried it and the count went one over (seen once in CI: 81 for 80 steps).
describe('an actor store on S3 whose answers get lost (moto behind a lossy proxy)', () => {
  let s3: Service
  let proxy: Service
  let lose: (method: string, path: string) => boolean | ((status: number) => Promise<void>) = () => false
  const snapshotPut = (method: string, path: string) => method === 'PUT' && path.includes('/actors/') && !path.includes('probe')
  beforeAll(async () => {
    s3 = await startMoto('lossy')
    proxy = await startLossyProxy(s3.port, (m, p) => lose(m, p))
  }, 600_000)
  afterAll(async () => {
    await proxy?.stop()
    await s3?.stop()
  })
  const options = (port = proxy.port) => ({
    endpoint: `http://127.0.0.1:${port}`, allow_http: true, access_key_id: 'test', secret_access_key: 'test',
    region: 'us-east-1', conditional_put: 'etag',
  })
  const executor = async (port?: number) =>
    new WasmActivityExecutor(await counterStore(), { actorStore: new ObjectBlobStore('s3://lossy/loom', options(port)) })
  const step = (ex: WasmActivityExecutor, actorId: string, action = 'increment') => ex.execute(def('counter'), { action }, { actorId })

  it('a write that landed but whose answer was lost counts once: its call succeeds, the step is stored once', async () => {
    let n = 0
    lose = (m, p) => snapshotPut(m, p) && ++n % 2 === 1 // every first attempt
    const ex = await executor()
    for (let i = 1; i <= 5; i++) expect(await step(ex, 'l')).toMatchObject({ count: i })
    lose = () => false
    expect(n).toBe(10) // each step: a lost attempt, then its retry
    expect(await step(await executor(s3.port), 'l', 'get')).toMatchObject({ count: 5 })
  })

  it('a lost answer checked only after another worker stored on top of it: the call counts, the next reloads', async () => {
    const a = await executor()
    const b = await executor(s3.port)
    expect(await step(a, 's')).toMatchObject({ count: 1 })
    let landed!: (status: number) => void
    const hasLanded = new Promise<number>((r) => (landed = r))
    let release!: () => void
    const released = new Promise<void>((r) => (release = r))
    let armed = true
    lose = (m, p) => {
      if (!armed || !snapshotPut(m, p)) return false
      armed = false
      return (status) => (landed(status), released)
    }
    const held = step(a, 's')
    expect(await hasLanded).toBe(200) // A's count 2 is stored; A has not heard so
    expect(await step(b, 's')).toMatchObject({ count: 3 }) // B builds on it
    release()
    expect(await held).toMatchObject({ count: 2 })
    lose = () => false
    expect(await step(a, 's')).toMatchObject({ count: 4 }) // reloaded B's 3, no ACTOR_CONFLICT
    expect(await step(await executor(s3.port), 's', 'get')).toMatchObject({ count: 4 })
  })

  it("a lost answer whose read-back fails too is read again until it can be: the step counts once (review AK: 11 for 10)", async () => {
    const ex = await executor()
    expect(await step(ex, 'h')).toMatchObject({ count: 1 })
    for (let i = 2; i <= 4; i++) {
      let heads = 0
      let lostPut = false
      lose = (m, p) => {
        if (snapshotPut(m, p) && !lostPut) return (lostPut = true)
        // Taken as "not stored", a failed read-back had the step fail (ACTOR_CONFLICT) and its retry count again.
        return m === 'HEAD' && p.includes('/actors/') && lostPut && ++heads <= 8
      }
      expect(await step(ex, 'h')).toMatchObject({ count: i })
      expect(heads).toBeGreaterThan(8) // more than one read's own retries (object_store's)
    }
    lose = () => false
    expect(await step(await executor(s3.port), 'h', 'get')).toMatchObject({ count: 4 })
  })

  it("the store's timeoutMs bounds a write whose answer hangs; the write is then read back (review AK: 12 s under timeoutMs 1000)", async () => {
    let held = 0
    lose = (m, p) => snapshotPut(m, p) && held++ === 0 && (() => new Promise<void>((r) => setTimeout(r, 4000)))
    const ex = new WasmActivityExecutor(await counterStore(), {
      actorStore: new ObjectBlobStore('s3://lossy/loom', { ...options(), timeoutMs: '500' }),
    })
    const t0 = performance.now()
    expect(await step(ex, 't')).toMatchObject({ count: 1 }) // it landed: found by the read-back
    expect(performance.now() - t0).toBeLessThan(3000)
    lose = () => false
    expect(await step(ex, 't')).toMatchObject({ count: 2 })
  })

  it('calls waiting on the actor store hold no concurrency slot: a stateless call goes first (review AK: it waited 3.2 s behind them)', async () => {
    lose = (m, p) => snapshotPut(m, p) && (() => new Promise<void>((r) => setTimeout(r, 800))) // answers late (then lost: read back)
    const ex = new WasmActivityExecutor(await counterStore(), { maxConcurrency: 2, actorStore: new ObjectBlobStore('s3://lossy/loom', options()) })
    const order: string[] = []
    const durable = Array.from({ length: 6 }, (_, i) => step(ex, `slot-${i}`).then(() => order.push(`durable ${i}`)))
    await new Promise((r) => setTimeout(r, 300)) // all six are writing now
    await ex.execute(def('counter'), { action: 'get' }).then(() => order.push('stateless'))
    await Promise.all(durable)
    lose = () => false
    expect(order[0]).toBe('stateless')
    expect(order.length).toBe(7)
  })

  it("a failure of the first use's check that the store takes conditions is tried again, not kept (review AK: the store failed every call)", async () => {
    const probe = (m: string, p: string) => m === 'PUT' && p.includes('conditional-probe')
    let n = 0
    lose = (m, p) => probe(m, p) && ++n <= 8 // every attempt of the first call's probe (object_store retries)
    const ex = await executor()
    expect((await failure(step(ex, 'p'))).code).toBe('BLOB_UNAVAILABLE')
    lose = () => false
    // Within a second of it, the failure answers for a probe (one after another, each use's probe
    // made the calls of an outage fail at 1, 2, ... 18 s).
    expect((await failure(step(ex, 'p'))).code).toBe('BLOB_UNAVAILABLE')
    await new Promise((r) => setTimeout(r, 1100))
    expect(await step(ex, 'p')).toMatchObject({ count: 1 })
    // One lost answer on the probe: its retry meets the probe's own object, which shows the condition held.
    let lost = false
    lose = (m, p) => probe(m, p) && !lost && (lost = true)
    const other = await executor()
    expect(await step(other, 'q')).toMatchObject({ count: 1 })
    expect(lost).toBe(true)
    lose = () => false
  })

  it('restoreActor on a worker whose copy another worker has advanced stores over it (review AK: ACTOR_CONFLICT for good)', async () => {
    lose = () => false
    const a = await executor(s3.port)
    const b = await executor(s3.port)
    await step(a, 'r')
    await step(a, 'r')
    const snap = await a.snapshotActor(def('counter'), 'r') // count 2, A keeps its copy
    for (let i = 0; i < 3; i++) await step(b, 'r') // B: 5
    await a.restoreActor(def('counter'), 'r', snap)
    expect(await step(a, 'r')).toMatchObject({ count: 3 })
    expect(await step(await executor(s3.port), 'r', 'get')).toMatchObject({ count: 3 })
    expect((await failure(step(b, 'r'))).code).toBe('ACTOR_CONFLICT') // B's copy is the stale one now
    expect(await step(b, 'r')).toMatchObject({ count: 4 })
  })

  describe('worker processes whose every third write answer is lost', () => {
    beforeAll(() => {
      let n = 0
      lose = (m, p) => snapshotPut(m, p) && ++n % 3 === 0
    })
    handOver(() => 's3://lossy/loom', () => options(), undefined, false)
  })
})

describe('a store that takes create-only writes but ignores If-Match is refused (review AK follow-up: 34 of 61 steps stored)', () => {
  let s3: Service
  let proxy: Service
  beforeAll(async () => {
    s3 = await startMoto('ifmatch')
    proxy = await startLossyProxy(s3.port, () => false, ['if-match'])
  }, 600_000)
  afterAll(async () => {
    await proxy?.stop()
    await s3?.stop()
  })
  it('at its first use, INVALID_ARGUMENT', async () => {
    const options = (port: number) => ({
      endpoint: `http://127.0.0.1:${port}`, allow_http: true, access_key_id: 'test', secret_access_key: 'test',
      region: 'us-east-1', conditional_put: 'etag',
    })
    const stripped = new WasmActivityExecutor(await counterStore(), { actorStore: new ObjectBlobStore('s3://ifmatch/loom', options(proxy.port)) })
    const e = await failure(stripped.execute(def('counter'), { action: 'get' }, { actorId: 'i' }))
    expect([e.code, e.message.includes('a version the object does not have')]).toEqual(['INVALID_ARGUMENT', true])
    const honest = new WasmActivityExecutor(await counterStore(), { actorStore: new ObjectBlobStore('s3://ifmatch/loom', options(s3.port)) })
    expect(await honest.execute(def('counter'), { action: 'increment' }, { actorId: 'i' })).toMatchObject({ count: 1 })
  })
})

describe('stores that cannot write conditionally are refused', () => {
  let s3: Service
  beforeAll(async () => {
    s3 = await startS3('actors')
  })
  afterAll(async () => s3 && (await s3.stop()))

  it('http(s):// and s3:// without conditional_put at construction; an S3 endpoint that ignores If-None-Match on first use', async () => {
    const store = await counterStore()
    for (const actorStore of ['http://127.0.0.1:9/x', new ObjectBlobStore('s3://actors/loom', { region: 'us-east-1' })]) {
      expect(() => new WasmActivityExecutor(store, { actorStore } as any)).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }))
    }
    expect(() => new WasmActivityExecutor(store, { actorStore: { download: async () => Buffer.alloc(0) } } as any)).toThrow(
      expect.objectContaining({ code: 'INVALID_ARGUMENT' }),
    )
    // s3rver 3.7 accepts a create-only write of an existing object: caught by the probe.
    const s3Store = new ObjectBlobStore('s3://actors/loom', {
      endpoint: `http://127.0.0.1:${s3.port}`, allow_http: true, access_key_id: 'S3RVER', secret_access_key: 'S3RVER',
      region: 'us-east-1', conditional_put: 'etag',
    })
    const ex = new WasmActivityExecutor(store, { actorStore: s3Store })
    const e = await failure(ex.execute(def('counter'), { action: 'get' }, { actorId: 's' }))
    expect(e.code).toBe('INVALID_ARGUMENT')
    expect(e.message).toContain('ignores conditional writes')
  })
})

describe('replay (definition.deterministic)', () => {
  it('the same snapshot, input and { now, seed } give byte-identical outputs and snapshots over 100 steps', async () => {
    const store = new MemoryBlobStore()
    await store.upload('replay.wasm', guest('replay-actor'))
    const d = def('replay', { deterministic: true })
    const first = new WasmActivityExecutor(store)
    await first.execute(d, { add: 0 }, { actorId: 'r', now: 1_700_000_000_000, seed: 1 })
    const start = await first.snapshotActor(d, 'r')
    const steps = Array.from({ length: 100 }, (_, i) => ({ input: { add: i * 7 }, now: 1_700_000_000_000 + i * 1000, seed: i * 31 + 5 }))
    const run = async (ex: WasmActivityExecutor) => {
      const outs: string[] = []
      const snaps: string[] = []
      for (const s of steps) {
        outs.push(JSON.stringify(await ex.execute(d, s.input, { actorId: 'r', now: s.now, seed: s.seed })))
        snaps.push((await ex.snapshotActor(d, 'r')).toString('base64'))
      }
      return { outs, snaps }
    }
    const original = await run(first)
    const replayer = new WasmActivityExecutor(store)
    await replayer.restoreActor(d, 'r', start)
    const replayed = await run(replayer)
    expect(replayed.outs).toEqual(original.outs)
    expect(replayed.snaps).toEqual(original.snaps)
    // The clock and randomness really came from the options.
    expect(JSON.parse(original.outs[3]).now).toBe(1_700_000_003_000)
    expect(new Set(original.outs.map((o) => JSON.parse(o).random)).size).toBeGreaterThan(90)
    // Without deterministic, the host's clock shows through.
    const live = await new WasmActivityExecutor(store).execute(def('replay'), { add: 0 }, { now: 5 })
    expect(live.now).toBeGreaterThan(1_700_000_000_000)
  })
})

describe('heartbeats (loom.progress)', () => {
  async function progressExecutor() {
    const store = new MemoryBlobStore()
    await store.upload('progress.wasm', guest('capabilities/progress'))
    return new WasmActivityExecutor(store)
  }

  it('reach onProgress parsed, rate-limited, the last one always', async () => {
    const ex = await progressExecutor()
    const seen: any[] = []
    await ex.execute(def('progress'), { steps: 5000, every: 1 }, { onProgress: (d: any) => seen.push(d) })
    await new Promise((r) => setTimeout(r, 50))
    expect(seen.length).toBeGreaterThan(0)
    expect(seen.length).toBeLessThan(5000)
    expect(seen[seen.length - 1]).toEqual({ done: 5000 })
  })

  it('the last heartbeat reaches onProgress before the call settles, short calls included (review M)', async () => {
    const ex = await progressExecutor()
    for (let round = 0; round < 20; round++) {
      const seen: any[] = []
      await ex.execute(def('progress'), { steps: 3, every: 1 }, { onProgress: (d: any) => seen.push(d) })
      expect(seen.at(-1), `round ${round}`).toEqual({ done: 3 })
      // Nothing older arrives after it.
      await new Promise((r) => setTimeout(r, 5))
      expect(seen.at(-1)).toEqual({ done: 3 })
    }
  })

  it('a TIMEOUT or CANCELLED error carries the last heartbeat', async () => {
    const ex = await progressExecutor()
    const t = await failure(ex.execute(def('progress', { limits: { maxExecutionMs: 200 } }), { steps: 30, every: 10, hang: true }))
    expect(t.code).toBe('TIMEOUT')
    expect(t.lastProgress).toEqual({ done: 30 })
    const ac = new AbortController()
    setTimeout(() => ac.abort(), 100)
    const c = await failure(ex.execute(def('progress'), { steps: 20, every: 20, hang: true }, { signal: ac.signal }))
    expect(c.code).toBe('CANCELLED')
    expect(c.lastProgress).toEqual({ done: 20 })
  })
})
