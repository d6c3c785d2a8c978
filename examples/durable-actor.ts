// npm run example:durable-actor: a durable actor handed over between two worker processes.
// Worker A runs the counter actor to 8 with its snapshots in an actor store (a local directory
// here; s3://, az://, gs:// work the same), then is killed with SIGKILL. Worker B, a fresh
// process, continues the same actor at 8: its state was in the store, not in A's memory.
import { spawn } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { createInterface } from 'node:readline'
import { fileURLToPath } from 'node:url'
import { ObjectBlobStore, WasmActivityExecutor } from '../index.js'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const counter = { name: 'counter', version: '1', wasmBlobPath: 'counter-actor.wasm' }

/** A worker: runs the actions it reads from stdin on actor 'order-42', one JSON line each. */
async function worker(storeUrl: string) {
  const bytes = readFileSync(join(root, 'build', 'counter-actor.wasm'))
  const executor = new WasmActivityExecutor(
    { download: async () => bytes },
    { actorStore: new ObjectBlobStore(storeUrl), persist: 'sync' },
  )
  for await (const line of createInterface({ input: process.stdin })) {
    const out = await executor.execute(counter, JSON.parse(line), { actorId: 'order-42' })
    process.stdout.write(JSON.stringify(out) + '\n')
  }
}

function start(name: string, storeUrl: string) {
  const child = spawn(process.execPath, ['--import', 'tsx', fileURLToPath(import.meta.url), 'worker', storeUrl], {
    stdio: ['pipe', 'pipe', 'inherit'],
  })
  const lines = createInterface({ input: child.stdout! })[Symbol.asyncIterator]()
  return {
    async send(action: object) {
      child.stdin!.write(JSON.stringify(action) + '\n')
      const { value } = await lines.next()
      console.log(`   ${name}: ${JSON.stringify(action).padEnd(36)} -> ${value}`)
      return JSON.parse(value)
    },
    kill: () => new Promise((r) => child.once('exit', r).kill('SIGKILL')),
    end: () => new Promise((r) => child.once('exit', r).stdin!.end()),
  }
}

async function main() {
  const dir = mkdtempSync(join(tmpdir(), 'loom-durable-example-'))
  process.on('exit', () => rmSync(dir, { recursive: true, force: true }))
  const storeUrl = `file://${dir}`
  console.log(`1. Worker A runs actor 'order-42'; its snapshots go to ${storeUrl}`)
  const a = start('A', storeUrl)
  await a.send({ action: 'increment', amount: 5 })
  await a.send({ action: 'increment', amount: 3 })
  console.log('2. Worker A is killed with SIGKILL (no shutdown, no flush)')
  await a.kill()
  console.log('3. Worker B, a new process, continues the same actor')
  const b = start('B', storeUrl)
  const got = await b.send({ action: 'get' })
  await b.send({ action: 'decrement', amount: 2 })
  await b.end()
  console.log(got.count === 8 ? '   B found the count A left: 8' : `   unexpected count ${got.count}`)
  if (got.count !== 8) process.exit(1)
}

if (process.argv[2] === 'worker') worker(process.argv[3])
else main()
