// npm run example:polyglot: one activity, the echo contract, written in four languages and run
// side by side through the same executor: AssemblyScript (its string ABI), C (an Extism plugin),
// Rust (a WASI command: stdin/stdout) and JavaScript (a component of wit/activity.wit).
// The guests come from `npm run guests:polyglot` (built from source, or committed fixtures).
import { existsSync, readFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { WasmActivityExecutor, inspectModule } from '../index.js'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const guests = [
  { language: 'AssemblyScript', file: 'echo.wasm' },
  { language: 'C (Extism plugin)', file: 'c/plugin.wasm' },
  { language: 'Rust (WASI command)', file: 'rust/command.wasm' },
  { language: 'JavaScript (component)', file: 'js/echo.wasm' },
]

async function main() {
  const missing = guests.filter((g) => !existsSync(join(root, 'build', g.file)))
  if (missing.length) {
    console.error(`missing ${missing.map((g) => g.file).join(', ')}: run npm run guests:polyglot first`)
    process.exit(1)
  }
  const executor = new WasmActivityExecutor({ download: async (path: string) => readFileSync(join(root, 'build', path)) })
  const input = { message: 'hello from every language 🌍', times: 2 }
  console.log(`input: ${JSON.stringify(input)}\n`)
  for (const g of guests) {
    const bytes = readFileSync(join(root, 'build', g.file))
    const info = await inspectModule(bytes)
    const definition = { name: g.file, version: '1', wasmBlobPath: g.file }
    let t0 = performance.now()
    const output = await executor.execute(definition, input)
    const first = performance.now() - t0
    const times: number[] = []
    for (let i = 0; i < 50; i++) {
      t0 = performance.now()
      await executor.execute(definition, input)
      times.push(performance.now() - t0)
    }
    times.sort((a, b) => a - b)
    console.log(`${g.language.padEnd(24)} abi ${String(info.abi).padEnd(15)} ${(bytes.length / 1024).toFixed(0).padStart(6)} KiB`)
    console.log(`  -> ${JSON.stringify(output)}`)
    console.log(`  first call (compile + run) ${first.toFixed(1)} ms, warm call ${(times[25] * 1000).toFixed(0)} us (median of 50)\n`)
  }
}

main()
