// Sequential calls of the counter guest, one way at a time, for A/B runs of the call path:
// `node bench/exec-loop.mjs <calls> <exec|plain|handle> [guest]` prints the best of 3 rounds in
// us/call; `guest` is a file under build/ (default: the counter; another gets the echo's input).
//   exec:   execute(definition, input, { actorId }) over 8 actors, a fresh definition each call
//   plain:  execute(definition, input), a fresh instance each call
//   handle: an actor handle's execute(input) over 8 handles
import { readFileSync } from 'node:fs'
import { createRequire } from 'node:module'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const { WasmActivityExecutor } = createRequire(import.meta.url)(root)
const guest = process.argv[4] ?? 'counter-actor.wasm'
const bytes = readFileSync(join(root, 'build', guest))
const ex = new WasmActivityExecutor({ download: async () => bytes })
const def = (name) => ({ name, version: '1', wasmBlobPath: `${name}.wasm` })
await ex.precompile(def('c'))
const handles = Array.from({ length: 8 }, (_, i) => ex.actor(def('c'), `h${i}`))
const n = Number(process.argv[2] ?? 20000)
const mode = process.argv[3] ?? 'exec'
const input = guest === 'counter-actor.wasm' ? { action: 'increment' } : { message: 'hello', times: 2 }
let best = Infinity
for (let round = 0; round < 3; round++) {
  const t0 = performance.now()
  if (mode === 'exec') for (let i = 0; i < n; i++) await ex.execute(def('c'), input, { actorId: `b${i % 8}` })
  else if (mode === 'plain') for (let i = 0; i < n; i++) await ex.execute(def('c'), input)
  else for (let i = 0; i < n; i++) await handles[i % 8].execute(input)
  best = Math.min(best, ((performance.now() - t0) * 1000) / n)
}
console.log(`${mode} best us/call ${best.toFixed(2)}`)
await ex.close()
