// Hostile review round AS (the JS API under hostile values, WASI commands, components): each test
// reproduces a way through that a reviewer found, and failed on the code from before its fix.
import { execFileSync } from 'node:child_process'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'

const root = join(__dirname, '..')

describe('a definition or an option that re-enters the executor until the JS stack runs out', () => {
  it('is refused, and Node lives: a getter, a toJSON, a signal each calling the executor again', () => {
    // Before: the error built at the deepest level was handed to napi-rs's conversion, which reads
    // its `cause` and, when that read throws (every read does at the stack's limit), describes that
    // throw the same way, without end: Node died of a real stack overflow (SIGSEGV), every time.
    const script = `
      const { readFileSync } = require('node:fs')
      const { WasmActivityExecutor } = require(${JSON.stringify(root)})
      process.on('unhandledRejection', () => {}) // promises the recursion could not attach a handler to
      const bytes = readFileSync(${JSON.stringify(join(root, 'build/echo.wasm'))})
      const ex = new WasmActivityExecutor({ download: async () => bytes })
      const d = { name: 'echo', version: '1', wasmBlobPath: 'echo.wasm' }
      const levels = {}
      const modes = {
        dropActor: (again) => ex.dropActor({ ...d, get name() { again(); return 'echo' } }, 'a'),
        actor: (again) => ex.actor({ ...d, get version() { again(); return '1' } }, 'a'),
        getter: (again) => ex.execute({ ...d, get wasmBlobPath() { again(); return 'echo.wasm' } }, {}),
        toJSON: (again) => ex.execute(d, { toJSON() { again(); return {} } }),
        options: (again) => ex.execute(d, {}, { get actorId() { again(); return undefined } }),
        signal: (again) => ex.execute(d, {}, { signal: { get aborted() { again(); return false }, addEventListener() {}, removeEventListener() {} } }),
      }
      for (const [mode, enter] of Object.entries(modes)) {
        let n = 0
        const again = () => { n++; try { enter(again) } catch {} }
        for (let pad = 0; pad < 8; pad++) {
          const padded = (k) => (k > 0 ? padded(k - 1) : again())
          padded(pad * 7)
        }
        levels[mode] = n
      }
      ex.close().then(() => console.log(JSON.stringify(levels)))`
    const out = JSON.parse(execFileSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: 120_000 }))
    for (const mode of ['dropActor', 'actor', 'getter', 'toJSON', 'options', 'signal']) {
      // Each went deep enough to reach the stack's limit (hundreds of levels), and came back.
      expect(out[mode], mode).toBeGreaterThan(8 * 50)
    }
  })
})
