// Returns a "string" pointer far outside linear memory.
export function execute(inputJson: string): string {
  return changetype<string>(<usize>0x7ffffff0)
}
