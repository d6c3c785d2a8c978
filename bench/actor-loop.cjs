// Sequential actor calls, then fresh-instance calls, on the counter guest: the quick probe used
// to measure the hand-off costs (`node bench/actor-loop.cjs`; under `perf record -g` for profiles).
const { WasmActivityExecutor } = require('../index.js')
const fs = require('fs')
const bytes = fs.readFileSync(require('node:path').join(__dirname, '..', 'build', 'counter-actor.wasm'))
const ex = new WasmActivityExecutor({ download: async () => bytes })
const def = { name: 'c', version: '1', wasmBlobPath: 'c.wasm' }
;(async () => {
  const n = 20000
  const t0 = performance.now()
  for (let i = 0; i < n; i++) await ex.execute(def, { action: 'increment' }, { actorId: 'a' })
  const t1 = performance.now()
  console.log('actor us/call', ((t1 - t0) * 1000 / n).toFixed(1))
  const t2 = performance.now()
  for (let i = 0; i < n; i++) await ex.execute(def, { action: 'increment' })
  console.log('fresh (inline) us/call', ((performance.now() - t2) * 1000 / n).toFixed(1))
})()
