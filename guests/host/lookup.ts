// Calls the host function crm.lookup: {"arg": <JSON>, "times"?: n} -> {"result": <its answer>,
// "calls": n}. With "times" it calls n times (the last answer is kept): a flood of host calls.
import { parse } from '../assemblyscript/lib/json'

@external("crm", "lookup")
declare function lookup(inputJson: string): string

export function execute(inputJson: string): string {
  const input = parse(inputJson)
  // The argument is the raw JSON text after "arg": (the tests put it last).
  const at = inputJson.indexOf('"arg":')
  const arg = at >= 0 ? inputJson.slice(at + 6, inputJson.length - 1) : 'null'
  const times = input != null ? <i32>input.getNumber('times', 1) : 1
  let result = 'null'
  for (let i = 0; i < times; i++) result = lookup(arg)
  return '{"result":' + result + ',"calls":' + times.toString() + '}'
}
