// Hostile review round BB (host-side memory a guest controls): each test reproduces a way through
// that a reviewer found, and failed on the code from before its fix.
import { describe, expect, it } from 'vitest'
import { WasmActivityExecutor } from '../index'
import { def, failure } from './helpers'
import { wat } from './wat'

const blobs = (bytes: Buffer) => ({ download: async () => bytes })

/** A WASI command polling `n` clock subscriptions that are due at once; it exits with the poll's
 * errno times 10,000 plus the events it was given (an exit code is the answer it can give). */
function poller(n: number): Promise<Buffer> {
  const subs = 65536
  const events = subs + n * 48
  const pages = Math.ceil((events + n * 32) / 65536) + 1
  return wat(`(module
    (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
    (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
    (memory (export "memory") ${pages})
    (func (export "_start") (local $errno i32)
      (local.set $errno (call $poll (i32.const ${subs}) (i32.const ${events}) (i32.const ${n}) (i32.const 8)))
      (call $exit (i32.add (i32.mul (local.get $errno) (i32.const 10000)) (i32.load (i32.const 8))))))`)
}

describe('host memory a guest makes the host hold', () => {
  it("preview 1's poll_oneoff takes at most 4,096 subscriptions: more is EINVAL, not host memory past maxMemoryMB", async () => {
    // Review BB1: wasmtime-wasi makes a table entry and a boxed future per subscription, in one go
    // no deadline stops: 490,000 of them from a guest capped at 24 MiB took 260 MiB of host memory
    // and half a second past a 20 ms maxExecutionMs.
    const grant = { capabilities: { env: ['X'] }, limits: { maxMemoryMB: 64, maxExecutionMs: 10_000 } }
    const exitOf = async (n: number) => {
      const ex = new WasmActivityExecutor(blobs(await poller(n)), { env: { X: '1' } })
      try {
        return (await failure(ex.execute(def('poll', grant), null))).exitCode
      } finally {
        await ex.close()
      }
    }
    expect(await exitOf(2)).toBe(2)
    expect(await exitOf(4096)).toBe(4096)
    expect(await exitOf(4097)).toBe(280000)
    expect(await exitOf(490_000)).toBe(280000)
  })
})
