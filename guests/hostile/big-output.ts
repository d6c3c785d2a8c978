// Returns 50 MB (25 M UTF-16 code units).
export function execute(inputJson: string): string {
  return 'x'.repeat(25 * 1024 * 1024)
}
