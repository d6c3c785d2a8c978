// Returns text that is not JSON.
export function execute(inputJson: string): string {
  return 'this is not JSON: ' + inputJson
}
