// The echo activity in plain JavaScript, compiled into a WebAssembly component against
// wit/activity.wit by componentize-js (npm run guests:js). Actions beyond echo, for the tests:
// {"fail": "why"} returns an error; {"spin": true} never returns; {"grow": n} keeps n MiB alive;
// {"count": true} counts calls in a module-level variable (the component's state, for actors).
import { log } from 'loom:activity/host'

let calls = 0
const kept = []

export function execute(inputJson) {
  const input = JSON.parse(inputJson)
  calls++
  if (input.fail) return { tag: 'err', val: String(input.fail) }
  if (input.spin) for (;;) {}
  if (input.grow) for (let i = 0; i < input.grow; i++) kept.push(new Uint8Array(1024 * 1024).fill(1))
  if (input.count) return { tag: 'ok', val: JSON.stringify({ calls }) }
  if (input.log) log('info', String(input.log))
  const times = input.times ?? 1
  const result = Array.from({ length: Math.max(0, times) }, () => input.message).join(' ')
  return { tag: 'ok', val: JSON.stringify({ result, length: result.length, executedBy: 'WASM' }) }
}
