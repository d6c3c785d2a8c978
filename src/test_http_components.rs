//! WAT components that use wasi:http (requests, headers, bodies) for the tests: each does one
//! thing a hostile guest might, and answers whether it could.

use crate::test_components::READ_N;

/// The last lines of each: `execute` lifted from the core instance `$m`, its strings in `$libc`.
/// The answer "1" (the `execute` export's result record at 64), as the last instructions of a
/// core `execute` whose memory is `$libc`'s.
pub(crate) const ANSWER_ONE: &str = r#"(i32.store8 (i32.const 1039) (i32.const 49))
      (i32.store8 (i32.const 64) (i32.const 0))
      (i32.store (i32.const 68) (i32.const 1039))
      (i32.store (i32.const 72) (i32.const 1))
      (i32.const 64)"#;

/// The component's `execute`, lifted from `$m`'s with `$libc`'s memory and realloc.
pub(crate) const LIFT_EXECUTE: &str = r#"  (func (export "execute") (param "input" string) (result (result string (error string)))
    (canon lift (core func $m "execute") (memory (core memory $libc "memory")) (realloc (core func $libc "realloc"))
      (post-return (core func $m "cabi_post_execute")))))"#;

/// What `http_setter_component` sets on its request.
pub enum RequestPart {
    /// `set-method` to `other` of the name.
    Method,
    /// `set-authority` to `some` of it.
    Authority,
    /// `set-path-with-query` to `some` of it.
    Path,
}


/// A component that makes one outgoing request and sets its method (to `other`), its authority or
/// its path to as many `A`s (`/`s for a path) as its input says; it answers 1 if that was taken, 0 if refused.
pub fn http_setter_component(part: RequestPart) -> Vec<u8> {
    // Both lower to (self, case, pointer, length): `other` is the method's case 9, `some` 1.
    // Filled with `A`s, a path with `/`s.
    let (setter, param, case, fill) = match part {
        RequestPart::Method => ("set-method", r#"(param "method" $me)"#, "9", "65"),
        RequestPart::Authority => ("set-authority", r#"(param "authority" (option string))"#, "1", "65"),
        RequestPart::Path => ("set-path-with-query", r#"(param "path-with-query" (option string))"#, "1", "47"),
    };
    let text = r#"(component $C
  (import "wasi:http/types@0.2.0" (instance $t
    (export "fields" (type $f (sub resource)))
    (export "outgoing-request" (type $req (sub resource)))
    (type $m (variant (case "get") (case "head") (case "post") (case "put") (case "delete") (case "connect")
      (case "options") (case "trace") (case "patch") (case "other" string)))
    (export "method" (type $me (eq $m)))
    (export "[constructor]fields" (func (result (own $f))))
    (export "[constructor]outgoing-request" (func (param "headers" (own $f)) (result (own $req))))
    (export "[method]outgoing-request.SETTER" (func (param "self" (borrow $req)) PARAM (result (result))))))
  (core module $libc
    (memory (export "memory") 2)
    (global $bump (mut i32) (i32.const 65536))
    (func (export "realloc") (param i32 i32) (param $align i32) (param $size i32) (result i32)
      (local $at i32)
      (local.set $at (i32.and (i32.add (global.get $bump) (i32.sub (local.get $align) (i32.const 1)))
        (i32.sub (i32.const 0) (local.get $align))))
      (global.set $bump (i32.add (local.get $at) (local.get $size)))
      (local.get $at)))
  (core instance $libc (instantiate $libc))
  (core func $fnew (canon lower (func $t "[constructor]fields")))
  (core func $rnew (canon lower (func $t "[constructor]outgoing-request")))
  (core func $setm (canon lower (func $t "[method]outgoing-request.SETTER") (memory (core memory $libc "memory")) (realloc (core func $libc "realloc"))))
  (core module $main
    (import "libc" "memory" (memory 1))
    (import "host" "fnew" (func $fnew (result i32)))
    (import "host" "rnew" (func $rnew (param i32) (result i32)))
    (import "host" "setm" (func $setm (param i32 i32 i32 i32) (result i32)))
    (func (export "execute") (param $p i32) (param $len i32) (result i32)
      READ_N
      (memory.fill (i32.const 2048) (i32.const FILL) (local.get $n))
      ;; other(name) or some(name), the name at 2048; ok is 0, err 1
      (i32.store8 (i32.const 1039) (i32.sub (i32.const 49)
        (call $setm (call $rnew (call $fnew)) (i32.const CASE) (i32.const 2048) (local.get $n))))
      (i32.store8 (i32.const 64) (i32.const 0))
      (i32.store (i32.const 68) (i32.const 1039))
      (i32.store (i32.const 72) (i32.const 1))
      (i32.const 64))
    (func (export "cabi_post_execute") (param i32)))
  (core instance $m (instantiate $main (with "libc" (instance $libc))
    (with "host" (instance (export "fnew" (func $fnew)) (export "rnew" (func $rnew)) (export "setm" (func $setm))))))
LIFT_EXECUTE"#;
    wat::parse_str(text.replace("READ_N", READ_N).replace("LIFT_EXECUTE", LIFT_EXECUTE).replace("SETTER", setter).replace("PARAM", param).replace("CASE", case).replace("FILL", fill)).expect("test component parses")
}

/// A component that makes as many wasi:http `fields` as its input says and keeps them; answers "1".
pub fn fields_component() -> Vec<u8> {
    wat::parse_str(
        r#"(component $C
  (import "wasi:http/types@0.2.0" (instance $t
    (export "fields" (type $f (sub resource)))
    (export "[constructor]fields" (func (result (own $f))))))
  (core module $libc
    (memory (export "memory") 1)
    (func (export "realloc") (param i32 i32 i32 i32) (result i32) (i32.const 4096)))
  (core instance $libc (instantiate $libc))
  (core func $fnew (canon lower (func $t "[constructor]fields")))
  (core module $main
    (import "libc" "memory" (memory 1))
    (import "host" "fnew" (func $fnew (result i32)))
    (func (export "execute") (param $p i32) (param $len i32) (result i32)
      READ_N
      (local.set $i (i32.const 0))
      (block $d (loop $l (br_if $d (i32.ge_u (local.get $i) (local.get $n)))
        (drop (call $fnew)) (local.set $i (i32.add (local.get $i) (i32.const 1))) (br $l)))
      (i32.store8 (i32.const 1039) (i32.const 49))
      (i32.store8 (i32.const 64) (i32.const 0))
      (i32.store (i32.const 68) (i32.const 1039))
      (i32.store (i32.const 72) (i32.const 1))
      (i32.const 64))
    (func (export "cabi_post_execute") (param i32)))
  (core instance $m (instantiate $main (with "libc" (instance $libc)) (with "host" (instance (export "fnew" (func $fnew))))))
LIFT_EXECUTE"#
            .replace("READ_N", READ_N).replace("LIFT_EXECUTE", LIFT_EXECUTE),
    )
    .expect("test component parses")
}

/// A component that makes as many wasi:http `fields` as its input says, each holding one 64 KiB
/// header value, and keeps them; answers "1".
pub fn valued_fields_component() -> Vec<u8> {
    valued_fields_component_with(
        r#"(local.set $i (i32.const 0))
      (block $d (loop $l (br_if $d (i32.ge_u (local.get $i) (local.get $n)))
        (call $fappend (call $fnew) (i32.const 200) (i32.const 3) (i32.const 65536) (i32.const 65536) (i32.const 128))
        (local.set $i (i32.add (local.get $i) (i32.const 1))) (br $l)))"#,
    )
}

/// The `fields` component whose `execute` reads its input's number into `$n` and then runs
/// `make` (with `$fnew`, `$fappend`, a name "x-a" at 200 and 64 KiB of "a" at 65536).
fn valued_fields_component_with(make: &str) -> Vec<u8> {
    wat::parse_str(
        r#"(component $C
  (import "wasi:http/types@0.2.0" (instance $t
    (export "fields" (type $f (sub resource)))
    (type $he (variant (case "invalid-syntax") (case "forbidden") (case "immutable")))
    (export "header-error" (type $hee (eq $he)))
    (type $r (result (error $hee)))
    (export "[constructor]fields" (func (result (own $f))))
    (export "[method]fields.append" (func (param "self" (borrow $f)) (param "name" string) (param "value" (list u8)) (result $r)))))
  (core module $libc
    (memory (export "memory") 2)
    (func (export "realloc") (param i32 i32 i32 i32) (result i32) (i32.const 4096)))
  (core instance $libc (instantiate $libc))
  (core func $fnew (canon lower (func $t "[constructor]fields")))
  (core func $fappend (canon lower (func $t "[method]fields.append") (memory (core memory $libc "memory"))))
  (core module $main
    (import "libc" "memory" (memory 2))
    (import "host" "fnew" (func $fnew (result i32)))
    (import "host" "fappend" (func $fappend (param i32 i32 i32 i32 i32 i32)))
    (data (i32.const 200) "x-a")
    (func (export "execute") (param $p i32) (param $len i32) (result i32) (local $f i32) (local $j i32)
      READ_N
      (memory.fill (i32.const 65536) (i32.const 97) (i32.const 65536))
      MAKE_FIELDS
      (i32.store8 (i32.const 1039) (i32.const 49))
      (i32.store8 (i32.const 64) (i32.const 0))
      (i32.store (i32.const 68) (i32.const 1039))
      (i32.store (i32.const 72) (i32.const 1))
      (i32.const 64))
    (func (export "cabi_post_execute") (param i32)))
  (core instance $m (instantiate $main (with "libc" (instance $libc))
    (with "host" (instance (export "fnew" (func $fnew)) (export "fappend" (func $fappend))))))
LIFT_EXECUTE"#
            .replace("READ_N", READ_N).replace("MAKE_FIELDS", make).replace("LIFT_EXECUTE", LIFT_EXECUTE),
    )
    .expect("test component parses")
}

/// A component that makes as many wasi:http `fields` as its input says, each holding 3,000
/// one-byte values under one name, and keeps them; answers "1".
pub fn many_values_fields_component() -> Vec<u8> {
    valued_fields_component_with(
        r#"(local.set $i (i32.const 0))
      (block $d (loop $l (br_if $d (i32.ge_u (local.get $i) (local.get $n)))
        (local.set $f (call $fnew))
        (local.set $j (i32.const 0))
        (block $e (loop $k (br_if $e (i32.ge_u (local.get $j) (i32.const 3000)))
          (call $fappend (local.get $f) (i32.const 200) (i32.const 3) (i32.const 65536) (i32.const 1) (i32.const 128))
          (local.set $j (i32.add (local.get $j) (i32.const 1))) (br $k)))
        (local.set $i (i32.add (local.get $i) (i32.const 1))) (br $l)))"#,
    )
}

/// A component that makes as many wasi:http outgoing requests as its input says, writes 2 x 64 KiB
/// into each one's body, drops the body and its stream, and keeps the requests; answers "1" (or
/// "0" if a write was refused).
pub fn body_writes_component() -> Vec<u8> {
    wat::parse_str(
        r#"(component $C
  (import "wasi:io/error@0.2.0" (instance $err (export "error" (type (sub resource)))))
  (alias export $err "error" (type $error))
  (import "wasi:io/streams@0.2.0" (instance $streams
    (alias outer $C $error (type $e)) (export "error" (type $ee (eq $e)))
    (export "output-stream" (type $os (sub resource)))
    (type $se (variant (case "last-operation-failed" (own $ee)) (case "closed")))
    (export "stream-error" (type $see (eq $se)))
    (export "[method]output-stream.write" (func (param "self" (borrow $os)) (param "contents" (list u8)) (result (result (error $see)))))))
  (alias export $streams "output-stream" (type $ostream))
  (import "wasi:http/types@0.2.0" (instance $t
    (alias outer $C $ostream (type $os)) (export "output-stream" (type $ose (eq $os)))
    (export "fields" (type $f (sub resource)))
    (export "outgoing-request" (type $req (sub resource)))
    (export "outgoing-body" (type $body (sub resource)))
    (export "[constructor]fields" (func (result (own $f))))
    (export "[constructor]outgoing-request" (func (param "headers" (own $f)) (result (own $req))))
    (export "[method]outgoing-request.body" (func (param "self" (borrow $req)) (result (result (own $body)))))
    (export "[method]outgoing-body.write" (func (param "self" (borrow $body)) (result (result (own $ose)))))))
  (alias export $t "outgoing-body" (type $bodyt))
  (core module $libc
    (memory (export "memory") 3)
    (func (export "realloc") (param i32 i32 i32 i32) (result i32) (i32.const 4096)))
  (core instance $libc (instantiate $libc))
  (core func $fnew (canon lower (func $t "[constructor]fields")))
  (core func $rnew (canon lower (func $t "[constructor]outgoing-request")))
  (core func $rbody (canon lower (func $t "[method]outgoing-request.body") (memory (core memory $libc "memory"))))
  (core func $bwrite (canon lower (func $t "[method]outgoing-body.write") (memory (core memory $libc "memory"))))
  (core func $sw (canon lower (func $streams "[method]output-stream.write") (memory (core memory $libc "memory"))))
  (core func $dstream (canon resource.drop $ostream))
  (core func $dbody (canon resource.drop $bodyt))
  (core module $main
    (import "libc" "memory" (memory 3))
    (import "host" "fnew" (func $fnew (result i32)))
    (import "host" "rnew" (func $rnew (param i32) (result i32)))
    (import "host" "rbody" (func $rbody (param i32 i32)))
    (import "host" "bwrite" (func $bwrite (param i32 i32)))
    (import "host" "sw" (func $sw (param i32 i32 i32 i32)))
    (import "host" "dstream" (func $dstream (param i32)))
    (import "host" "dbody" (func $dbody (param i32)))
    (func (export "execute") (param $p i32) (param $len i32) (result i32)
      (local $req i32) (local $body i32) (local $s i32) (local $k i32) (local $ok i32)
      READ_N
      (local.set $ok (i32.const 49))
      (memory.fill (i32.const 65536) (i32.const 97) (i32.const 65536))
      (local.set $i (i32.const 0))
      (block $d (loop $l (br_if $d (i32.ge_u (local.get $i) (local.get $n)))
        (local.set $req (call $rnew (call $fnew)))
        (call $rbody (local.get $req) (i32.const 128))
        (local.set $body (i32.load (i32.const 132)))
        (call $bwrite (local.get $body) (i32.const 128))
        (local.set $s (i32.load (i32.const 132)))
        (local.set $k (i32.const 0))
        (block $wd (loop $wl (br_if $wd (i32.ge_u (local.get $k) (i32.const 2)))
          (call $sw (local.get $s) (i32.const 65536) (i32.const 65536) (i32.const 176))
          (if (i32.load8_u (i32.const 176)) (then (local.set $ok (i32.const 48)) (br $d)))
          (local.set $k (i32.add (local.get $k) (i32.const 1))) (br $wl)))
        (call $dstream (local.get $s))
        (call $dbody (local.get $body))
        (local.set $i (i32.add (local.get $i) (i32.const 1))) (br $l)))
      (i32.store8 (i32.const 1039) (local.get $ok))
      (i32.store8 (i32.const 64) (i32.const 0))
      (i32.store (i32.const 68) (i32.const 1039))
      (i32.store (i32.const 72) (i32.const 1))
      (i32.const 64))
    (func (export "cabi_post_execute") (param i32)))
  (core instance $m (instantiate $main (with "libc" (instance $libc)) (with "host" (instance
    (export "fnew" (func $fnew)) (export "rnew" (func $rnew)) (export "rbody" (func $rbody)) (export "bwrite" (func $bwrite))
    (export "sw" (func $sw)) (export "dstream" (func $dstream)) (export "dbody" (func $dbody))))))
LIFT_EXECUTE"#
            .replace("READ_N", READ_N).replace("LIFT_EXECUTE", LIFT_EXECUTE),
    )
    .expect("test component parses")
}
