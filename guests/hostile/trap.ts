// Hits an `unreachable` instruction.
export function execute(inputJson: string): string {
  unreachable()
  return '{}'
}
