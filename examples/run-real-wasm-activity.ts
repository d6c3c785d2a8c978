/**
 * A real WebAssembly activity, end to end:
 * 1. compile the AssemblyScript counter guest to WebAssembly,
 * 2. upload it to an in-memory blob store (Loom's BlobStore interface),
 * 3. run it on one actor, whose state persists between calls (5, 8, 6, 6, 0),
 * 4. and a stateless activity (echo) beside it.
 */
import { WasmActivityExecutor, type ActivityDefinition, type BlobStore } from 'loom-wasm-executor'
import { execFileSync } from 'node:child_process'
import { mkdirSync, readFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')

class MemoryBlobStore implements BlobStore {
  private blobs = new Map<string, Buffer>()
  async upload(path: string, data: Buffer): Promise<string> {
    this.blobs.set(path, data)
    return path
  }
  async download(path: string): Promise<Buffer> {
    const data = this.blobs.get(path)
    if (!data) throw new Error(`Blob not found: ${path}`)
    return data
  }
  async exists(path: string): Promise<boolean> {
    return this.blobs.has(path)
  }
  async delete(path: string): Promise<void> {
    this.blobs.delete(path)
  }
}

// An actor keeps its instance between calls, so it needs a runtime that frees memory: with
// `--runtime stub` every call's strings stay allocated and the actor grows until it hits its
// memory limit (and loses its state). Stateless activities, a fresh instance per call, may use stub.
function compile(source: string, output: string, runtime: 'incremental' | 'stub'): Buffer {
  mkdirSync(dirname(output), { recursive: true })
  const asc = join(root, 'node_modules', '.bin', 'asc')
  execFileSync(asc, [source, '--outFile', output, '--optimize', '--exportRuntime', '--runtime', runtime], {
    cwd: root,
    stdio: 'inherit',
  })
  return readFileSync(join(root, output))
}

async function main() {
  console.log('1. Compiling guests/assemblyscript/counter-actor.ts and echo.ts with AssemblyScript')
  const counterWasm = compile('guests/assemblyscript/counter-actor.ts', 'build/counter-actor.wasm', 'incremental')
  const echoWasm = compile('guests/assemblyscript/echo.ts', 'build/echo.wasm', 'stub')
  console.log(`   counter-actor.wasm: ${counterWasm.length} bytes, echo.wasm: ${echoWasm.length} bytes`)

  const blobStore = new MemoryBlobStore()
  await blobStore.upload('activities/counter-actor.wasm', counterWasm)
  await blobStore.upload('activities/echo.wasm', echoWasm)
  console.log('2. Uploaded both to an in-memory blob store')

  const executor = new WasmActivityExecutor(blobStore)
  const counter: ActivityDefinition = {
    name: 'counter',
    version: '1.0.0',
    wasmBlobPath: 'activities/counter-actor.wasm',
    limits: { maxMemoryMB: 10, maxExecutionMs: 5000 },
  }

  console.log("3. One actor ('counter-1'): its instance, and so its count, is kept between calls")
  const steps = [
    { action: 'increment', amount: 5 },
    { action: 'increment', amount: 3 },
    { action: 'decrement', amount: 2 },
    { action: 'get' },
    { action: 'reset' },
  ]
  const counts: number[] = []
  for (const step of steps) {
    const result = await executor.execute<{ count: number; action: string }>(counter, step, { actorId: 'counter-1' })
    counts.push(result.count)
    console.log(`   ${JSON.stringify(step).padEnd(38)} -> ${JSON.stringify(result)}`)
  }
  console.log(`   counts: ${counts.join(', ')}`)
  if (counts.join(',') !== '5,8,6,6,0') throw new Error(`the actor did not keep its state: ${counts.join(', ')}`)

  console.log('4. A stateless activity: a fresh instance per call, as Loom runs activities')
  const echo: ActivityDefinition = { name: 'echo', version: '1.0.0', wasmBlobPath: 'activities/echo.wasm' }
  const echoed = await executor.execute(echo, { message: 'hello from WASM 🌍', times: 2 })
  console.log(`   ${JSON.stringify(echoed)}`)
  const again = await executor.execute(counter, { action: 'get' })
  console.log(`   counter without an actor starts from zero each call: ${JSON.stringify(again)}`)

  const stats = executor.cacheStats()
  console.log(`   cache: ${stats.modules} modules, ${stats.hits} hits, ${stats.misses} misses, ${stats.compiles} compiles`)
}

main().catch((err) => {
  console.error(err)
  process.exit(1)
})
