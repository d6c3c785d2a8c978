// Shipping: the tarballs `npm run pack:local` writes install into a fresh project with plain
// `npm install <tarballs>` (no approvals, no install scripts), and work from ESM, CJS, TypeScript
// and the CLI.
import { execFileSync, spawnSync } from 'node:child_process'
import { mkdtempSync, readdirSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { beforeAll, describe, expect, it } from 'vitest'
import { root } from './helpers'

const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm'
let project: string
let tarballs: string[]

function freshProject(files: string[]): string {
  const dir = mkdtempSync(join(tmpdir(), 'loom-consumer-'))
  writeFileSync(join(dir, 'package.json'), JSON.stringify({ name: 'consumer', version: '1.0.0', private: true }))
  execFileSync(npm, ['install', '--no-audit', '--no-fund', ...files], { cwd: dir, encoding: 'utf8' })
  return dir
}

const echo = join(root, 'build', 'echo.wasm')

beforeAll(() => {
  execFileSync(process.execPath, [join(root, 'scripts', 'pack-local.mjs')], { cwd: root, encoding: 'utf8' })
  tarballs = readdirSync(join(root, 'pkg')).filter((f) => f.endsWith('.tgz')).map((f) => join(root, 'pkg', f))
  project = freshProject(tarballs)
}, 120_000)

describe('installed from tarballs', () => {
  it('pack:local writes the main package and the linux-x64-gnu package, neither with install scripts', () => {
    const names = tarballs.map((t) => t.split('/').pop())
    expect(names).toContain('loom-wasm-executor-0.1.0.tgz')
    expect(names).toContain('loom-wasm-executor-linux-x64-gnu-0.1.0.tgz')
    for (const pkg of ['loom-wasm-executor', 'loom-wasm-executor-linux-x64-gnu']) {
      const meta = JSON.parse(execFileSync(process.execPath, ['-p', `JSON.stringify(require('${pkg}/package.json'))`], { cwd: project, encoding: 'utf8' }))
      expect(Object.keys(meta.scripts ?? {})).toEqual([])
    }
  })

  const program = `
    const bytes = readFileSync(${JSON.stringify(echo)})
    const ex = new WasmActivityExecutor({ download: async () => bytes })
    ex.execute({ name: 'echo', version: '1', wasmBlobPath: 'echo.wasm' }, { message: 'installed' })
      .then((out) => console.log(out.result))`

  it('runs an activity via import (ESM)', () => {
    writeFileSync(join(project, 'esm.mjs'), `import { WasmActivityExecutor } from 'loom-wasm-executor'\nimport { readFileSync } from 'node:fs'\n${program}`)
    expect(execFileSync(process.execPath, ['esm.mjs'], { cwd: project, encoding: 'utf8' }).trim()).toBe('installed')
  })

  it('ESM and CommonJS get the very same binding, with every export named for ESM', () => {
    // lib/load.mjs names the exports itself (Node would otherwise read them out of load.cjs's
    // text, and out of napi's loader, on every ESM import: 10-20 ms of a cold start).
    writeFileSync(
      join(project, 'same.mjs'),
      `import { createRequire } from 'node:module'\n` +
        `import * as ns from 'loom-wasm-executor'\n` +
        `const cjs = createRequire(import.meta.url)('loom-wasm-executor')\n` +
        `const named = Object.keys(ns).filter((k) => k !== 'default').sort()\n` +
        `console.log(JSON.stringify({ named, cjs: Object.keys(cjs).sort(), same: ns.default === cjs && named.every((k) => ns[k] === cjs[k]) }))`,
    )
    const out = JSON.parse(execFileSync(process.execPath, ['same.mjs'], { cwd: project, encoding: 'utf8' }))
    expect(out.named).toEqual(out.cjs)
    expect(out.named).toContain('WasmActivityExecutor')
    expect(out.same).toBe(true)
  })

  it('runs an activity via require (CJS)', () => {
    writeFileSync(join(project, 'cjs.cjs'), `const { WasmActivityExecutor } = require('loom-wasm-executor')\nconst { readFileSync } = require('node:fs')\n${program}`)
    expect(execFileSync(process.execPath, ['cjs.cjs'], { cwd: project, encoding: 'utf8' }).trim()).toBe('installed')
  })

  it('type-checks a consumer against the shipped index.d.ts', () => {
    writeFileSync(
      join(project, 'consumer.ts'),
      `import { WasmActivityExecutor, ObjectBlobStore, type ActivityDefinition, type BlobStore, type WasmExecutorError } from 'loom-wasm-executor'
const store: BlobStore = { download: async (_path: string) => Buffer.alloc(0) }
const executor = new WasmActivityExecutor(store, { maxConcurrency: 2, cacheDir: '/tmp/x' })
const def: ActivityDefinition = { name: 'a', version: '1', wasmBlobPath: 'a.wasm', limits: { maxMemoryMB: 10 }, capabilities: { env: ['HOME'] } }
async function main(): Promise<number> {
  const out = await executor.execute<{ count: number }>(def, { action: 'get' }, { actorId: 'x' })
  const detail = await executor.executeDetailed(def, null)
  const s3 = new ObjectBlobStore('memory://x')
  await s3.upload('p', Buffer.from('y'))
  try { await executor.execute(def, {}) } catch (e) { const code: string = (e as WasmExecutorError).code; void code }
  return out.count + detail.durationMs + executor.cacheStats().compiles + executor.moduleCache.size
}
void main
`,
    )
    const tsc = join(root, 'node_modules', 'typescript', 'bin', 'tsc')
    const r = spawnSync(
      process.execPath,
      [tsc, '--noEmit', '--strict', '--module', 'nodenext', '--moduleResolution', 'nodenext', '--target', 'es2022',
        '--types', 'node', '--typeRoots', join(root, 'node_modules', '@types'), 'consumer.ts'],
      { cwd: project, encoding: 'utf8' },
    )
    expect(r.stdout + r.stderr).toBe('')
    expect(r.status).toBe(0)
  })

  it('installs the loom-wasm CLI', () => {
    const r = spawnSync(join(project, 'node_modules', '.bin', 'loom-wasm'), ['run', echo, '--input', '{"message":"bin"}'], { encoding: 'utf8' })
    expect(r.status).toBe(0)
    expect(JSON.parse(r.stdout).result).toBe('bin')
  })

  it('without a binary for the platform, says so and how to build from source', () => {
    const main = tarballs.find((t) => t.endsWith('loom-wasm-executor-0.1.0.tgz'))!
    const bare = freshProject([main])
    const r = spawnSync(process.execPath, ['-e', "try { require('loom-wasm-executor') } catch (e) { console.log(e.code + ' ' + e.message) }"], { cwd: bare, encoding: 'utf8' })
    expect(r.stdout).toContain('NO_NATIVE_BINARY')
    expect(r.stdout).toContain(`(${process.platform}-${process.arch}-gnu)`)
    expect(r.stdout).toContain('build it from source')
  })
})
