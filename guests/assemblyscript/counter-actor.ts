// Counter actor: its count lives in a global, so it persists while the executor keeps the
// instance (execute(..., { actorId })). Actions: increment / decrement (amount, default 1), get, reset;
// and for the tests of what happens to state when a call fails: fail (increments, then throws),
// allocate (keeps `amount` more bytes alive).
import { parse, quote, num } from './lib/json'

let count: i64 = 0
const kept: Array<Uint8Array> = []

function reply(action: string): string {
  return '{"count":' + count.toString() + ',"action":' + quote(action) + '}'
}

export function execute(inputJson: string): string {
  const input = parse(inputJson)
  if (input == null) return '{"error":"input is not valid JSON"}'
  const action = input.getString('action')
  if (action == null) return '{"error":"missing action"}'
  const amount = <i64>input.getNumber('amount', 1)
  if (action == 'increment') count += amount
  else if (action == 'decrement') count -= amount
  else if (action == 'reset') count = 0
  else if (action == 'fail') {
    count += amount
    throw new Error('failed after changing the count')
  } else if (action == 'allocate') kept.push(new Uint8Array(<i32>amount))
  else if (action != 'get') return '{"error":' + quote('unknown action: ' + action) + '}'
  return reply(action)
}
