// Just enough JSON for the echo and counter contracts, in C without libc: find a key's raw string
// value (escapes kept, so it can be written back as it is), a number, and build output text.
// The includer defines ALLOC(n).
#pragma once
#include <stdint.h>

typedef struct { const uint8_t *p; uint64_t n; } slice;

static int slice_eq(slice a, const char *s) {
  uint64_t i = 0;
  for (; i < a.n; i++) if (s[i] == 0 || a.p[i] != (uint8_t)s[i]) return 0;
  return s[i] == 0;
}

// The value after `"key":` (whitespace skipped), or n == 0 with p == 0 when absent.
static slice json_value(const uint8_t *text, uint64_t len, const char *key) {
  uint64_t klen = 0;
  while (key[klen]) klen++;
  for (uint64_t i = 0; i + klen + 2 < len; i++) {
    if (text[i] != '"' || text[i + klen + 1] != '"') continue;
    int match = 1;
    for (uint64_t k = 0; k < klen; k++) if (text[i + 1 + k] != (uint8_t)key[k]) { match = 0; break; }
    if (!match) continue;
    uint64_t j = i + klen + 2;
    while (j < len && (text[j] == ' ' || text[j] == '\n' || text[j] == '\t' || text[j] == '\r')) j++;
    if (j >= len || text[j] != ':') continue;
    j++;
    while (j < len && (text[j] == ' ' || text[j] == '\n' || text[j] == '\t' || text[j] == '\r')) j++;
    return (slice){ text + j, len - j };
  }
  return (slice){ 0, 0 };
}

// A JSON string's raw content (between the quotes, escapes kept); n == 0 and p == 0 if not a string.
static slice json_string(slice v) {
  if (!v.p || v.n == 0 || v.p[0] != '"') return (slice){ 0, 0 };
  uint64_t i = 1;
  while (i < v.n && v.p[i] != '"') i += v.p[i] == '\\' ? 2 : 1;
  if (i >= v.n) return (slice){ 0, 0 };
  return (slice){ v.p + 1, i - 1 };
}

static int64_t json_int(slice v, int64_t fallback) {
  if (!v.p || v.n == 0) return fallback;
  uint64_t i = 0;
  int neg = 0;
  if (v.p[0] == '-') { neg = 1; i = 1; }
  if (i >= v.n || v.p[i] < '0' || v.p[i] > '9') return fallback;
  int64_t x = 0;
  for (; i < v.n && v.p[i] >= '0' && v.p[i] <= '9'; i++) x = x * 10 + (v.p[i] - '0');
  return neg ? -x : x;
}

// How many UTF-16 code units the decoded string has (what JavaScript's `length` says).
static uint64_t utf16_length(slice raw) {
  uint64_t units = 0;
  for (uint64_t i = 0; i < raw.n;) {
    uint8_t c = raw.p[i];
    if (c == '\\') { units += 1; i += raw.p[i + 1] == 'u' ? 6 : 2; continue; }
    if (c < 0x80) units += 1, i += 1;
    else if ((c & 0xe0) == 0xc0) units += 1, i += 2;
    else if ((c & 0xf0) == 0xe0) units += 1, i += 3;
    else units += 2, i += 4;
  }
  return units;
}

typedef struct { uint8_t *p; uint64_t n, cap; } buffer;

static void put(buffer *b, const uint8_t *s, uint64_t n) {
  if (b->n + n > b->cap) {
    uint64_t cap = (b->cap * 2 > b->n + n) ? b->cap * 2 : b->n + n + 64;
    uint8_t *p = ALLOC(cap);
    for (uint64_t i = 0; i < b->n; i++) p[i] = b->p[i];
    b->p = p;
    b->cap = cap;
  }
  for (uint64_t i = 0; i < n; i++) b->p[b->n + i] = s[i];
  b->n += n;
}

static void put_str(buffer *b, const char *s) {
  uint64_t n = 0;
  while (s[n]) n++;
  put(b, (const uint8_t *)s, n);
}

static void put_int(buffer *b, int64_t x) {
  char tmp[24];
  int i = 23, neg = x < 0;
  uint64_t u = neg ? (uint64_t)(-(x + 1)) + 1 : (uint64_t)x;
  tmp[i] = 0;
  do { tmp[--i] = '0' + (u % 10); u /= 10; } while (u);
  if (neg) tmp[--i] = '-';
  put_str(b, tmp + i);
}

// The echo contract: {"message": s, "times": n} -> {"result": s repeated n times, joined by one
// space, "length": its JavaScript length, "executedBy": "WASM"}.
static buffer echo(const uint8_t *in, uint64_t len) {
  buffer out = { 0, 0, 0 };
  slice message = json_string(json_value(in, len, "message"));
  if (!message.p) { put_str(&out, "{\"error\":\"message must be a string\"}"); return out; }
  int64_t times = json_int(json_value(in, len, "times"), 1);
  put_str(&out, "{\"result\":\"");
  for (int64_t i = 0; i < times; i++) {
    if (i) put_str(&out, " ");
    put(&out, message.p, message.n);
  }
  put_str(&out, "\",\"length\":");
  put_int(&out, times > 0 ? times * (int64_t)utf16_length(message) + (times - 1) : 0);
  put_str(&out, ",\"executedBy\":\"WASM\"}");
  return out;
}
