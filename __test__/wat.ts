// Hand-written hostile guests: WebAssembly text compiled with wabt (no toolchain needed), on the
// AssemblyScript ABI (a bump `__new`, strings with their byte length at ptr-4), so each test
// states exactly what the guest does.
import wabtInit from 'wabt'

let wabt: Awaited<ReturnType<typeof wabtInit>> | undefined

/**
 * The ABI's common part: memory, a growing bump allocator `__new`, `__pin`/`__unpin`, `abort`.
 * `first` runs at the start of each `__new` (with `locals` declared), for a guest whose `__new`
 * does more than allocate.
 */
export const prelude = (first = '', locals = '') => `
  (import "env" "abort" (func $abort (param i32 i32 i32 i32)))
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 4096))
  (func $new (export "__new") (param $size i32) (param $id i32) (result i32)
    (local $ptr i32) (local $end i32) ${locals}
    ${first}
    (local.set $ptr (i32.add (global.get $heap) (i32.const 16)))
    (local.set $end (i32.add (local.get $ptr) (local.get $size)))
    (block $done
      (loop $grow
        (br_if $done (i32.le_u (local.get $end) (i32.mul (memory.size) (i32.const 65536))))
        (drop (memory.grow (i32.const 1)))
        (br $grow)))
    (i32.store (i32.sub (local.get $ptr) (i32.const 4)) (local.get $size))
    (global.set $heap (i32.and (i32.add (local.get $end) (i32.const 15)) (i32.const -16)))
    (local.get $ptr))
  (func (export "__pin") (param i32) (result i32) (local.get 0))
  (func (export "__unpin") (param i32))
  ;; "1" as an AS string at 36 (byte length 2 at 32): a valid JSON output.
  (data (i32.const 32) "\\02\\00\\00\\00\\31\\00")
`

/** `prelude()`: the ABI's common part, its `__new` only allocating. */
export const PRELUDE = prelude()

/** Compiles WAT text (features: wabt's flags, e.g. { multi_memory: true }). */
export async function wat(text: string, features: Record<string, boolean> = {}): Promise<Buffer> {
  wabt ??= await wabtInit()
  const m = wabt.parseWat('guest.wat', text, { bulk_memory: true, reference_types: true, ...features })
  try {
    return Buffer.from(m.toBinary({}).buffer)
  } finally {
    m.destroy()
  }
}

/** A guest on the ABI: its imports, PRELUDE (or another `prelude`), then `body` (which exports `execute`). */
export function guestWat(body: string, imports = '', common = PRELUDE): Promise<Buffer> {
  return wat(`(module ${imports} ${common} ${body})`)
}
