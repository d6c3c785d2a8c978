//! Small WAT guests that follow the AssemblyScript ABI (a bump `__new`, strings with their byte
//! length at ptr-4), so the core is tested without Node or the AssemblyScript compiler. The test
//! components are in `test_components`.

pub use crate::test_components::*;
pub use crate::test_http_components::*;

/// The shared part: memory, a bump allocator `__new` that grows memory as needed, `abort`.
const PRELUDE: &str = r#"
  (import "env" "abort" (func $abort (param i32 i32 i32 i32)))
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 4096))
  (func $new (export "__new") (param $size i32) (param $id i32) (result i32)
    (local $ptr i32) (local $end i32)
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
  ;; "boom" at 68 and "guest.ts" at 100, AS layout (byte length at ptr-4).
  (data (i32.const 64) "\08\00\00\00b\00o\00o\00m\00")
  (data (i32.const 96) "\10\00\00\00g\00u\00e\00s\00t\00.\00t\00s\00")
"#;

/// `bytes` with a custom section of its own (named by `tag`), so that no other test's compile or
/// artifact of the same guest is shared.
pub fn unique(mut bytes: Vec<u8>, tag: &[u8]) -> Vec<u8> {
    bytes.extend_from_slice(&[0, tag.len() as u8 + 1, tag.len() as u8]);
    bytes.extend_from_slice(tag);
    bytes
}

fn module(body: &str) -> Vec<u8> {
    wat::parse_str(format!("(module {PRELUDE} {body})")).expect("test guest parses")
}

/// A guest of the prelude and `body` (which exports `execute`).
pub fn with_prelude(body: &str) -> Vec<u8> {
    module(body)
}

/// A guest of `imports`, the prelude and `body`.
pub fn with_imports(imports: &str, body: &str) -> Vec<u8> {
    wat::parse_str(format!("(module {imports} {PRELUDE} {body})")).expect("test guest parses")
}

/// Returns its input unchanged.
pub fn echo() -> Vec<u8> {
    module(r#"(func (export "execute") (param $in i32) (result i32) (local.get $in))"#)
}

/// Keeps a counter in a global; returns it (mod 10) as a one-digit JSON number.
pub fn counter() -> Vec<u8> {
    module(
        r#"(global $count (mut i32) (i32.const 0))
        (func (export "execute") (param $in i32) (result i32) (local $out i32)
          (global.set $count (i32.add (global.get $count) (i32.const 1)))
          (local.set $out (call $new (i32.const 2) (i32.const 2)))
          (i32.store16 (local.get $out) (i32.add (i32.const 48) (i32.rem_u (global.get $count) (i32.const 10))))
          (local.get $out))"#,
    )
}

pub fn spin() -> Vec<u8> {
    module(r#"(func (export "execute") (param i32) (result i32) (loop $l (br $l)) (i32.const 0))"#)
}

pub fn aborts() -> Vec<u8> {
    module(
        r#"(func (export "execute") (param i32) (result i32)
          (call $abort (i32.const 68) (i32.const 100) (i32.const 12) (i32.const 5))
          (i32.const 0))"#,
    )
}

/// Grows memory a page at a time forever.
pub fn memory_bomb() -> Vec<u8> {
    module(
        r#"(func (export "execute") (param i32) (result i32)
          (loop $l (drop (memory.grow (i32.const 16))) (br $l))
          (i32.const 0))"#,
    )
}

pub fn recursion() -> Vec<u8> {
    module(
        r#"(func $r (param i32) (result i32) (call $r (i32.add (local.get 0) (i32.const 1))))
        (func (export "execute") (param $in i32) (result i32) (call $r (local.get $in)))"#,
    )
}

/// Returns a pointer far outside memory.
pub fn bad_pointer() -> Vec<u8> {
    module(r#"(func (export "execute") (param i32) (result i32) (i32.const 0x7fff0000))"#)
}

/// Traps in its start function.
pub fn start_trap() -> Vec<u8> {
    module(
        r#"(func $start unreachable) (start $start)
        (func (export "execute") (param $in i32) (result i32) (local.get $in))"#,
    )
}

pub fn no_execute() -> Vec<u8> {
    module("")
}

pub fn wrong_signature() -> Vec<u8> {
    module(r#"(func (export "execute") (param f64) (result f64) (local.get 0))"#)
}

pub fn imports_wasi() -> Vec<u8> {
    wat::parse_str(format!(
        r#"(module (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))
        {PRELUDE} (func (export "execute") (param $in i32) (result i32) (local.get $in)))"#
    ))
    .expect("parses")
}

pub fn imports_unknown() -> Vec<u8> {
    wat::parse_str(format!(
        r#"(module (import "env" "fetch" (func (param i32) (result i32)))
        {PRELUDE} (func (export "execute") (param $in i32) (result i32) (local.get $in)))"#
    ))
    .expect("parses")
}

/// Burns a fixed number of loop iterations, then echoes.
pub fn busy(iterations: u32) -> Vec<u8> {
    module(&format!(
        r#"(func (export "execute") (param $in i32) (result i32) (local $i i32)
          (loop $l
            (local.set $i (i32.add (local.get $i) (i32.const 1)))
            (br_if $l (i32.lt_u (local.get $i) (i32.const {iterations}))))
          (local.get $in))"#
    ))
}

/// Echo, with an element segment of `items` `ref.null func` items written as expressions: code
/// wasmtime compiles for the instance's start, ~15 us per item (`shape::Shape::init_instructions`).
pub fn init_bomb(items: usize) -> Vec<u8> {
    module(&format!(
        r#"(table {items} funcref) (elem (i32.const 0) funcref {})
        (func (export "execute") (param $in i32) (result i32) (local.get $in))"#,
        "(ref.null func) ".repeat(items)
    ))
}

/// Echo, with `segments` empty data segments after one at a computed offset: wasmtime gives up
/// its memory image and runs every segment as code when an instance starts, the form of start-up
/// code whose stack frame grows fastest on the baseline engine (`initializers`).
pub fn data_bomb(segments: usize) -> Vec<u8> {
    module(&format!(
        r#"(data (offset (i32.add (i32.const 0) (i32.const 0))) "") {}
        (func (export "execute") (param $in i32) (result i32) (local.get $in))"#,
        r#"(data (i32.const 0) "") "#.repeat(segments)
    ))
}

/// `counter`, but a call whose input is 3 characters long (`"t"`) traps after counting: a call
/// that fails midway, its state torn.
pub fn counter_trapping() -> Vec<u8> {
    module(
        r#"(global $count (mut i32) (i32.const 0))
        (func (export "execute") (param $in i32) (result i32) (local $out i32)
          (global.set $count (i32.add (global.get $count) (i32.const 1)))
          (if (i32.eq (i32.load (i32.sub (local.get $in) (i32.const 4))) (i32.const 6)) (then unreachable))
          (local.set $out (call $new (i32.const 2) (i32.const 2)))
          (i32.store16 (local.get $out) (i32.add (i32.const 48) (i32.rem_u (global.get $count) (i32.const 10))))
          (local.get $out))"#,
    )
}

/// Grows its memory to 8 pages (512 KiB, enough for its instance to be dropped on the reaper's
/// thread), answers whether the byte at 400,000 was already written ("1") or not ("0"), then
/// writes 64 KiB there: an instance that saw another's memory would answer "1".
pub fn leftover_probe() -> Vec<u8> {
    module(
        r#"(func (export "execute") (param $in i32) (result i32) (local $out i32) (local $seen i32)
          (if (i32.lt_u (memory.size) (i32.const 8)) (then (drop (memory.grow (i32.sub (i32.const 8) (memory.size))))))
          (local.set $seen (i32.ne (i32.load8_u (i32.const 400000)) (i32.const 0)))
          (memory.fill (i32.const 400000) (i32.const 0xab) (i32.const 65536))
          (local.set $out (call $new (i32.const 2) (i32.const 2)))
          (i32.store16 (local.get $out) (i32.add (i32.const 48) (local.get $seen)))
          (local.get $out))"#,
    )
}
