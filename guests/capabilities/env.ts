// Returns every environment variable WASI lets it see, as {"NAME": "value", ...}.
import { environ_get, environ_sizes_get } from './wasi'
import { quote } from '../assemblyscript/lib/json'

export function execute(inputJson: string): string {
  const sizes = new ArrayBuffer(8)
  const sp = changetype<usize>(sizes)
  const err = environ_sizes_get(sp, sp + 4)
  if (err != 0) return '{"errno":' + err.toString() + '}'
  const count = load<u32>(sp)
  const ptrs = new ArrayBuffer(<i32>count * 4 + 4)
  const buf = new ArrayBuffer(<i32>load<u32>(sp + 4) + 1)
  environ_get(changetype<usize>(ptrs), changetype<usize>(buf))
  let out = '{'
  for (let i: u32 = 0; i < count; i++) {
    const p = load<u32>(changetype<usize>(ptrs) + (<usize>i << 2))
    const entry = String.UTF8.decodeUnsafe(p, strlen(p))
    const eq = entry.indexOf('=')
    if (i > 0) out += ','
    out += quote(entry.substring(0, eq)) + ':' + quote(entry.substring(eq + 1))
  }
  return out + '}'
}

function strlen(p: usize): usize {
  let n: usize = 0
  while (load<u8>(p + n) != 0) n++
  return n
}
