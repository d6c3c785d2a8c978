// An Extism plugin in C (freestanding, built with `zig cc`): several entrypoints, chosen by
// `definition.entrypoint`.
//   execute: the echo contract;            count: a counter actor kept in Extism vars;
//   config:  returns config value `greeting`; fail: error_set + return 1;
//   spin:    never returns;                 grow: grows memory until refused.
#include "extism.h"
#define ALLOC(n) ((uint8_t *)bump(n))
#include "json.h"

EXPORT("execute") int32_t execute(void) {
  uint64_t len;
  uint8_t *in = input_bytes(&len);
  buffer out = echo(in, len);
  output(out.p, out.n);
  return 0;
}

EXPORT("count") int32_t count(void) {
  uint64_t len;
  uint8_t *in = input_bytes(&len);
  slice action = json_string(json_value(in, len, "action"));
  int64_t amount = json_int(json_value(in, len, "amount"), 1);
  ExtismPointer key = to_block((const uint8_t *)"count", 5);
  int64_t n = 0;
  ExtismPointer stored = extism_var_get(key);
  if (stored && extism_length(stored) == 8) n = (int64_t)extism_load_u64(stored);
  if (slice_eq(action, "increment")) n += amount;
  else if (slice_eq(action, "decrement")) n -= amount;
  else if (slice_eq(action, "reset")) n = 0;
  else if (!slice_eq(action, "get")) {
    extism_error_set(to_block((const uint8_t *)"unknown action", 14));
    return 1;
  }
  ExtismPointer value = extism_alloc(8);
  extism_store_u64(value, (uint64_t)n);
  extism_var_set(key, value);
  buffer out = { 0, 0, 0 };
  put_str(&out, "{\"count\":");
  put_int(&out, n);
  put_str(&out, ",\"action\":\"");
  put(&out, action.p, action.n);
  put_str(&out, "\"}");
  output(out.p, out.n);
  return 0;
}

EXPORT("config") int32_t config(void) {
  ExtismPointer value = extism_config_get(to_block((const uint8_t *)"greeting", 8));
  buffer out = { 0, 0, 0 };
  put_str(&out, "{\"greeting\":");
  if (value) {
    uint64_t n;
    uint8_t *v = from_block(value, &n);
    put_str(&out, "\"");
    put(&out, v, n);
    put_str(&out, "\"");
  } else {
    put_str(&out, "null");
  }
  put_str(&out, "}");
  extism_log_info(to_block((const uint8_t *)"config read", 11));
  output(out.p, out.n);
  return 0;
}

EXPORT("fail") int32_t fail(void) {
  extism_error_set(to_block((const uint8_t *)"the plugin refused this input", 29));
  return 1;
}

EXPORT("spin") int32_t spin(void) {
  volatile int32_t x = 0;
  for (;;) x++;
  return x;
}

EXPORT("grow") int32_t grow(void) {
  while (__builtin_wasm_memory_grow(0, 16) != (unsigned long)-1) {}
  output_str("{\"grew\":true}");
  return 0;
}
