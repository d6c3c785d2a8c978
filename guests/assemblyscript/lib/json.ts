// A small JSON reader and writer for guests: enough for activity inputs and outputs, with
// full string escapes (\uXXXX, surrogate pairs) so any Unicode round-trips.

export const enum Kind { Null, Bool, Num, Str, Arr, Obj }

export class Value {
  kind: Kind = Kind.Null
  b: bool = false
  n: f64 = 0
  s: string = ''
  items: Array<Value> = []
  keys: Array<string> = []

  get(key: string): Value | null {
    if (this.kind != Kind.Obj) return null
    for (let i = 0; i < this.keys.length; i++) {
      if (this.keys[i] == key) return this.items[i]
    }
    return null
  }

  getString(key: string): string | null {
    const v = this.get(key)
    return v != null && v.kind == Kind.Str ? v.s : null
  }

  getNumber(key: string, fallback: f64): f64 {
    const v = this.get(key)
    return v != null && v.kind == Kind.Num ? v.n : fallback
  }

  getBool(key: string, fallback: bool): bool {
    const v = this.get(key)
    return v != null && v.kind == Kind.Bool ? v.b : fallback
  }

  has(key: string): bool {
    return this.get(key) != null
  }
}

class Parser {
  pos: i32 = 0
  error: string | null = null
  constructor(public text: string) {}

  fail(msg: string): Value {
    if (this.error == null) this.error = msg + ' at ' + this.pos.toString()
    return new Value()
  }

  ws(): void {
    while (this.pos < this.text.length) {
      const c = this.text.charCodeAt(this.pos)
      if (c == 0x20 || c == 0x0a || c == 0x0d || c == 0x09) this.pos++
      else break
    }
  }

  value(): Value {
    this.ws()
    if (this.pos >= this.text.length) return this.fail('unexpected end')
    const c = this.text.charCodeAt(this.pos)
    if (c == 0x7b) return this.object()
    if (c == 0x5b) return this.array()
    if (c == 0x22) {
      const v = new Value()
      v.kind = Kind.Str
      v.s = this.string()
      return v
    }
    if (this.text.startsWith('true', this.pos)) { this.pos += 4; const v = new Value(); v.kind = Kind.Bool; v.b = true; return v }
    if (this.text.startsWith('false', this.pos)) { this.pos += 5; const v = new Value(); v.kind = Kind.Bool; return v }
    if (this.text.startsWith('null', this.pos)) { this.pos += 4; return new Value() }
    return this.number()
  }

  number(): Value {
    const start = this.pos
    while (this.pos < this.text.length) {
      const c = this.text.charCodeAt(this.pos)
      if ((c >= 0x30 && c <= 0x39) || c == 0x2d || c == 0x2b || c == 0x2e || c == 0x65 || c == 0x45) this.pos++
      else break
    }
    if (this.pos == start) return this.fail('unexpected character')
    const v = new Value()
    v.kind = Kind.Num
    v.n = parseFloat(this.text.substring(start, this.pos))
    return v
  }

  string(): string {
    this.pos++ // opening quote
    let out = ''
    let run = this.pos
    while (this.pos < this.text.length) {
      const c = this.text.charCodeAt(this.pos)
      if (c == 0x22) {
        out += this.text.substring(run, this.pos)
        this.pos++
        return out
      }
      if (c == 0x5c) {
        out += this.text.substring(run, this.pos)
        this.pos++
        const e = this.text.charCodeAt(this.pos)
        if (e == 0x75) {
          const code = I32.parseInt(this.text.substring(this.pos + 1, this.pos + 5), 16)
          out += String.fromCharCode(code)
          this.pos += 5
        } else {
          if (e == 0x6e) out += '\n'
          else if (e == 0x74) out += '\t'
          else if (e == 0x72) out += '\r'
          else if (e == 0x62) out += '\b'
          else if (e == 0x66) out += '\f'
          else out += String.fromCharCode(e) // \" \\ \/
          this.pos++
        }
        run = this.pos
        continue
      }
      this.pos++
    }
    this.fail('unterminated string')
    return out
  }

  array(): Value {
    this.pos++
    const v = new Value()
    v.kind = Kind.Arr
    this.ws()
    if (this.text.charCodeAt(this.pos) == 0x5d) { this.pos++; return v }
    while (this.error == null) {
      v.items.push(this.value())
      this.ws()
      const c = this.text.charCodeAt(this.pos)
      this.pos++
      if (c == 0x5d) return v
      if (c != 0x2c) return this.fail('expected , or ]')
    }
    return v
  }

  object(): Value {
    this.pos++
    const v = new Value()
    v.kind = Kind.Obj
    this.ws()
    if (this.text.charCodeAt(this.pos) == 0x7d) { this.pos++; return v }
    while (this.error == null) {
      this.ws()
      if (this.text.charCodeAt(this.pos) != 0x22) return this.fail('expected a key')
      v.keys.push(this.string())
      this.ws()
      if (this.text.charCodeAt(this.pos) != 0x3a) return this.fail('expected :')
      this.pos++
      v.items.push(this.value())
      this.ws()
      const c = this.text.charCodeAt(this.pos)
      this.pos++
      if (c == 0x7d) return v
      if (c != 0x2c) return this.fail('expected , or }')
    }
    return v
  }
}

/** Parses JSON text; `null` when it is not valid JSON. */
export function parse(text: string): Value | null {
  const p = new Parser(text)
  const v = p.value()
  p.ws()
  if (p.error != null || p.pos != text.length) return null
  return v
}

const HEX = '0123456789abcdef'

function hex4(c: i32): string {
  return '\\u' + HEX.charAt((c >> 12) & 15) + HEX.charAt((c >> 8) & 15) + HEX.charAt((c >> 4) & 15) + HEX.charAt(c & 15)
}

/** A JSON string literal for `s`; lone surrogates are escaped so the output stays valid UTF-16. */
export function quote(s: string): string {
  let out = '"'
  let run = 0
  const n = s.length
  for (let i = 0; i < n; i++) {
    const c = s.charCodeAt(i)
    let esc: string | null = null
    if (c == 0x22) esc = '\\"'
    else if (c == 0x5c) esc = '\\\\'
    else if (c == 0x0a) esc = '\\n'
    else if (c == 0x0d) esc = '\\r'
    else if (c == 0x09) esc = '\\t'
    else if (c < 0x20) esc = hex4(c)
    else if (c >= 0xd800 && c <= 0xdbff) {
      const next = i + 1 < n ? s.charCodeAt(i + 1) : 0
      if (next >= 0xdc00 && next <= 0xdfff) { i++; continue }
      esc = hex4(c)
    } else if (c >= 0xdc00 && c <= 0xdfff) esc = hex4(c)
    if (esc != null) {
      out += s.substring(run, i) + esc
      run = i + 1
    }
  }
  return out + s.substring(run) + '"'
}

/** A JSON number: integers without a fraction, others as AssemblyScript prints them. */
export function num(n: f64): string {
  if (!isFinite(n)) return 'null'
  if (n == Math.floor(n) && Math.abs(n) < 9007199254740992) return (<i64>n).toString()
  return n.toString()
}
