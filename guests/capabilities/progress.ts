// Heartbeats: reports {"done": i} every `every` steps of `steps` (loom.progress), then returns,
// or spins forever after the last report when {"hang": true} (so the call times out).
import { parse } from '../assemblyscript/lib/json'

@external("loom", "progress")
declare function progress(json: string): void

export function execute(inputJson: string): string {
  const input = parse(inputJson)
  const steps = input == null ? 10 : <i32>input.getNumber('steps', 10)
  const every = input == null ? 1 : <i32>input.getNumber('every', 1)
  let x: i32 = 0
  for (let i = 1; i <= steps; i++) {
    for (let k = 0; k < 1000; k++) x = x * 3 + k
    if (i % every == 0) progress('{"done":' + i.toString() + '}')
  }
  if (input != null && input.getBool('hang', false)) {
    while (true) x = x * 3 + 1
  }
  return '{"steps":' + steps.toString() + ',"x":' + (x & 1).toString() + '}'
}
