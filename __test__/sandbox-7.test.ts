// Hostile review round AD: each test reproduces a way through that a reviewer (or the list of
// what earlier rounds left) found, and failed on the code from before its fix.
import { mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { WasmActivityExecutor } from '../index'
import { def, failure, guest, MemoryBlobStore } from './helpers'
import { guestWat } from './wat'

/** Runs `f` with `Array.prototype[index]` set (a prototype pollution elsewhere in the process). */
function arrayPolluted<T>(index: number, value: unknown, f: () => T): T {
  Object.defineProperty(Array.prototype, index, { value, configurable: true, writable: true, enumerable: true })
  try {
    return f()
  } finally {
    delete (Array.prototype as any)[index]
  }
}

describe("a list's hole is no entry, whatever Array.prototype holds", () => {
  beforeAll(() => {
    process.env.LOOM_AD_VISIBLE = 'shown'
    process.env.LOOM_AD_SECRET = 'secret'
  })
  afterAll(() => {
    delete process.env.LOOM_AD_VISIBLE
    delete process.env.LOOM_AD_SECRET
  })

  it('options.env, capabilities.env, allowedHosts and allowedBlobUrls with a hole are refused', async () => {
    const store = new MemoryBlobStore()
    await store.upload('env.wasm', guest('capabilities/env'))
    // Before: the hole read Array.prototype[1], so the executor offered the secret and the guest read it.
    // eslint-disable-next-line no-sparse-arrays
    const offer = ['LOOM_AD_VISIBLE', , 'LOOM_AD_OTHER']
    const made = arrayPolluted(1, 'LOOM_AD_SECRET', () => {
      try {
        return new WasmActivityExecutor(store, { env: offer as string[] })
      } catch (e) {
        return e as any
      }
    })
    expect(made.code).toBe('INVALID_ARGUMENT')
    expect(made.message).toContain('options.env[1]')
    for (const options of [{ network: { allowedHosts: ['a.example', , 'b.example'] } }, { allowedBlobUrls: ['https://a.example/', ,] }]) {
      const thrown = arrayPolluted(1, '*', () => {
        try {
          return new WasmActivityExecutor(store, options as any)
        } catch (e) {
          return e as any
        }
      })
      expect(thrown.code, JSON.stringify(options)).toBe('INVALID_ARGUMENT')
    }
    // A definition's list the same: its hole asks for nothing it did not name.
    const ex = new WasmActivityExecutor(store, { env: ['LOOM_AD_VISIBLE', 'LOOM_AD_SECRET'] })
    // eslint-disable-next-line no-sparse-arrays
    const asks = def('env', { capabilities: { env: ['LOOM_AD_VISIBLE', , 'LOOM_AD_VISIBLE'] as string[] } })
    const e = await arrayPolluted(1, 'LOOM_AD_SECRET', () => failure(ex.execute(asks, {})))
    expect(e.code).toBe('INVALID_ARGUMENT')
    expect(e.message).toContain('capabilities.env[1]')
    // Own entries still count.
    expect(await ex.execute(def('env', { capabilities: { env: ['LOOM_AD_VISIBLE'] } }), {})).toEqual({ LOOM_AD_VISIBLE: 'shown' })
    await ex.close()
  })
})

describe('a durable actor whose start function calls a host function', () => {
  it('is refused before its start function or execute call the host (a retry loop repeated their effects)', async () => {
    const wasm = await guestWat(`
      (func $start (drop (call $charge (i32.const 36))))
      (start $start)
      (func (export "execute") (param i32) (result i32)
        (drop (call $charge (i32.const 36)))
        (i32.store16 (i32.const 100) (i32.const 49))
        (i32.store (i32.const 96) (i32.const 2))
        (i32.const 100))`, `(import "billing" "charge" (func $charge (param i32) (result i32)))`)
    let charges = 0
    const actorStore = `file://${mkdtempSync(join(tmpdir(), 'loom-ad-durable-'))}`
    const ex = new WasmActivityExecutor({ download: async () => wasm }, { actorStore, hostFunctions: { 'billing.charge': () => ++charges } })
    const d = def('charges', { capabilities: { hostFunctions: ['billing.charge'] } })
    for (let retry = 0; retry < 3; retry++) {
      const e = await failure(ex.execute(d, {}, { actorId: 'a' }))
      expect([e.code, e.message]).toEqual(['CAPABILITY_DENIED', expect.stringContaining('start function calls host function billing.charge')])
    }
    // Before: each attempt charged twice (the start function and execute) and then failed.
    expect(charges).toBe(0)
    // Not durable, the same module runs, and charges.
    expect(await ex.execute(d, {})).toBe(1)
    expect(charges).toBe(2)
    await ex.close()
  })
})

describe("a durable actor's initial image is made as part of its first call", () => {
  it("so the call's signal ends a start function that spins in it (it had run to its own deadline, holding the call's slot)", async () => {
    const wasm = await guestWat(`(func $start (loop $spin (br $spin))) (start $start)
      (func (export "execute") (param i32) (result i32) (i32.const 36))`)
    const actorStore = `file://${mkdtempSync(join(tmpdir(), 'loom-ad-image-'))}`
    const ex = new WasmActivityExecutor({ download: async () => wasm }, { actorStore, maxConcurrency: 1, maxExecutionMs: 60_000 })
    const signal = AbortSignal.timeout(200)
    const e = await failure(ex.execute(def('spins'), {}, { actorId: 'a', signal }))
    // Before the follow-up's fix: TIMEOUT, after the whole maxExecutionMs.
    expect(e.code).toBe('CANCELLED')
    await ex.close()
  })
})

describe("restoreActor makes the module's initial image as an operation close() ends", () => {
  it('so close() ends a start function that spins in it (close had waited out maxExecutionMs)', async () => {
    const wasm = await guestWat(`(func $start (loop $spin (br $spin))) (start $start)
      (func (export "execute") (param i32) (result i32) (i32.const 36))`)
    const ex = new WasmActivityExecutor({ download: async () => wasm }, { maxExecutionMs: 60_000 })
    // The image is made before the snapshot is decoded: any bytes reach it.
    const restoring = failure(ex.restoreActor(def('spins'), 'a', Buffer.from('not a snapshot')))
    await new Promise((r) => setTimeout(r, 200))
    await ex.close()
    // Before: close() and the restore waited for the start function's TIMEOUT, after 60 s.
    expect((await restoring).code).toBe('CANCELLED')
  })
})

describe('modules whose compile or traps cost the host far more than their bytes', () => {
  it('a module of indirect calls past maxCodeBytes is refused before it compiles; the same under a larger one runs', async () => {
    // 5 bytes of wasm, 185 of machine code: 17 MB of them compiled to 626 MB and peaked at 2.7 GB.
    const body = '(call_indirect (type $t) (i32.const 0))'.repeat(40_000)
    const wasm = await guestWat(`(type $t (func)) (table 1 funcref) (elem (i32.const 0) $nop) (func $nop)
      (func $calls ${body})
      (func (export "execute") (param i32) (result i32) (i32.const 36))`)
    const store = { download: async () => wasm }
    const tight = new WasmActivityExecutor(store, { maxCodeBytes: 4 << 20 })
    const e = await failure(tight.execute(def('calls'), {}))
    expect([e.code, e.message]).toEqual(['COMPILE_LIMIT', expect.stringContaining('maxCodeBytes')])
    await tight.close()
    const roomy = new WasmActivityExecutor(store, { maxCodeBytes: 64 << 20 })
    expect(await roomy.execute(def('calls'), {})).toBe(1)
    await roomy.close()
  })

  it("a trap in a function named by megabytes is refused at load, not copied into every frame of each trap's backtrace", async () => {
    const wasm = await guestWat(`(func $deep (param i32) (if (local.get 0) (then (call $deep (i32.sub (local.get 0) (i32.const 1)))) (else unreachable)))
      (func (export "execute") (param i32) (result i32) (call $deep (i32.const 10)) (i32.const 36))`)
    const named = (name: string) => {
      const bytes = Buffer.from(name)
      const leb = (n: number) => { const out = []; do { let b = n & 0x7f; n >>>= 7; if (n) b |= 0x80; out.push(b) } while (n); return out }
      // Function 4 ($deep, after abort, __new, __pin and __unpin) gets the name.
      const sub = Buffer.from([...leb(1), ...leb(4), ...leb(bytes.length), ...bytes])
      const content = Buffer.concat([Buffer.from([4, ...Buffer.from('name')]), Buffer.from([1, ...leb(sub.length)]), sub])
      return Buffer.concat([wasm, Buffer.from([0, ...leb(content.length)]), content])
    }
    const ex = new WasmActivityExecutor({ download: async (p: string) => named(p === 'short.wasm' ? 'deep' : 'x'.repeat(1 << 20)) })
    // Before: 1 MiB copied into each of 11 frames and written whole into the message, each trap.
    const e = await failure(ex.execute(def('long'), {}))
    expect([e.code, e.message]).toEqual(['COMPILE_LIMIT', expect.stringContaining('name section')])
    const trap = await failure(ex.execute(def('short'), {}))
    expect([trap.code, trap.trapKind]).toEqual(['TRAP', 'unreachable_code_reached'])
    expect(trap.message).toContain('!deep')
    await ex.close()
  })
})
