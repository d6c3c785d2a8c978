// The Extism kernel ABI as a C header of our own, written from the documented imports of the
// `extism:host/env` module (pointers are 64-bit offsets into the kernel's memory; 0 is "none"),
// plus the few helpers the plugins here use. No libc: plugins build freestanding.
#pragma once
#include <stdint.h>

typedef uint64_t ExtismPointer;

#define EXTISM_IMPORT(name) __attribute__((import_module("extism:host/env"), import_name(name)))
#define EXPORT(name) __attribute__((export_name(name)))

EXTISM_IMPORT("input_length") extern uint64_t extism_input_length(void);
EXTISM_IMPORT("input_load_u8") extern uint8_t extism_input_load_u8(uint64_t offset);
EXTISM_IMPORT("input_load_u64") extern uint64_t extism_input_load_u64(uint64_t offset);
EXTISM_IMPORT("alloc") extern ExtismPointer extism_alloc(uint64_t length);
EXTISM_IMPORT("length") extern uint64_t extism_length(ExtismPointer p);
EXTISM_IMPORT("free") extern void extism_free(ExtismPointer p);
EXTISM_IMPORT("load_u8") extern uint8_t extism_load_u8(ExtismPointer p);
EXTISM_IMPORT("load_u64") extern uint64_t extism_load_u64(ExtismPointer p);
EXTISM_IMPORT("store_u8") extern void extism_store_u8(ExtismPointer p, uint8_t v);
EXTISM_IMPORT("store_u64") extern void extism_store_u64(ExtismPointer p, uint64_t v);
EXTISM_IMPORT("output_set") extern void extism_output_set(ExtismPointer p, uint64_t length);
EXTISM_IMPORT("error_set") extern void extism_error_set(ExtismPointer p);
EXTISM_IMPORT("config_get") extern ExtismPointer extism_config_get(ExtismPointer key);
EXTISM_IMPORT("var_get") extern ExtismPointer extism_var_get(ExtismPointer key);
EXTISM_IMPORT("var_set") extern void extism_var_set(ExtismPointer key, ExtismPointer value);
EXTISM_IMPORT("log_info") extern void extism_log_info(ExtismPointer message);

// A bump allocator over linear memory (plugins here run one call per fresh instance or keep
// little between calls; nothing is freed).
extern unsigned char __heap_base;
static unsigned long heap_top = 0;
static void *bump(unsigned long n) {
  if (heap_top == 0) heap_top = (unsigned long)&__heap_base;
  unsigned long start = (heap_top + 15) & ~15ul;
  unsigned long end = start + n;
  unsigned long have = __builtin_wasm_memory_size(0) * 65536ul;
  if (end > have && __builtin_wasm_memory_grow(0, (end - have + 65535) / 65536) == (unsigned long)-1) __builtin_trap();
  heap_top = end;
  return (void *)start;
}

// The call's input, copied into linear memory (8 bytes at a time, then the tail).
static uint8_t *input_bytes(uint64_t *len) {
  *len = extism_input_length();
  uint8_t *buf = bump(*len + 1);
  uint64_t i = 0;
  for (; i + 8 <= *len; i += 8) {
    uint64_t w = extism_input_load_u64(i);
    __builtin_memcpy(buf + i, &w, 8);
  }
  for (; i < *len; i++) buf[i] = extism_input_load_u8(i);
  buf[*len] = 0;
  return buf;
}

// Copies bytes into a new kernel block.
static ExtismPointer to_block(const uint8_t *bytes, uint64_t len) {
  ExtismPointer p = extism_alloc(len);
  uint64_t i = 0;
  for (; i + 8 <= len; i += 8) {
    uint64_t w;
    __builtin_memcpy(&w, bytes + i, 8);
    extism_store_u64(p + i, w);
  }
  for (; i < len; i++) extism_store_u8(p + i, bytes[i]);
  return p;
}

// A kernel block copied into linear memory (NUL-terminated).
static uint8_t *from_block(ExtismPointer p, uint64_t *len) {
  *len = extism_length(p);
  uint8_t *buf = bump(*len + 1);
  for (uint64_t i = 0; i < *len; i++) buf[i] = extism_load_u8(p + i);
  buf[*len] = 0;
  return buf;
}

static uint64_t c_strlen(const char *s) {
  uint64_t n = 0;
  while (s[n]) n++;
  return n;
}

static void output(const uint8_t *bytes, uint64_t len) { extism_output_set(to_block(bytes, len), len); }
static void output_str(const char *s) { output((const uint8_t *)s, c_strlen(s)); }
