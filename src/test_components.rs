//! Small WAT components (WASI preview 2) for the tests: each does one thing a hostile
//! component might, driven by its input. Those that use wasi:http are in `test_http_components`.

/// A component (WASI preview 2) that opens, for reading, the path its input names (a JSON string)
/// in its first preopened directory, following links: `{"opened":true}`, or `{"error":N}` with
/// N the index of wasi:filesystem's `error-code` (27: unsupported, 20: no-entry). A path written
/// `+path` has its times set to now instead (following links): `{"done":true}` or the error.
pub fn fs_open_component() -> Vec<u8> {
    let error_codes = "\"access\" \"would-block\" \"already\" \"bad-descriptor\" \"busy\" \"deadlock\" \"quota\" \
        \"exist\" \"file-too-large\" \"illegal-byte-sequence\" \"in-progress\" \"interrupted\" \"invalid\" \"io\" \
        \"is-directory\" \"loop\" \"too-many-links\" \"message-size\" \"name-too-long\" \"no-device\" \"no-entry\" \
        \"no-lock\" \"insufficient-memory\" \"insufficient-space\" \"not-directory\" \"not-empty\" \
        \"not-recoverable\" \"unsupported\" \"no-tty\" \"no-such-device\" \"overflow\" \"not-permitted\" \"pipe\" \
        \"read-only\" \"invalid-seek\" \"text-file-busy\" \"cross-device\"";
    wat::parse_str(format!(
        r#"(component $C
  (import "wasi:filesystem/types@0.2.0" (instance $types
    (export "descriptor" (type $desc (sub resource)))
    (type $pf (flags "symlink-follow"))
    (export "path-flags" (type $pfe (eq $pf)))
    (type $of (flags "create" "directory" "exclusive" "truncate"))
    (export "open-flags" (type $ofe (eq $of)))
    (type $df (flags "read" "write" "file-integrity-sync" "data-integrity-sync" "requested-write-sync" "mutate-directory"))
    (export "descriptor-flags" (type $dfe (eq $df)))
    (type $ec (enum {error_codes}))
    (export "error-code" (type $ece (eq $ec)))
    (type $dt (record (field "seconds" u64) (field "nanoseconds" u32)))
    (export "datetime" (type $dte (eq $dt)))
    (type $nt (variant (case "no-change") (case "now") (case "timestamp" $dte)))
    (export "new-timestamp" (type $nte (eq $nt)))
    (type $own (own $desc))
    (type $borrow (borrow $desc))
    (type $res (result $own (error $ece)))
    (type $unit (result (error $ece)))
    (export "[method]descriptor.open-at" (func (param "self" $borrow) (param "path-flags" $pfe) (param "path" string)
      (param "open-flags" $ofe) (param "flags" $dfe) (result $res)))
    (export "[method]descriptor.set-times-at" (func (param "self" $borrow) (param "path-flags" $pfe) (param "path" string)
      (param "data-access-timestamp" $nte) (param "data-modification-timestamp" $nte) (result $unit)))))
  (alias export $types "descriptor" (type $desc))
  (import "wasi:filesystem/preopens@0.2.0" (instance $preopens
    (alias outer $C $desc (type $d))
    (export "descriptor" (type $de (eq $d)))
    (type $own (own $de))
    (type $t (tuple $own string))
    (type $l (list $t))
    (export "get-directories" (func (result $l)))))
  (core module $libc
    (memory (export "memory") 1)
    (global $bump (mut i32) (i32.const 4096))
    (func (export "realloc") (param i32 i32) (param $align i32) (param $size i32) (result i32)
      (local $at i32)
      (local.set $at (i32.and (i32.add (global.get $bump) (i32.sub (local.get $align) (i32.const 1)))
        (i32.sub (i32.const 0) (local.get $align))))
      (global.set $bump (i32.add (local.get $at) (local.get $size)))
      (local.get $at)))
  (core instance $libc (instantiate $libc))
  (core func $open_at (canon lower (func $types "[method]descriptor.open-at")
    (memory (core memory $libc "memory")) (realloc (core func $libc "realloc"))))
  (core func $set_times (canon lower (func $types "[method]descriptor.set-times-at")
    (memory (core memory $libc "memory")) (realloc (core func $libc "realloc"))))
  (core func $get_dirs (canon lower (func $preopens "get-directories")
    (memory (core memory $libc "memory")) (realloc (core func $libc "realloc"))))
  (core module $main
    (import "libc" "memory" (memory 1))
    (import "host" "open-at" (func $open_at (param i32 i32 i32 i32 i32 i32 i32)))
    (import "host" "set-times-at" (func $set_times (param i32 i32 i32 i32 i32 i64 i32 i32 i64 i32 i32)))
    (import "host" "get-directories" (func $get_dirs (param i32)))
    (data (i32.const 256) "{{\"opened\":true}}")
    (data (i32.const 288) "{{\"error\":00}}")
    (data (i32.const 320) "{{\"done\":true}}")
    ;; ok(JSON text) at 64: ok_ptr/ok_len when `failed` is 0, else {{"error":code}}
    (func $answer (param $failed i32) (param $code i32) (param $ok_ptr i32) (param $ok_len i32) (result i32)
      (i32.store8 (i32.const 64) (i32.const 0))
      (if (i32.eqz (local.get $failed))
        (then (i32.store (i32.const 68) (local.get $ok_ptr)) (i32.store (i32.const 72) (local.get $ok_len)))
        (else
          (i32.store8 (i32.const 297) (i32.add (i32.const 48) (i32.div_u (local.get $code) (i32.const 10))))
          (i32.store8 (i32.const 298) (i32.add (i32.const 48) (i32.rem_u (local.get $code) (i32.const 10))))
          (i32.store (i32.const 68) (i32.const 288)) (i32.store (i32.const 72) (i32.const 12))))
      (i32.const 64))
    (func (export "execute") (param $p i32) (param $len i32) (result i32)
      (local $dir i32)
      (call $get_dirs (i32.const 16))
      ;; the first preopen's handle; the path is the input without its quotes
      (local.set $dir (i32.load (i32.load (i32.const 16))))
      (if (i32.eq (i32.load8_u (i32.add (local.get $p) (i32.const 1))) (i32.const 43))
        (then
          ;; "+path": set-times-at(dir, follow, path, now, now); result<_, error-code>: the code at +1
          (call $set_times (local.get $dir) (i32.const 1)
            (i32.add (local.get $p) (i32.const 2)) (i32.sub (local.get $len) (i32.const 3))
            (i32.const 1) (i64.const 0) (i32.const 0) (i32.const 1) (i64.const 0) (i32.const 0) (i32.const 32))
          (return (call $answer (i32.load8_u (i32.const 32)) (i32.load8_u (i32.const 33)) (i32.const 320) (i32.const 13)))))
      (call $open_at (local.get $dir) (i32.const 1)
        (i32.add (local.get $p) (i32.const 1)) (i32.sub (local.get $len) (i32.const 2))
        (i32.const 0) (i32.const 1) (i32.const 32))
      ;; result<own<descriptor>, error-code>: the code at +4
      (call $answer (i32.load8_u (i32.const 32)) (i32.load8_u (i32.const 36)) (i32.const 256) (i32.const 15)))
    (func (export "cabi_post_execute") (param i32)))
  (core instance $m (instantiate $main
    (with "libc" (instance $libc))
    (with "host" (instance (export "open-at" (func $open_at)) (export "set-times-at" (func $set_times))
      (export "get-directories" (func $get_dirs))))))
  (func (export "execute") (param "input" string) (result (result string (error string)))
    (canon lift (core func $m "execute") (memory (core memory $libc "memory")) (realloc (core func $libc "realloc"))
      (post-return (core func $m "cabi_post_execute")))))"#
    ))
    .expect("test component parses")
}

/// A component that opens `f` in its first preopened directory N times (N its input, a JSON
/// number), each time keeping a stream of the file (`read-via-stream`) and dropping the
/// descriptor: the host file stays open through the stream. Answers `opened * 100 + code`, code
/// the `error-code` index that stopped it (13: io), or 99 when `read-via-stream` failed.
pub fn fs_stream_component() -> Vec<u8> {
    wat::parse_str(
        r#"(component $C
  (import "wasi:io/streams@0.2.0" (instance $streams (export "input-stream" (type (sub resource)))))
  (alias export $streams "input-stream" (type $is))
  (import "wasi:filesystem/types@0.2.0" (instance $types
    (alias outer $C $is (type $is_outer))
    (export "input-stream" (type $ise (eq $is_outer)))
    (export "descriptor" (type $desc (sub resource)))
    (type $pf (flags "symlink-follow"))
    (export "path-flags" (type $pfe (eq $pf)))
    (type $of (flags "create" "directory" "exclusive" "truncate"))
    (export "open-flags" (type $ofe (eq $of)))
    (type $df (flags "read" "write" "file-integrity-sync" "data-integrity-sync" "requested-write-sync" "mutate-directory"))
    (export "descriptor-flags" (type $dfe (eq $df)))
    (type $ec (enum "access" "would-block" "already" "bad-descriptor" "busy" "deadlock" "quota" "exist"
      "file-too-large" "illegal-byte-sequence" "in-progress" "interrupted" "invalid" "io" "is-directory" "loop"
      "too-many-links" "message-size" "name-too-long" "no-device" "no-entry" "no-lock" "insufficient-memory"
      "insufficient-space" "not-directory" "not-empty" "not-recoverable" "unsupported" "no-tty" "no-such-device"
      "overflow" "not-permitted" "pipe" "read-only" "invalid-seek" "text-file-busy" "cross-device"))
    (export "error-code" (type $ece (eq $ec)))
    (type $own (own $desc))
    (type $borrow (borrow $desc))
    (type $res (result $own (error $ece)))
    (type $own_is (own $ise))
    (type $sres (result $own_is (error $ece)))
    (export "[method]descriptor.open-at" (func (param "self" $borrow) (param "path-flags" $pfe) (param "path" string)
      (param "open-flags" $ofe) (param "flags" $dfe) (result $res)))
    (export "[method]descriptor.read-via-stream" (func (param "self" $borrow) (param "offset" u64) (result $sres)))))
  (alias export $types "descriptor" (type $desc))
  (import "wasi:filesystem/preopens@0.2.0" (instance $preopens
    (alias outer $C $desc (type $d))
    (export "descriptor" (type $de (eq $d)))
    (type $own (own $de))
    (type $t (tuple $own string))
    (type $l (list $t))
    (export "get-directories" (func (result $l)))))
  (core module $libc
    (memory (export "memory") 1)
    (global $bump (mut i32) (i32.const 4096))
    (func (export "realloc") (param i32 i32) (param $align i32) (param $size i32) (result i32)
      (local $at i32)
      (local.set $at (i32.and (i32.add (global.get $bump) (i32.sub (local.get $align) (i32.const 1)))
        (i32.sub (i32.const 0) (local.get $align))))
      (global.set $bump (i32.add (local.get $at) (local.get $size)))
      (local.get $at)))
  (core instance $libc (instantiate $libc))
  (core func $open_at (canon lower (func $types "[method]descriptor.open-at")
    (memory (core memory $libc "memory")) (realloc (core func $libc "realloc"))))
  (core func $read_via_stream (canon lower (func $types "[method]descriptor.read-via-stream")
    (memory (core memory $libc "memory")) (realloc (core func $libc "realloc"))))
  (core func $get_dirs (canon lower (func $preopens "get-directories")
    (memory (core memory $libc "memory")) (realloc (core func $libc "realloc"))))
  (core func $drop_desc (canon resource.drop $desc))
  (core module $main
    (import "libc" "memory" (memory 1))
    (import "host" "open-at" (func $open_at (param i32 i32 i32 i32 i32 i32 i32)))
    (import "host" "read-via-stream" (func $rvs (param i32 i64 i32)))
    (import "host" "get-directories" (func $get_dirs (param i32)))
    (import "host" "drop-descriptor" (func $drop (param i32)))
    (data (i32.const 200) "f")
    (func (export "execute") (param $p i32) (param $len i32) (result i32)
      (local $n i32) (local $i i32) (local $dir i32) (local $fd i32) (local $ok i32) (local $code i32) (local $t i32)
      ;; N: the input's digits
      (block $d (loop $l (br_if $d (i32.ge_u (local.get $i) (local.get $len)))
        (local.set $n (i32.add (i32.mul (local.get $n) (i32.const 10))
          (i32.sub (i32.load8_u (i32.add (local.get $p) (local.get $i))) (i32.const 48))))
        (local.set $i (i32.add (local.get $i) (i32.const 1))) (br $l)))
      (call $get_dirs (i32.const 16))
      (local.set $dir (i32.load (i32.load (i32.const 16))))
      (block $out (loop $l (br_if $out (i32.ge_u (local.get $ok) (local.get $n)))
        ;; open-at(dir, 0, "f", 0, read): result<own<descriptor>, error-code> at 32
        (call $open_at (local.get $dir) (i32.const 0) (i32.const 200) (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 32))
        (if (i32.load8_u (i32.const 32)) (then (local.set $code (i32.load8_u (i32.const 36))) (br $out)))
        (local.set $fd (i32.load (i32.const 36)))
        ;; the stream is kept; the descriptor goes
        (call $rvs (local.get $fd) (i64.const 0) (i32.const 48))
        (if (i32.load8_u (i32.const 48)) (then (local.set $code (i32.const 99)) (br $out)))
        (call $drop (local.get $fd))
        (local.set $ok (i32.add (local.get $ok) (i32.const 1))) (br $l)))
      ;; ok(decimal of ok * 100 + code), written backwards from 1040
      (local.set $t (i32.add (i32.mul (local.get $ok) (i32.const 100)) (local.get $code)))
      (local.set $i (i32.const 1040))
      (loop $w (local.set $i (i32.sub (local.get $i) (i32.const 1)))
        (i32.store8 (local.get $i) (i32.add (i32.const 48) (i32.rem_u (local.get $t) (i32.const 10))))
        (local.set $t (i32.div_u (local.get $t) (i32.const 10)))
        (br_if $w (local.get $t)))
      (i32.store8 (i32.const 64) (i32.const 0))
      (i32.store (i32.const 68) (local.get $i))
      (i32.store (i32.const 72) (i32.sub (i32.const 1040) (local.get $i)))
      (i32.const 64))
    (func (export "cabi_post_execute") (param i32)))
  (core instance $m (instantiate $main
    (with "libc" (instance $libc))
    (with "host" (instance (export "open-at" (func $open_at)) (export "read-via-stream" (func $read_via_stream))
      (export "get-directories" (func $get_dirs)) (export "drop-descriptor" (func $drop_desc))))))
  (func (export "execute") (param "input" string) (result (result string (error string)))
    (canon lift (core func $m "execute") (memory (core memory $libc "memory")) (realloc (core func $libc "realloc"))
      (post-return (core func $m "cabi_post_execute")))))"#,
    )
    .expect("test component parses")
}

/// A component that makes N `read-directory` listings of its preopen and keeps them (input "N"), or
/// reads each whole and drops it (input "dN"). Output: ok × 1,000,000 + the first listing's entries
/// × 100 + the error code that stopped it (`insufficient-memory` is 22).
pub fn fs_listing_component() -> Vec<u8> {
    wat::parse_str(
        r#"(component $C
  (import "wasi:filesystem/types@0.2.0" (instance $types
    (export "descriptor" (type $desc (sub resource)))
    (export "directory-entry-stream" (type $des (sub resource)))
    (type $dt (enum "unknown" "block-device" "character-device" "directory" "fifo" "symbolic-link" "regular-file" "socket"))
    (export "descriptor-type" (type $dte (eq $dt)))
    (type $de (record (field "type" $dte) (field "name" string)))
    (export "directory-entry" (type $dee (eq $de)))
    (type $ec (enum "access" "would-block" "already" "bad-descriptor" "busy" "deadlock" "quota" "exist"
      "file-too-large" "illegal-byte-sequence" "in-progress" "interrupted" "invalid" "io" "is-directory" "loop"
      "too-many-links" "message-size" "name-too-long" "no-device" "no-entry" "no-lock" "insufficient-memory"
      "insufficient-space" "not-directory" "not-empty" "not-recoverable" "unsupported" "no-tty" "no-such-device"
      "overflow" "not-permitted" "pipe" "read-only" "invalid-seek" "text-file-busy" "cross-device"))
    (export "error-code" (type $ece (eq $ec)))
    (type $borrow (borrow $desc))
    (type $own_des (own $des))
    (type $rd (result $own_des (error $ece)))
    (export "[method]descriptor.read-directory" (func (param "self" $borrow) (result $rd)))
    (type $borrow_des (borrow $des))
    (type $opt (option $dee))
    (type $rde (result $opt (error $ece)))
    (export "[method]directory-entry-stream.read-directory-entry" (func (param "self" $borrow_des) (result $rde)))))
  (alias export $types "descriptor" (type $desc))
  (alias export $types "directory-entry-stream" (type $des))
  (import "wasi:filesystem/preopens@0.2.0" (instance $preopens
    (alias outer $C $desc (type $d))
    (export "descriptor" (type $de (eq $d)))
    (type $own (own $de))
    (type $t (tuple $own string))
    (type $l (list $t))
    (export "get-directories" (func (result $l)))))
  (core module $libc
    (memory (export "memory") 16)
    (global $bump (mut i32) (i32.const 4096))
    (func (export "realloc") (param i32 i32) (param $align i32) (param $size i32) (result i32)
      (local $at i32)
      (local.set $at (i32.and (i32.add (global.get $bump) (i32.sub (local.get $align) (i32.const 1)))
        (i32.sub (i32.const 0) (local.get $align))))
      (global.set $bump (i32.add (local.get $at) (local.get $size)))
      ;; names are read and forgotten: the bump starts over past 512 KiB
      (if (i32.gt_u (global.get $bump) (i32.const 524288)) (then (global.set $bump (i32.const 4096))))
      (local.get $at)))
  (core instance $libc (instantiate $libc))
  (core func $read_dir (canon lower (func $types "[method]descriptor.read-directory")
    (memory (core memory $libc "memory")) (realloc (core func $libc "realloc"))))
  (core func $read_entry (canon lower (func $types "[method]directory-entry-stream.read-directory-entry")
    (memory (core memory $libc "memory")) (realloc (core func $libc "realloc"))))
  (core func $get_dirs (canon lower (func $preopens "get-directories")
    (memory (core memory $libc "memory")) (realloc (core func $libc "realloc"))))
  (core func $drop_des (canon resource.drop $des))
  (core module $main
    (import "libc" "memory" (memory 1))
    (import "host" "read-directory" (func $read_dir (param i32 i32)))
    (import "host" "read-entry" (func $read_entry (param i32 i32)))
    (import "host" "get-directories" (func $get_dirs (param i32)))
    (import "host" "drop-stream" (func $drop (param i32)))
    (func (export "execute") (param $p i32) (param $len i32) (result i32)
      (local $n i32) (local $i i32) (local $dir i32) (local $s i32) (local $ok i32) (local $code i32) (local $t i32)
      (local $drop i32) (local $first i32) (local $count i32)
      (if (i32.eq (i32.load8_u (local.get $p)) (i32.const 100)) (then (local.set $drop (i32.const 1)) (local.set $i (i32.const 1))))
      (block $d (loop $l (br_if $d (i32.ge_u (local.get $i) (local.get $len)))
        (local.set $n (i32.add (i32.mul (local.get $n) (i32.const 10))
          (i32.sub (i32.load8_u (i32.add (local.get $p) (local.get $i))) (i32.const 48))))
        (local.set $i (i32.add (local.get $i) (i32.const 1))) (br $l)))
      (call $get_dirs (i32.const 16))
      (local.set $dir (i32.load (i32.load (i32.const 16))))
      (local.set $first (i32.const -1))
      (block $out (loop $l (br_if $out (i32.ge_u (local.get $ok) (local.get $n)))
        (call $read_dir (local.get $dir) (i32.const 32))
        (if (i32.load8_u (i32.const 32)) (then (local.set $code (i32.load8_u (i32.const 36))) (br $out)))
        (local.set $s (i32.load (i32.const 36)))
        (if (i32.or (local.get $drop) (i32.lt_s (local.get $first) (i32.const 0))) (then
          ;; read it whole: result<option<directory-entry>, error-code> at 48
          (local.set $count (i32.const 0))
          (block $end (loop $e
            (call $read_entry (local.get $s) (i32.const 48))
            (br_if $end (i32.load8_u (i32.const 48)))
            (br_if $end (i32.eqz (i32.load8_u (i32.const 52))))
            (local.set $count (i32.add (local.get $count) (i32.const 1))) (br $e)))
          (if (i32.lt_s (local.get $first) (i32.const 0)) (then (local.set $first (local.get $count))))))
        (if (local.get $drop) (then (call $drop (local.get $s))))
        (local.set $ok (i32.add (local.get $ok) (i32.const 1))) (br $l)))
      (if (i32.lt_s (local.get $first) (i32.const 0)) (then (local.set $first (i32.const 0))))
      (local.set $t (i32.add (i32.add (i32.mul (local.get $ok) (i32.const 1000000)) (i32.mul (local.get $first) (i32.const 100))) (local.get $code)))
      (local.set $i (i32.const 1040))
      (loop $w (local.set $i (i32.sub (local.get $i) (i32.const 1)))
        (i32.store8 (local.get $i) (i32.add (i32.const 48) (i32.rem_u (local.get $t) (i32.const 10))))
        (local.set $t (i32.div_u (local.get $t) (i32.const 10)))
        (br_if $w (local.get $t)))
      (i32.store8 (i32.const 64) (i32.const 0))
      (i32.store (i32.const 68) (local.get $i))
      (i32.store (i32.const 72) (i32.sub (i32.const 1040) (local.get $i)))
      (i32.const 64))
    (func (export "cabi_post_execute") (param i32)))
  (core instance $m (instantiate $main
    (with "libc" (instance $libc))
    (with "host" (instance (export "read-directory" (func $read_dir)) (export "read-entry" (func $read_entry))
      (export "get-directories" (func $get_dirs)) (export "drop-stream" (func $drop_des))))))
  (func (export "execute") (param "input" string) (result (result string (error string)))
    (canon lift (core func $m "execute") (memory (core memory $libc "memory")) (realloc (core func $libc "realloc"))
      (post-return (core func $m "cabi_post_execute")))))"#,
    )
    .expect("test component parses")
}

/// WAT for an `execute(p, len)`'s first lines: `$n` is the decimal number its input spells.
pub(crate) const READ_N: &str = r#"(local $n i32) (local $i i32)
      (block $d (loop $l (br_if $d (i32.ge_u (local.get $i) (local.get $len)))
        (local.set $n (i32.add (i32.mul (local.get $n) (i32.const 10))
          (i32.sub (i32.load8_u (i32.add (local.get $p) (local.get $i))) (i32.const 48))))
        (local.set $i (i32.add (local.get $i) (i32.const 1))) (br $l)))"#;

/// A component that asks wasi:random for as many bytes as its input says, once; answers "1".
pub fn random_component() -> Vec<u8> {
    wat::parse_str(
        r#"(component $C
  (import "wasi:random/random@0.2.0" (instance $r
    (export "get-random-bytes" (func (param "len" u64) (result (list u8))))))
  (core module $libc
    (memory (export "memory") 1)
    (func (export "realloc") (param i32 i32) (param $align i32) (param $size i32) (result i32)
      (local $pages i32)
      ;; a fresh region past the end each time
      (local.set $pages (i32.add (i32.shr_u (local.get $size) (i32.const 16)) (i32.const 1)))
      (i32.mul (memory.grow (local.get $pages)) (i32.const 65536))))
  (core instance $libc (instantiate $libc))
  (core func $get (canon lower (func $r "get-random-bytes") (memory (core memory $libc "memory")) (realloc (core func $libc "realloc"))))
  (core module $main
    (import "libc" "memory" (memory 1))
    (import "host" "get" (func $get (param i64 i32)))
    (func (export "execute") (param $p i32) (param $len i32) (result i32)
      (local $n i64) (local $i i32)
      (block $d (loop $l (br_if $d (i32.ge_u (local.get $i) (local.get $len)))
        (local.set $n (i64.add (i64.mul (local.get $n) (i64.const 10))
          (i64.extend_i32_u (i32.sub (i32.load8_u (i32.add (local.get $p) (local.get $i))) (i32.const 48)))))
        (local.set $i (i32.add (local.get $i) (i32.const 1))) (br $l)))
      (call $get (local.get $n) (i32.const 32))
      (i32.store8 (i32.const 1039) (i32.const 49))
      (i32.store8 (i32.const 64) (i32.const 0))
      (i32.store (i32.const 68) (i32.const 1039))
      (i32.store (i32.const 72) (i32.const 1))
      (i32.const 64))
    (func (export "cabi_post_execute") (param i32)))
  (core instance $m (instantiate $main (with "libc" (instance $libc)) (with "host" (instance (export "get" (func $get))))))
  (func (export "execute") (param "input" string) (result (result string (error string)))
    (canon lift (core func $m "execute") (memory (core memory $libc "memory")) (realloc (core func $libc "realloc"))
      (post-return (core func $m "cabi_post_execute")))))"#,
    )
    .expect("test component parses")
}

/// A component that fills its memory with as many `x` as its input says, then sends them as a log
/// line, a heartbeat, and the name of a host function it calls (with `{}`), which ends the call.
pub fn host_strings_component() -> Vec<u8> {
    wat::parse_str(
        r#"(component
  (import "loom:activity/host" (instance $h
    (export "log" (func (param "level" string) (param "message" string)))
    (export "progress" (func (param "detail" string)))
    (export "call" (func (param "name" string) (param "input" string) (result (result string (error string)))))))
  (core module $libc
    (memory (export "memory") 8)
    (global $next (mut i32) (i32.const 262144))
    (func (export "realloc") (param i32 i32 i32) (param $size i32) (result i32)
      (global.set $next (i32.add (global.get $next) (local.get $size)))
      (i32.sub (global.get $next) (local.get $size))))
  (core instance $libc (instantiate $libc))
  (core func $log (canon lower (func $h "log") (memory (core memory $libc "memory"))))
  (core func $progress (canon lower (func $h "progress") (memory (core memory $libc "memory"))))
  (core func $call (canon lower (func $h "call") (memory (core memory $libc "memory")) (realloc (core func $libc "realloc"))))
  (core module $main
    (import "libc" "memory" (memory 1))
    (import "host" "log" (func $log (param i32 i32 i32 i32)))
    (import "host" "progress" (func $progress (param i32 i32)))
    (import "host" "call" (func $call (param i32 i32 i32 i32 i32)))
    (data (i32.const 1024) "info{}")
    (func (export "execute") (param $p i32) (param $len i32) (result i32)
      READ_N
      (memory.fill (i32.const 65536) (i32.const 120) (local.get $n))
      (call $log (i32.const 1024) (i32.const 4) (i32.const 65536) (local.get $n))
      (call $progress (i32.const 65536) (local.get $n))
      (call $call (i32.const 65536) (local.get $n) (i32.const 1028) (i32.const 2) (i32.const 2048))
      ;; the host function is never granted: the call ends in it
      unreachable)
    (func (export "cabi_post_execute") (param i32)))
  (core instance $m (instantiate $main (with "libc" (instance $libc))
    (with "host" (instance (export "log" (func $log)) (export "progress" (func $progress)) (export "call" (func $call))))))
  (func (export "execute") (param "input" string) (result (result string (error string)))
    (canon lift (core func $m "execute") (memory (core memory $libc "memory")) (realloc (core func $libc "realloc"))
      (post-return (core func $m "cabi_post_execute")))))"#
            .replace("READ_N", READ_N),
    )
    .expect("test component parses")
}
