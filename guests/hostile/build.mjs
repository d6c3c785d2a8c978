// Builds every hostile guest in this folder to build/hostile/<name>.wasm with the same flags as
// the real guests (stub runtime, runtime exported), through asc's API in one process.
import asc from 'assemblyscript/asc'
import { mkdirSync, readdirSync } from 'node:fs'
import { dirname, join, relative } from 'node:path'
import { fileURLToPath } from 'node:url'

const here = dirname(fileURLToPath(import.meta.url))
const root = join(here, '..', '..')
const out = join(root, 'build', 'hostile')
mkdirSync(out, { recursive: true })

let failed = 0
for (const file of readdirSync(here).filter((f) => f.endsWith('.ts')).sort()) {
  const name = file.replace(/\.ts$/, '')
  const { error, stderr } = await asc.main([
    relative(process.cwd(), join(here, file)),
    '--outFile', relative(process.cwd(), join(out, `${name}.wasm`)),
    '--optimize', '--exportRuntime', '--runtime', 'stub',
  ])
  if (error) {
    failed++
    console.error(`${file}: ${error.message}\n${stderr.toString()}`)
  }
}
if (failed) process.exit(1)
console.log(`hostile guests built into ${relative(process.cwd(), out)}`)
