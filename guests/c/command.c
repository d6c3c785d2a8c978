// A WASI command in C (built with `zig cc --target=wasm32-wasi`): the echo contract with the
// input on stdin and the output on stdout. {"exit": n} exits with that code after writing a line
// to stderr; {"spin": true} never returns; {"grow": true} allocates until it cannot.
#include <stdio.h>
#include <stdlib.h>
#define ALLOC(n) ((uint8_t *)malloc(n))
#include "json.h"

int main(void) {
  buffer in = { 0, 0, 0 };
  uint8_t chunk[4096];
  size_t got;
  while ((got = fread(chunk, 1, sizeof chunk, stdin)) > 0) put(&in, chunk, got);
  int64_t code = json_int(json_value(in.p, in.n, "exit"), 0);
  if (code) {
    fprintf(stderr, "refusing: asked to exit with %lld\n", (long long)code);
    return (int)code;
  }
  if (json_value(in.p, in.n, "spin").p) for (volatile int x = 0;; x++) {}
  if (json_value(in.p, in.n, "grow").p) {
    for (;;) {
      volatile char *p = malloc(1 << 20);
      if (!p) return 7;
      p[0] = 1;
    }
  }
  buffer out = echo(in.p, in.n);
  fwrite(out.p, 1, out.n, stdout);
  return 0;
}
