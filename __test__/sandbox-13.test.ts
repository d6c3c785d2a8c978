// Hostile review round BP (Extism plugins, round 2): each test reproduces a way through that a
// reviewer found, and failed on the code from before its fix.
import { describe, expect, it } from 'vitest'
import { WasmActivityExecutor } from '../index'
import { def, failure } from './helpers'
import { wat } from './wat'

const blobs = (bytes: Buffer) => ({ download: async () => bytes })

const KERNEL = `
  (import "extism:host/env" "alloc" (func $alloc (param i64) (result i64)))
  (import "extism:host/env" "store_u8" (func $s8 (param i64 i32)))
  (import "extism:host/env" "var_set" (func $vset (param i64 i64)))
  (import "extism:host/env" "http_request" (func $http (param i64 i64) (result i64)))
  (import "extism:host/env" "output_set" (func $out (param i64 i64)))
  (import "extism:host/env" "free" (func $free (param i64)))
  (import "extism:host/env" "error_set" (func $eset (param i64)))
  (import "extism:host/env" "log_info" (func $log (param i64)))
  (memory (export "memory") 0)
  ;; A block of one byte, \`b\`.
  (func $byte (param $b i32) (result i64) (local $k i64)
    (local.set $k (call $alloc (i64.const 1)))
    (call $s8 (local.get $k) (local.get $b))
    (local.get $k))
  ;; Answers "1".
  (func $one (result i32)
    (call $out (call $byte (i32.const 49)) (i64.const 1))
    (i32.const 0))`

describe('Extism plugins, round 2', () => {
  it("an actor's copy of definition.config counts in maxActorMemoryMB", async () => {
    // Review BP2: each actor keeps its call's config (up to 64 KiB), counted nowhere: 3,000
    // actors of a 0-page plugin with a 65,000-character config held 250 MB more under a bound of
    // 1 MiB, none evicted.
    const plugin = await wat(`(module ${KERNEL} (func (export "execute") (result i32) (call $one)))`)
    const ex = new WasmActivityExecutor(blobs(plugin), { maxActorMemoryMB: 1 })
    const d = def('config', { abi: 'extism', config: { big: 'x'.repeat(60_000) } } as any)
    for (let i = 0; i < 40; i++) expect(await ex.execute(d, {}, { actorId: `a${i}` })).toBe(1)
    expect(ex.cacheStats().actors).toBeLessThanOrEqual(17)
    await ex.close()
  })

  it("a var's key that is not UTF-8 traps, as in Extism's kernel, rather than becoming another key", async () => {
    // Review BP2: keys were read lossily, so the keys 0x80 and 0x81 were one var (U+FFFD): an
    // 8-byte counter past 0x7f overwrote its own vars.
    const plugin = await wat(`(module ${KERNEL}
      (func (export "execute") (result i32)
        (call $vset (call $byte (i32.const 0x80)) (call $byte (i32.const 1)))
        (call $one)))`)
    const ex = new WasmActivityExecutor(blobs(plugin))
    const e = await failure(ex.execute(def('keys', { abi: 'extism' } as any), {}, { actorId: 'k' }))
    expect(e.code).toBe('TRAP')
    expect(e.message).toContain('not UTF-8')
    await ex.close()
  })

  it('a log call with a bad handle traps whether or not the executor has an onLog', async () => {
    // Review BP2: the handle was checked only when the line was kept: a plugin passed in
    // development (no onLog) and trapped in production.
    const plugin = await wat(`(module ${KERNEL}
      (func (export "execute") (result i32)
        (call $log (i64.const 12345))
        (call $one)))`)
    for (const options of [{}, { onLog: () => {} }]) {
      const ex = new WasmActivityExecutor(blobs(plugin), options)
      const e = await failure(ex.execute(def('log', { abi: 'extism' } as any), {}))
      expect(e.code).toBe('TRAP')
      await ex.close()
    }
  })

  it('an error message freed after error_set still fails the call as the guest error it is', async () => {
    // Review BP2: it trapped (TRAP resets an actor; GUEST_ERROR keeps it).
    const plugin = await wat(`(module ${KERNEL}
      (func (export "execute") (result i32) (local $e i64)
        (local.set $e (call $byte (i32.const 120)))
        (call $eset (local.get $e))
        (call $free (local.get $e))
        (i32.const 1)))`)
    const ex = new WasmActivityExecutor(blobs(plugin))
    const e = await failure(ex.execute(def('err', { abi: 'extism' } as any), {}, { actorId: 'e' }))
    expect(e.code).toBe('GUEST_ERROR')
    await ex.close()
  })

  it('http_request without the network grant is CAPABILITY_DENIED whatever the request holds', async () => {
    // Review BP2: the request was read first, so a malformed one was NETWORK_DENIED.
    const plugin = await wat(`(module ${KERNEL}
      (func (export "execute") (result i32)
        (drop (call $http (call $byte (i32.const 123)) (i64.const 0)))
        (call $one)))`)
    const ex = new WasmActivityExecutor(blobs(plugin))
    const e = await failure(ex.execute(def('http', { abi: 'extism' } as any), {}))
    expect(e.code).toBe('CAPABILITY_DENIED')
    await ex.close()
  })
})
