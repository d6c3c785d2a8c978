// Makes the HTTP requests its input lists ({"requests": [<request JSON>, ...]}, each a string of
// JSON) and returns the responses: {"responses": [<response JSON>, ...]}.
import { parse, Kind } from '../assemblyscript/lib/json'
import { http } from '../assemblyscript/lib/host'

export function execute(inputJson: string): string {
  const input = parse(inputJson)
  const list = input != null ? input.get('requests') : null
  let out = '{"responses":['
  if (list != null && list.kind == Kind.Arr) {
    for (let i = 0; i < list.items.length; i++) {
      if (i > 0) out += ','
      out += http(list.items[i].s)
    }
  }
  return out + ']}'
}
