// Aborts with a message (AssemblyScript's `throw` calls env.abort with message, file, line, column).
export function execute(inputJson: string): string {
  if (inputJson.length > 0) throw new Error('refusing input ' + inputJson)
  return '{}'
}
