// Returns a string holding an unpaired UTF-16 surrogate (not valid Unicode).
export function execute(inputJson: string): string {
  return '{"x":"' + String.fromCharCode(0xd800) + '"}'
}
