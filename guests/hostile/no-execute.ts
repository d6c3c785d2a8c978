// Exports `run`, not `execute`.
export function run(inputJson: string): string {
  return inputJson
}
