// npm run soak [-- calls]: a long run (default 1,000,000 calls, not in CI) mixing fresh calls,
// actors (500 of them), failing calls and clearCache, printing the process's RSS every 100,000
// calls. With a collecting runtime for the actors, RSS should be flat after warm-up.
import { readFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const { WasmActivityExecutor } = createRequire(import.meta.url)(join(root, 'index.js'))
const total = Number(process.argv[2] ?? 1_000_000)
const blobs = new Map(['echo', 'counter-actor', 'hostile/trap', 'hostile/abort'].map((n) => [`${n}.wasm`, readFileSync(join(root, 'build', `${n}.wasm`))]))
const ex = new WasmActivityExecutor({ download: async (p) => blobs.get(p) }, { maxActors: 1000 })
const def = (name, extra = {}) => ({ name, version: '1', wasmBlobPath: `${name}.wasm`, ...extra })
const mb = (b) => (b / 1024 / 1024).toFixed(1)

const codes = new Map()
const t0 = performance.now()
console.log('| calls | RSS MiB | heap MiB | actors | modules | outcomes so far |')
console.log('|---:|---:|---:|---:|---:|---|')
for (let i = 1; i <= total; i++) {
  const r = i % 10
  let p
  if (r < 4) p = ex.execute(def('echo'), { message: `m${i}`, times: 1 })
  else if (r < 8) p = ex.execute(def('counter-actor'), { action: 'increment' }, { actorId: `a${i % 500}`, transactional: i % 3 === 0 })
  else if (r === 8) p = ex.execute(def('counter-actor'), { action: 'fail' }, { actorId: `a${i % 500}`, transactional: true })
  else p = ex.execute(def(i % 20 === 9 ? 'hostile/trap' : 'hostile/abort'), {})
  try {
    await p
    codes.set('ok', (codes.get('ok') ?? 0) + 1)
  } catch (e) {
    codes.set(e.code, (codes.get(e.code) ?? 0) + 1)
  }
  if (i % 50_000 === 0) ex.clearCache()
  if (i % 100_000 === 0) {
    const m = process.memoryUsage()
    const s = ex.cacheStats()
    console.log(`| ${i} | ${mb(m.rss)} | ${mb(m.heapUsed)} | ${s.actors} | ${s.modules} | ${[...codes].map(([k, v]) => `${k} ${v}`).join(', ')} |`)
  }
}
console.log(`\n${total} calls in ${((performance.now() - t0) / 1000).toFixed(1)} s`)
