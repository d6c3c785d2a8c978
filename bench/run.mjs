// npm run bench: the native executor against a V8 executor doing what Loom's does (done well),
// side by side in one run, alternating rounds, medians reported. Prints a table and writes
// bench/results.md. Not a test: nothing here asserts.
import { execFileSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { cpus, tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { V8Executor } from './v8-executor.mjs'

const here = dirname(fileURLToPath(import.meta.url))
const root = join(here, '..')
const require = createRequire(import.meta.url)
const { WasmActivityExecutor, benchFloor } = require(join(root, 'index.js'))

const QUICK = process.env.BENCH_QUICK === '1'
const ROUNDS = QUICK ? 2 : 5
// Temporary directories (artifact caches, an actor store), removed as the process exits.
const scratchDirs = []
const scratch = (prefix) => {
  const dir = mkdtempSync(join(tmpdir(), prefix))
  scratchDirs.push(dir)
  return dir
}
process.on('exit', () => scratchDirs.forEach((dir) => rmSync(dir, { recursive: true, force: true })))
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]
const def = (name) => ({ name, version: '1', wasmBlobPath: `${name}.wasm` })

const blobs = new Map(
  ['echo', 'counter-actor', 'mortgage'].map((n) => [`${n}.wasm`, readFileSync(join(root, 'build', `${n}.wasm`))]),
)
const store = { download: async (p) => blobs.get(p) }
const native = new WasmActivityExecutor(store, { maxActors: 5000 })
const v8 = new V8Executor(store)

/** Median over rounds of the mean time per call (us) of `n` sequential calls; engines alternate. */
async function sequential(fns, n) {
  const times = fns.map(() => [])
  for (let r = 0; r < ROUNDS; r++) {
    for (const [i, fn] of fns.entries()) {
      const t0 = performance.now()
      for (let k = 0; k < n; k++) await fn(k)
      times[i].push(((performance.now() - t0) * 1000) / n)
    }
  }
  return times.map(median)
}

/** Median over rounds of calls per second with `inFlight` calls outstanding until `total` are done. */
async function throughput(fns, inFlight, total, rounds = ROUNDS) {
  const rates = fns.map(() => [])
  for (let r = 0; r < rounds; r++) {
    for (const [i, fn] of fns.entries()) {
      let started = 0
      const t0 = performance.now()
      const worker = async () => {
        while (started < total) {
          started++
          await fn()
        }
      }
      await Promise.all(Array.from({ length: inFlight }, worker))
      rates[i].push(total / ((performance.now() - t0) / 1000))
    }
  }
  return rates.map(median)
}

/** The delay d such that a moment picked at random in the run waits longer than d 1 % of the time. */
function weightedP99(delays) {
  const total = delays.reduce((a, b) => a + b + 10, 0)
  const over = (d) => delays.reduce((a, g) => a + Math.max(0, g - d), 0) / total
  let lo = 0
  let hi = Math.max(0, ...delays)
  for (let i = 0; i < 50; i++) {
    const mid = (lo + hi) / 2
    if (over(mid) > 0.01) lo = mid
    else hi = mid
  }
  return hi
}

const rows = []
const row = (scenario, unit, nat, peer, floor, higherIsBetter, target) => {
  const ratio = higherIsBetter ? nat / peer : peer / nat
  rows.push({ scenario, unit, native: nat, v8: peer, ratio, floor, target })
  console.error(`  ${scenario}: native ${fmt(nat)} ${unit}, V8 ${fmt(peer)} ${unit}`)
}
/** A row with no V8 counterpart (V8 cannot snapshot an instance). */
const own = (scenario, unit, nat, target = '') => {
  rows.push({ scenario, unit, native: nat, v8: undefined, ratio: undefined, floor: undefined, target })
  console.error(`  ${scenario}: ${fmt(nat)} ${unit}`)
}
const fmt = (x) => (x === undefined || x === null ? '' : x >= 100 ? x.toFixed(0) : x >= 10 ? x.toFixed(1) : x.toFixed(2))

async function main() {
  // BENCH_ONLY=host|abi|durable|hostile: one section, printed, results.md left alone.
  const hostileRows = async () => {
    const gap = await hostileGap()
    row('event-loop gap max, hostile guests', 'ms', gap.native, gap.v8, undefined, false, 'native <= 10 ms')
  }
  const only = { host: hostRows, abi: abiRows, durable: durableRows, hostile: hostileRows }[process.env.BENCH_ONLY ?? '']
  if (only) {
    await only()
    for (const r of rows) console.log(`| ${r.scenario} | ${r.unit} | ${fmt(r.native)} | ${fmt(r.v8)} |`)
    return
  }
  const small = { message: 'hello', times: 2 }
  // Steady state is measured: optimized code (precompile waits for the tier-up), then warm-up.
  for (const n of ['echo', 'counter-actor', 'mortgage']) await native.precompile(def(n))
  // Warm both: compile, first instance, JIT.
  for (let i = 0; i < 200; i++) {
    await native.execute(def('echo'), small)
    await v8.execute(def('echo'), small)
    await benchFloor()
  }

  console.error('1. warm sequential latency')
  const [n1, v1, f1] = await sequential(
    [() => native.execute(def('echo'), small), () => v8.execute(def('echo'), small), () => benchFloor()],
    QUICK ? 500 : 2000,
  )
  row('warm sequential echo', 'us/call', n1, v1, f1, false, 'V8/native >= 2x; native <= 2x floor')

  console.error('2. throughput')
  for (const k of [1, 16, 256]) {
    const total = QUICK ? 1000 : 4000
    const [n, v, f] = await throughput(
      [() => native.execute(def('echo'), small), () => v8.execute(def('echo'), small), () => benchFloor()],
      k,
      total,
    )
    row(`throughput, ${k} in flight`, 'calls/s', n, v, f, true, k === 256 ? 'native/V8 >= 3x' : '')
  }

  console.error('3. payload scaling')
  for (const [label, size, n] of [['1 KB', 1024, 500], ['100 KB', 100 * 1024, 100], ['1 MB', 1024 * 1024, 20]]) {
    const input = { message: 'x'.repeat(size), times: 1 }
    const [nat, peer] = await sequential(
      [() => native.execute(def('echo'), input), () => v8.execute(def('echo'), input)],
      QUICK ? Math.ceil(n / 4) : n,
    )
    row(`payload ${label} in and out`, 'us/call', nat, peer, undefined, false, label === '1 KB' ? '' : 'V8/native >= 1x')
  }
  for (const [label, size, total] of [['100 KB', 100 * 1024, 200], ['1 MB', 1024 * 1024, 24]]) {
    const input = { message: 'x'.repeat(size), times: 1 }
    const [nat, peer] = await throughput(
      [() => native.execute(def('echo'), input), () => v8.execute(def('echo'), input)],
      8,
      QUICK ? Math.ceil(total / 4) : total,
    )
    row(`payload ${label}, 8 in flight`, 'calls/s', nat, peer, undefined, true, 'native/V8 >= 1.6x')
  }

  console.error('4-5. CPU-bound guest, 8 in flight; event-loop delay meanwhile')
  // Calibrate the mortgage guest to ~25 ms per call on V8, warm: the first call also compiles
  // (a first call over 20 ms, on a busy machine, used to end the calibration at 100 scenarios, and
  // the row then measured 2 ms calls).
  await v8.execute(def('mortgage'), { principal: 3e5, annualRate: 6.5, years: 30, cpr: 6, cdr: 0.5, scenarios: 100 })
  let scenarios = 100
  for (;;) {
    const t0 = performance.now()
    await v8.execute(def('mortgage'), { principal: 3e5, annualRate: 6.5, years: 30, cpr: 6, cdr: 0.5, scenarios })
    const ms = performance.now() - t0
    if (ms > 20 || scenarios > 1e6) break
    scenarios = Math.ceil(scenarios * Math.max(1.5, 25 / Math.max(ms, 0.1)))
  }
  const heavy = { principal: 3e5, annualRate: 6.5, years: 30, cpr: 6, cdr: 0.5, scenarios }
  // Both engines warm (V8 ran the calibration; the native executor compiles its optimizing tier
  // ahead), and rounds alternate between them, as in every other row: whatever the rows before
  // left behind (V8's concurrent GC of their payloads, say) weighs on both alike.
  await native.precompile(def('mortgage'))
  await native.execute(def('mortgage'), heavy)
  const gaps = { native: [], v8: [] }
  const rates = { native: [], v8: [] }
  for (let r = 0; r < ROUNDS; r++) {
    for (const [name, ex] of [['native', native], ['v8', v8]]) {
      // A 10 ms timer's gaps. monitorEventLoopDelay cannot sample while the loop is blocked (a
      // blocked second is one sample), so the p99 here is time-weighted: the delay a timer due at
      // a random moment of the run waits, 99 % of the time.
      let last = performance.now()
      const timer = setInterval(() => {
        const now = performance.now()
        gaps[name].push(now - last)
        last = now
      }, 10)
      await new Promise((r) => setTimeout(r, 30))
      const [rate] = await throughput([() => ex.execute(def('mortgage'), heavy)], 8, QUICK ? 16 : 48, 1)
      await new Promise((r) => setTimeout(r, 30)) // a loop blocked until now records its gap here
      clearInterval(timer)
      rates[name].push(rate)
    }
  }
  const delay = (g) => ({ max: Math.max(...g) - 10, p99: weightedP99(g.map((x) => Math.max(0, x - 10))) })
  const delays = { native: delay(gaps.native), v8: delay(gaps.v8) }
  const cpuRates = [median(rates.native), median(rates.v8)]
  row(`CPU-bound (${scenarios} scenarios/call), 8 in flight`, 'calls/s', cpuRates[0], cpuRates[1], undefined, true, 'native/V8 >= 1.6x')
  row('event-loop delay p99 (time-weighted) during CPU-bound calls', 'ms', delays.native.p99, delays.v8.p99, undefined, false, 'native <= 5 ms')
  row('event-loop delay max during CPU-bound calls', 'ms', delays.native.max, delays.v8.max, undefined, false, '')

  console.error('6. cold start (fresh process: download + compile + instantiate + call)')
  const child = (...args) => JSON.parse(execFileSync(process.execPath, [join(here, 'child.mjs'), ...args], { encoding: 'utf8' }))
  // Median over fresh processes of the whole (ms) and of its parts (load, call).
  const colds = (engine, ...rest) => Array.from({ length: QUICK ? 1 : 3 }, () => child('cold', engine, 'mortgage', ...rest))
  const part = (runs, key) => median(runs.map((r) => r[key]))
  // Each side's clock starts before it loads its executor's module (the addon; V8's ESM module).
  const nativeCold = colds('native')
  const v8Cold = colds('v8')
  row('cold start, first call', 'ms', part(nativeCold, 'ms'), part(v8Cold, 'ms'), undefined, false, '')
  row('cold start, first call: loading the executor module, making the executor', 'ms', part(nativeCold, 'load'), part(v8Cold, 'load'), undefined, false, '')
  row('cold start, first call: the call (download, compile, instantiate, run)', 'ms', part(nativeCold, 'call'), part(v8Cold, 'call'), undefined, false, '')
  const nexts = (engine) => Array.from({ length: QUICK ? 1 : 3 }, () => child('cold-next', engine, 'mortgage'))
  row("cold start, a second new module's first call (the first tiering up)", 'ms', part(nexts('native'), 'ms'), part(nexts('v8'), 'ms'), undefined, false, '')
  const cacheDir = scratch('loom-bench-cache-')
  child('cold', 'native', 'mortgage', cacheDir)
  const warmCold = colds('native', cacheDir)
  row('cold start, warm artifact cache (cacheDir)', 'ms', part(warmCold, 'ms'), part(colds('v8'), 'ms'), undefined, false, '')
  own('cold start, warm cacheDir: loading the addon, making the executor', 'ms', part(warmCold, 'load'))
  own('cold start, warm cacheDir: the call (download, artifact load, instantiate, run)', 'ms', part(warmCold, 'call'))
  // An executor per test, as Loom's test files make them: a new executor's first call of a module
  // another executor of the process holds (V8: its process-wide cache of compiled wasm). `native`
  // and `v8` hold mortgage's optimized code by now; each new executor is left to the GC.
  const newExecutor = (make) => async () => {
    await make().execute(def('mortgage'), { principal: 1e5, annualRate: 5, years: 1 })
  }
  const [newNative, newV8] = await sequential([newExecutor(() => new WasmActivityExecutor(store)), newExecutor(() => new V8Executor(store))], 20)
  row("a new executor's first call of a module the process holds (an executor per test)", 'us', newNative, newV8, undefined, false, '')
  const { existsSync } = await import('node:fs')
  if (existsSync(join(root, 'build', 'js', 'echo.wasm'))) {
    // The 12 MB JavaScript component (componentize-js): no V8 column (V8 runs no components).
    // Median of fresh processes, as the other cold rows (one run of the first result varied by 10 %).
    const componentCold = (...rest) => median(Array.from({ length: QUICK ? 1 : 3 }, () => child('cold', 'native', 'js/echo', ...rest).ms))
    own('cold start, 12 MB JS component, first result (Winch tier)', 'ms', componentCold(), '<= 1000 ms')
    const componentCache = scratch('loom-bench-component-')
    child('precompile', 'native', 'js/echo', componentCache)
    own('cold start, 12 MB JS component, warm cacheDir', 'ms', componentCold(componentCache), '<= 50 ms')
    // With a sha256 pin in the definition, the artifact is that module compiled: no download.
    const pin = createHash('sha256').update(readFileSync(join(root, 'build', 'js', 'echo.wasm'))).digest('hex')
    own('cold start, 12 MB JS component, warm cacheDir, sha256-pinned', 'ms', componentCold(componentCache, pin), '<= 50 ms')
  }

  console.error('7. actors')
  const [na, va] = await sequential(
    [(k) => native.execute(def('counter-actor'), { action: 'increment' }, { actorId: `b${k % 8}` }),
     (k) => v8.execute(def('counter-actor'), { action: 'increment' }, { actorId: `b${k % 8}` })],
    QUICK ? 500 : 2000,
  )
  row('actor call (kept instance)', 'us/call', na, va, undefined, false, '')
  const handles = Array.from({ length: 8 }, (_, i) => native.actor(def('counter-actor'), `h${i}`))
  const [nh, vh] = await sequential(
    [(k) => handles[k % 8].execute({ action: 'increment' }),
     (k) => v8.execute(def('counter-actor'), { action: 'increment' }, { actorId: `h${k % 8}` })],
    QUICK ? 500 : 2000,
  )
  row('actor call through a handle (executor.actor)', 'us/call', nh, vh, undefined, false, 'native/V8 >= 1.0x')
  // A fresh process: an actor made by a module's first call runs baseline code until the tier-up.
  const tier = JSON.parse(execFileSync(process.execPath, [join(here, 'child.mjs'), 'tierup-actor', 'native'], { encoding: 'utf8' }))
  own('CPU-bound actor call (mortgage, 200 scenarios), actor made during the tier-up', 'ms/call', tier.early, 'as one made after it')
  own('CPU-bound actor call (mortgage, 200 scenarios), actor made after the tier-up', 'ms/call', tier.late)
  const [plain, tx] = await sequential(
    [(k) => native.execute(def('counter-actor'), { action: 'increment' }, { actorId: `p${k % 8}` }),
     (k) => native.execute(def('counter-actor'), { action: 'increment' }, { actorId: `t${k % 8}`, transactional: true })],
    QUICK ? 500 : 2000,
  )
  row('actor call, transactional (vs the same call not transactional)', 'us/call', tx, plain, undefined, false, 'transactional <= 2x plain')
  const mem = (engine) => JSON.parse(execFileSync(process.execPath, ['--expose-gc', join(here, 'child.mjs'), 'actors', engine, '1000'], { encoding: 'utf8' }))
  const nm = mem('native')
  const vm = mem('v8')
  row('memory per idle actor (RSS delta / 1000)', 'KiB', nm.perActorBytes / 1024, vm.perActorBytes / 1024, undefined, false,
    `native <= 1.2x linear memory (${nm.linearBytes / 1024} KiB)`)
  row('memory per idle actor (PSS delta / 1000)', 'KiB', nm.perActorPss / 1024, vm.perActorPss / 1024, undefined, false, 'native <= V8')
  row('memory per actor idle 2 s (PSS delta / 1000; fiber stacks given back)', 'KiB', nm.perActorPssIdle / 1024, vm.perActorPssIdle / 1024, undefined, false, 'native <= V8')

  console.error('10. guest ABIs: warm calls; Extism plugins against Extism\'s own JS SDK')
  await abiRows()

  console.error('11. host functions: round trips, sync and async; Extism plugins against Extism\'s JS SDK')
  await hostRows()

  console.error('9. durable actors: snapshots, restores, persistence')
  await durableRows()

  console.error('8. worst event-loop gap while hostile guests run')
  const gap = await hostileGap()
  row('event-loop gap max, hostile guests (fill 250 MB, 250 MB initial memory, spin, bombs, WASI sleep)', 'ms', gap.native, gap.v8, undefined, false, 'native <= 10 ms')

  const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'))
  const header =
    `Machine: ${cpus().length} x ${cpus()[0]?.model ?? 'cpu'}; Node ${process.version}; ` +
    `loom-wasm-executor ${pkg.version} (wasmtime 48); ${new Date().toISOString().slice(0, 10)}${QUICK ? ' (BENCH_QUICK)' : ''}`
  const lines = [
    '| scenario | unit | native | V8 | ratio (better = higher) | floor | target |',
    '|---|---|---:|---:|---:|---:|---|',
    ...rows.map((r) => `| ${r.scenario} | ${r.unit} | ${fmt(r.native)} | ${fmt(r.v8)} | ${r.ratio === undefined ? '' : `${r.ratio.toFixed(2)}x`} | ${fmt(r.floor)} | ${r.target} |`),
  ]
  const md = `# Benchmark results\n\n${header}\n\nReproduce: \`npm run bench\` (about 2 minutes). Ratio: V8/native for times, native/V8 for rates. ` +
    `Floor: an empty async napi call (\`benchFloor\`), one hop to the Rust runtime and back.\n\n${lines.join('\n')}\n`
  writeFileSync(join(here, 'results.md'), md)
  console.log(`\n${header}\n\n${lines.join('\n')}\n\nwritten to bench/results.md`)
}

/** A warm echo call per ABI; the Extism plugin also through Extism's JS SDK (the V8 column). */
async function abiRows() {
  const files = { extism: 'c/plugin.wasm', 'wasi-command (C)': 'c/command.wasm', 'wasi-command (Rust)': 'rust/command.wasm', component: 'js/echo.wasm' }
  const { existsSync } = await import('node:fs')
  if (!Object.values(files).every((f) => existsSync(join(root, 'build', f)))) {
    console.error('  (skipped: run npm run guests:polyglot first)')
    return
  }
  const abiStore = { download: async (p) => readFileSync(join(root, 'build', p)) }
  const ex = new WasmActivityExecutor(abiStore)
  const input = { message: 'hello', times: 2 }
  const n = QUICK ? 200 : 1000
  const createPlugin = (await import('@extism/extism')).default
  const sdk = await createPlugin({ wasm: [{ data: readFileSync(join(root, 'build', files.extism)) }] }, { useWasi: false })
  for (const [abi, file] of Object.entries(files)) {
    const d = { name: file, version: '1', wasmBlobPath: file }
    await ex.precompile(d)
    await ex.execute(d, input)
    if (abi === 'extism') {
      const text = JSON.stringify(input)
      const [nat, peer] = await sequential([() => ex.execute(d, input), async () => JSON.parse((await sdk.call('execute', text)).text())], n)
      row('warm call, Extism plugin (C) — V8 column: Extism JS SDK', 'us/call', nat, peer, undefined, false, '')
    } else {
      const [nat] = await sequential([() => ex.execute(d, input)], abi === 'component' ? Math.ceil(n / 10) : n)
      own(`warm call, ${abi}`, 'us/call', nat)
    }
  }
  await sdk.close()
}

/** A host function round trip from a guest and back, sync and async; the Extism plugin also through
 * Extism's JS SDK (its async host functions need `runInWorker`: a worker thread blocked on Atomics). */
async function hostRows() {
  const { existsSync } = await import('node:fs')
  const files = { plugin: 'c/host-plugin.wasm', lookup: 'host/lookup.wasm' }
  if (!Object.values(files).every((f) => existsSync(join(root, 'build', f)))) {
    console.error('  (skipped: run npm run guests:polyglot and asbuild:test-guests first)')
    return
  }
  const hostStore = { download: async (p) => readFileSync(join(root, 'build', p)) }
  const sync = new WasmActivityExecutor(hostStore, { hostFunctions: { 'crm.lookup': (x) => x } })
  const async_ = new WasmActivityExecutor(hostStore, { hostFunctions: { 'crm.lookup': async (x) => x } })
  const caps = { capabilities: { hostFunctions: ['crm.lookup'] } }
  const plugin = { name: 'p', version: '1', wasmBlobPath: files.plugin, entrypoint: 'lookup', ...caps }
  const as = { name: 'l', version: '1', wasmBlobPath: files.lookup, ...caps }
  const input = { id: 7, name: 'Ada' }
  const text = JSON.stringify(input)
  const n = QUICK ? 200 : 1000
  const createPlugin = (await import('@extism/extism')).default
  const wasm = readFileSync(join(root, 'build', files.plugin))
  const fns = (f) => ({ crm: { lookup: f } })
  const sdkSync = await createPlugin({ wasm: [{ data: wasm }] }, {
    useWasi: false,
    functions: fns((ctx, off) => ctx.store(ctx.read(off).text())),
  })
  for (const ex of [sync, async_]) {
    await ex.precompile(plugin)
    await ex.precompile(as)
    await ex.execute(plugin, input)
    await ex.execute({ ...as }, { arg: input })
  }
  const [ns, ps] = await sequential([() => sync.execute(plugin, input), async () => JSON.parse((await sdkSync.call('lookup', text)).text())], n)
  row('host function round trip, sync, Extism plugin — V8 column: Extism JS SDK', 'us/call', ns, ps, undefined, false, '')
  await sdkSync.close()
  let sdkAsync
  try {
    sdkAsync = await createPlugin({ wasm: [{ data: wasm }] }, {
      useWasi: false,
      runInWorker: true,
      functions: fns(async (ctx, off) => ctx.store(ctx.read(off).text())),
    })
    await sdkAsync.call('lookup', text)
  } catch (e) {
    console.error(`  (Extism JS SDK async host functions unavailable here: ${e.message})`)
    sdkAsync = undefined
  }
  if (sdkAsync) {
    const [na, pa] = await sequential([() => async_.execute(plugin, input), async () => JSON.parse((await sdkAsync.call('lookup', text)).text())], n)
    row('host function round trip, async, Extism plugin — V8 column: Extism JS SDK (runInWorker)', 'us/call', na, pa, undefined, false, '')
    await sdkAsync.close()
  } else {
    const [na] = await sequential([() => async_.execute(plugin, input)], n)
    own('host function round trip, async, Extism plugin', 'us/call', na)
  }
  const [as1] = await sequential([() => sync.execute(as, { arg: input })], n)
  own('host function round trip, sync, AssemblyScript', 'us/call', as1)
  const [as2] = await sequential([() => async_.execute(as, { arg: input })], n)
  own('host function round trip, async, AssemblyScript', 'us/call', as2)
  const waits = new WasmActivityExecutor(hostStore, {
    maxConcurrency: 2,
    hostFunctions: { 'crm.lookup': (x) => new Promise((r) => setTimeout(() => r(x), 50)) },
  })
  await waits.precompile(as)
  await waits.execute(as, { arg: 0 })
  const times = []
  for (let r = 0; r < ROUNDS; r++) {
    const t0 = performance.now()
    await Promise.all(Array.from({ length: 1000 }, (_, i) => waits.execute(as, { arg: i })))
    times.push(performance.now() - t0)
  }
  own('1000 concurrent calls each awaiting a 50 ms host Promise, maxConcurrency 2', 'ms', median(times), 'well under 1000 ms')
}

/** Snapshot size and time, restore time, and what persist: 'sync' adds to an actor call. */
async function durableRows() {
  const { randomBytes } = await import('node:crypto')
  const { ObjectBlobStore } = require(join(root, 'index.js'))
  const n = QUICK ? 20 : 100
  const timeOf = async (fn) => {
    const ts = []
    for (let i = 0; i < n; i++) {
      const t0 = performance.now()
      await fn()
      ts.push((performance.now() - t0) * 1000)
    }
    return median(ts)
  }
  const counter = def('counter-actor')
  for (let i = 0; i < 10; i++) await native.execute(counter, { action: 'increment' }, { actorId: 'snap' })
  const small = await native.snapshotActor(counter, 'snap')
  own(`snapshot, counter actor (${small.length} bytes)`, 'us', await timeOf(() => native.snapshotActor(counter, 'snap')))
  own('restore, counter actor', 'us', await timeOf(() => native.restoreActor(counter, 'snap', small)))
  // An actor holding 1 MB of state: a 512 Ki-character random string, kept (UTF-16) by the stub runtime.
  const message = randomBytes(384 * 1024).toString('base64')
  await native.execute(def('echo'), { message, times: 1 }, { actorId: 'big' })
  const big = await native.snapshotActor(def('echo'), 'big')
  own(`snapshot, actor with 1 MB of state (${big.length} bytes)`, 'us', await timeOf(() => native.snapshotActor(def('echo'), 'big')))
  own('restore, actor with 1 MB of state', 'us', await timeOf(() => native.restoreActor(def('echo'), 'big', big)))
  // persist: 'sync' on a file store, against the same actor call without a store.
  const dir = scratch('loom-bench-actors-')
  const durable = new WasmActivityExecutor(store, { actorStore: new ObjectBlobStore(`file://${dir}`) })
  const [withStore, without] = await sequential(
    [(k) => durable.execute(counter, { action: 'increment' }, { actorId: `d${k % 8}` }),
     (k) => native.execute(counter, { action: 'increment' }, { actorId: `n${k % 8}` })],
    QUICK ? 200 : 1000,
  )
  own("actor call with persist: 'sync' on a file store (fsync per call)", 'us/call', withStore, `plain: ${fmt(without)} us`)
}

/** Hand-written hostile guests (WAT, built with wabt) on the AssemblyScript ABI. */
async function hostileGuests() {
  const wabt = await require('wabt')()
  const build = (text) => {
    const m = wabt.parseWat('g.wat', text, { bulk_memory: true })
    try {
      return Buffer.from(m.toBinary({}).buffer)
    } finally {
      m.destroy()
    }
  }
  const prelude = `(import "env" "abort" (func $abort (param i32 i32 i32 i32)))
    (memory (export "memory") 1) (global $h (mut i32) (i32.const 4096))
    (func (export "__new") (param i32 i32) (result i32) (local $p i32)
      (local.set $p (i32.add (global.get $h) (i32.const 16)))
      (i32.store (i32.sub (local.get $p) (i32.const 4)) (local.get 0))
      (global.set $h (i32.add (local.get $p) (local.get 0))) (local.get $p))
    (func (export "__pin") (param i32) (result i32) (local.get 0)) (func (export "__unpin") (param i32))
    (data (i32.const 32) "\\02\\00\\00\\00\\31\\00")`
  const guest = (body, imports = '') => build(`(module ${imports} ${prelude} ${body})`)
  return {
    fill: guest(`(func (export "execute") (param i32) (result i32)
      (drop (memory.grow (i32.const 4000))) (memory.fill (i32.const 65536) (i32.const 7) (i32.const 262144000)) (i32.const 36))`),
    initial: build(`(module (memory (export "memory") 4000)
      (func (export "__new") (param i32 i32) (result i32) (i32.const 64))
      (func (export "__pin") (param i32) (result i32) (local.get 0)) (func (export "__unpin") (param i32))
      (func (export "execute") (param i32) (result i32) (memory.fill (i32.const 0) (i32.const 1) (i32.const 262144000))
        (i32.store (i32.const 32) (i32.const 2)) (i32.store16 (i32.const 36) (i32.const 49)) (i32.const 36)))`),
    spin: guest(`(func (export "execute") (param i32) (result i32) (loop $l (br $l)) (i32.const 36))`),
    bomb: guest(`(func (export "execute") (param i32) (result i32) (loop $l (br_if $l (i32.ne (memory.grow (i32.const 16)) (i32.const -1)))) (i32.const 36))`),
    recursion: guest(`(func $r (export "execute") (param i32) (result i32) (call $r (local.get 0)))`),
    sleep: guest(`(func (export "execute") (param i32) (result i32)
        (i32.store8 (i32.const 1032) (i32.const 0)) (i32.store (i32.const 1040) (i32.const 1))
        (i64.store (i32.const 1048) (i64.const 50000000))
        (drop (call $poll (i32.const 1024) (i32.const 2048) (i32.const 1) (i32.const 3072))) (i32.const 36))`,
      `(import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))`),
  }
}

/** The largest gap of a 1 ms timer while hostile guests are called over and over (each cached first). */
async function hostileGap() {
  const guests = await hostileGuests()
  const hostileBlobs = new Map([...blobs, ...Object.entries(guests).map(([k, v]) => [`${k}.wasm`, v])])
  const hostileStore = { download: async (p) => hostileBlobs.get(p) }
  const defs = Object.keys(guests).map((name) => ({
    ...def(name),
    limits: { maxExecutionMs: 100, maxMemoryMB: 256 },
    ...(name === 'sleep' ? { capabilities: { env: ['NONE'] } } : {}),
  }))
  const measure = async (ex, runnable) => {
    for (const d of runnable) await ex.execute(d, {}).catch(() => {})
    let last = performance.now()
    let worst = 0
    const timer = setInterval(() => {
      const now = performance.now()
      worst = Math.max(worst, now - last - 1)
      last = now
    }, 1)
    const until = performance.now() + (QUICK ? 1000 : 3000)
    while (performance.now() < until) {
      await Promise.allSettled([...runnable.map((d) => ex.execute(d, {})), ex.execute(def('echo'), { message: 'x' })])
      // Let the loop turn between rounds (a round that never yields would hide its own gap).
      await new Promise((r) => setImmediate(r))
      worst = Math.max(worst, performance.now() - last - 1)
    }
    clearInterval(timer)
    return worst
  }
  // The sleeping guest is granted WASI through a variable the executor offers.
  const nativeEx = new WasmActivityExecutor(hostileStore, { env: ['NONE'] })
  const nativeGap = await measure(nativeEx, defs)
  // V8 cannot interrupt a spinning guest or a sleeping one, nor cap memory; give it the ones that end by themselves.
  const v8Ex = new V8Executor(hostileStore)
  const v8Gap = await measure(v8Ex, defs.filter((d) => ['fill', 'initial', 'recursion'].includes(d.name)))
  return { native: nativeGap, v8: v8Gap }
}

main().catch((e) => {
  console.error(e)
  process.exit(1)
})
