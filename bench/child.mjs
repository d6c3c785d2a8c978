// Measurements that need a fresh process: cold start, and memory per live actor.
// Usage: node bench/child.mjs cold <native|v8> <module> [cacheDir [sha256 pin]]
//        node bench/child.mjs cold-next <native|v8> <module>   (its first call after counter-actor's)
//        node bench/child.mjs precompile native <module> <cacheDir>
//        node --expose-gc bench/child.mjs actors <native|v8> <count>
//        node bench/child.mjs tierup-actor native
import { readFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const require = createRequire(import.meta.url)
const [mode, engine, arg, cacheDir, pin] = process.argv.slice(2)

/** Proportional set size in bytes: a page mapped N times counts 1/N each time. RSS counts a
 * page of a module's shared copy-on-write memory image once per instance that maps it. */
function pss() {
  return Number(/^Pss:\s+(\d+) kB/m.exec(readFileSync('/proc/self/smaps_rollup', 'utf8'))[1]) * 1024
}

function store(names) {
  // Read when asked, as a blob store downloads: a call that needs no download reads nothing.
  const known = new Set(names.map((n) => `${n}.wasm`))
  return { download: async (p) => (known.has(p) ? readFileSync(join(root, 'build', p)) : undefined) }
}

/** Loads the executor's module, as a user's first import of it does, and makes one. Both sides
 * load theirs here, inside the cold rows' clocks: this addon (CommonJS, as `require` loads the
 * package entry) and V8's executor module (ESM, as the bench's copy of Loom's TS class is). */
async function executor(names, options) {
  if (engine === 'v8') {
    const { V8Executor } = await import('./v8-executor.mjs')
    return new V8Executor(store(names))
  }
  const { WasmActivityExecutor } = require(root) // the package entry, as users load it
  return new WasmActivityExecutor(store(names), options)
}

if (mode === 'precompile') {
  const ex = await executor([arg], { cacheDir })
  await ex.precompile({ name: arg, version: '1', wasmBlobPath: `${arg}.wasm` })
  console.log(JSON.stringify({ ms: 0 }))
} else if (mode === 'cold') {
  const t0 = performance.now()
  const ex = await executor([arg], cacheDir ? { cacheDir } : undefined)
  // The breakdown: loading the addon and making the executor, then the first call (download,
  // compile or artifact load, instantiate, run).
  const load = performance.now() - t0
  const input = arg === 'mortgage' ? { principal: 1e5, annualRate: 5, years: 1 } : { message: 'cold', times: 1 }
  await ex.execute({ name: arg, version: '1', wasmBlobPath: `${arg}.wasm`, ...(pin ? { sha256: pin } : {}) }, input)
  const ms = performance.now() - t0
  console.log(JSON.stringify({ ms, load, call: ms - load }))
} else if (mode === 'cold-next') {
  // A worker starting with several activities: the first call of a second new module, while the
  // first one's optimized code compiles in the background (V8: its lazy compile of the second).
  const ex = await executor(['counter-actor', arg])
  await ex.execute({ name: 'counter-actor', version: '1', wasmBlobPath: 'counter-actor.wasm' }, { action: 'get' })
  // Whether the first one's optimized code had landed when the second call started (it should not have).
  const landed = engine === 'native' ? ex.cacheStats().tierUps : 0
  const t0 = performance.now()
  await ex.execute({ name: arg, version: '1', wasmBlobPath: `${arg}.wasm` }, { principal: 1e5, annualRate: 5, years: 1 })
  console.log(JSON.stringify({ ms: performance.now() - t0, landed }))
} else if (mode === 'tierup-actor') {
  // An actor made by the module's first call (on baseline code, while the optimized code
  // compiles) against one made after the tier-up: the first moves to the optimized code.
  const ex = await executor(['mortgage'])
  const def = { name: 'mortgage', version: '1', wasmBlobPath: 'mortgage.wasm' }
  const input = { principal: 1e5, annualRate: 5, years: 30, scenarios: 200 }
  await ex.execute(def, input, { actorId: 'early' })
  const until = performance.now() + 60_000
  while (ex.cacheStats().tierUps === 0 && performance.now() < until) await new Promise((r) => setTimeout(r, 10))
  await ex.execute(def, input, { actorId: 'late' })
  const best = { early: Infinity, late: Infinity }
  for (let round = 0; round < 6; round++) {
    const id = round % 2 ? 'early' : 'late'
    const t = performance.now()
    for (let i = 0; i < 30; i++) await ex.execute(def, input, { actorId: id })
    best[id] = Math.min(best[id], (performance.now() - t) / 30)
  }
  console.log(JSON.stringify({ early: best.early, late: best.late, tierUps: ex.cacheStats().tierUps }))
} else if (mode === 'actors') {
  const count = Number(arg)
  const ex = await executor(['counter-actor'], { maxActors: count + 10 })
  const def = { name: 'counter-actor', version: '1', wasmBlobPath: 'counter-actor.wasm' }
  await ex.execute(def, { action: 'get' }, { actorId: 'warm' })
  globalThis.gc()
  await new Promise((r) => setTimeout(r, 100))
  const before = process.memoryUsage().rss
  const pssBefore = pss()
  for (let i = 0; i < count; i++) await ex.execute(def, { action: 'increment' }, { actorId: `a${i}` })
  globalThis.gc()
  await new Promise((r) => setTimeout(r, 100))
  const after = process.memoryUsage().rss
  const pssAfter = pss()
  // Idle for 2 s: native actors idle for a second give back their fiber stack's pages.
  await new Promise((r) => setTimeout(r, 2000))
  globalThis.gc()
  const afterIdle = process.memoryUsage().rss
  const pssIdle = pss()
  const check = await ex.execute(def, { action: 'get' }, { actorId: 'a0' })
  if (check.count !== 1) throw new Error('actor lost its state')
  const linear = engine === 'v8' ? ex.actors.get('a0').exports.memory.buffer.byteLength : 65536
  console.log(JSON.stringify({
    perActorBytes: (after - before) / count,
    perActorPss: (pssAfter - pssBefore) / count,
    perActorBytesIdle: (afterIdle - before) / count,
    perActorPssIdle: (pssIdle - pssBefore) / count,
    linearBytes: linear,
  }))
}
