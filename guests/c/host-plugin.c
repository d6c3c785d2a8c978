// An Extism plugin in C that reaches its host (built with `zig cc`, like plugin.c):
//   lookup: passes its input to the host function crm.lookup (an Extism user host function:
//           a memory handle in, a memory handle out) and outputs {"result": <what it returned>};
//   fetch:  its input is an Extism HTTP request ({"url", "method", "headers"}); a "body" key in
//           it is sent as the request body; outputs {"status": <code>, "body": <response body>}
//           (the body inserted as is: the test servers answer JSON).
#include "extism.h"
#define ALLOC(n) ((uint8_t *)bump(n))
#include "json.h"

__attribute__((import_module("crm"), import_name("lookup"))) extern ExtismPointer crm_lookup(ExtismPointer input);
EXTISM_IMPORT("http_request") extern ExtismPointer extism_http_request(ExtismPointer request, ExtismPointer body);
EXTISM_IMPORT("http_status_code") extern int32_t extism_http_status_code(void);

EXPORT("lookup") int32_t lookup(void) {
  uint64_t len;
  uint8_t *in = input_bytes(&len);
  ExtismPointer result = crm_lookup(to_block(in, len));
  uint64_t n;
  uint8_t *text = from_block(result, &n);
  buffer out = { 0, 0, 0 };
  put_str(&out, "{\"result\":");
  put(&out, text, n);
  put_str(&out, "}");
  output(out.p, out.n);
  return 0;
}

EXPORT("fetch") int32_t fetch(void) {
  uint64_t len;
  uint8_t *in = input_bytes(&len);
  slice body = json_string(json_value(in, len, "body"));
  ExtismPointer body_block = body.n ? to_block(body.p, body.n) : 0;
  ExtismPointer response = extism_http_request(to_block(in, len), body_block);
  uint64_t n = 0;
  uint8_t *text = response ? from_block(response, &n) : (uint8_t *)"null";
  if (!response) n = 4;
  buffer out = { 0, 0, 0 };
  put_str(&out, "{\"status\":");
  put_int(&out, extism_http_status_code());
  put_str(&out, ",\"body\":");
  put(&out, text, n);
  put_str(&out, "}");
  output(out.p, out.n);
  return 0;
}
