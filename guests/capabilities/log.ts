// Logs through the host's `loom.log(level, message)` and AssemblyScript's `trace`.
import { parse } from '../assemblyscript/lib/json'

@external("loom", "log")
declare function log(level: i32, message: string): void

export function execute(inputJson: string): string {
  const input = parse(inputJson)
  const lines = input != null ? <i32>input.getNumber('lines', 1) : 1
  for (let i = 0; i < lines; i++) log(i % 4, 'line ' + i.toString())
  trace('traced', 2, 1.5, 2.5)
  return '{"logged":' + lines.toString() + '}'
}
