// A stateful guest that can be told to spin: {"action":"inc"} bumps a global count,
// {"action":"spin"} never returns, anything else reports the count.
let count: i32 = 0
export function execute(inputJson: string): string {
  if (inputJson.includes('"inc"')) count++
  else if (inputJson.includes('"spin"')) {
    while (true) count = count * 3 + 1
  }
  return '{"count":' + count.toString() + '}'
}
