// A replayable actor: each step folds the time and a random number into its state. With a
// deterministic definition both come from the call ({ now, seed }), so replaying the same steps
// from the same snapshot gives the same outputs and the same state, byte for byte.
// Input: {"add": n}. Output: {"step", "now", "random", "hash"}.
import { parse } from './lib/json'

let step: i32 = 0
let hash: u64 = 1469598103934665603

export function execute(inputJson: string): string {
  const input = parse(inputJson)
  const add = input == null ? 0 : <u64>input.getNumber('add', 0)
  const now = <u64>Date.now()
  const r = <u64>Math.floor(Math.random() * 1e9)
  step++
  hash = (hash ^ now) * 1099511628211
  hash = (hash ^ r) * 1099511628211
  hash = (hash ^ add) * 1099511628211
  return '{"step":' + step.toString() + ',"now":' + now.toString() + ',"random":' + r.toString() + ',"hash":"' + hash.toString() + '"}'
}
