// Echo activity: {message, times} -> {result, length, executedBy}. Stateless.
import { parse, quote, num } from './lib/json'

export function execute(inputJson: string): string {
  const input = parse(inputJson)
  if (input == null) return '{"error":"input is not valid JSON"}'
  const message = input.getString('message')
  if (message == null) return '{"error":"message must be a string"}'
  const times = <i32>input.getNumber('times', 1)
  const parts = new Array<string>()
  for (let i = 0; i < times; i++) parts.push(message)
  const result = parts.join(' ')
  return '{"result":' + quote(result) + ',"length":' + num(result.length) + ',"executedBy":"WASM"}'
}
