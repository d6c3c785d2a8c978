// Builds the test guests of the folders named on the command line (e.g. `hostile capabilities`):
// guests/<folder>/<name>.ts -> build/<folder>/<name>.wasm, with the same flags as the real
// guests (stub runtime, runtime exported), through asc's API in one process. Files that only
// declare imports for the others (no `export function`) are skipped.
import asc from 'assemblyscript/asc'
import { mkdirSync, readdirSync, readFileSync } from 'node:fs'
import { dirname, join, relative } from 'node:path'
import { fileURLToPath } from 'node:url'

const guests = dirname(fileURLToPath(import.meta.url))
const root = join(guests, '..')

let failed = 0
for (const folder of process.argv.slice(2)) {
  const src = join(guests, folder)
  const out = join(root, 'build', folder)
  mkdirSync(out, { recursive: true })
  for (const file of readdirSync(src).filter((f) => f.endsWith('.ts')).sort()) {
    if (!readFileSync(join(src, file), 'utf8').includes('export function ')) continue
    const name = file.replace(/\.ts$/, '')
    const { error, stderr } = await asc.main([
      relative(process.cwd(), join(src, file)),
      '--outFile', relative(process.cwd(), join(out, `${name}.wasm`)),
      '--optimize', '--exportRuntime', '--runtime', 'stub',
    ])
    if (error) {
      failed++
      console.error(`${file}: ${error.message}\n${stderr.toString()}`)
    }
  }
  console.log(`guests/${folder} built into ${relative(process.cwd(), out)}`)
}
if (failed) process.exit(1)
