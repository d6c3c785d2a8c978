// Returns a real string whose length header claims ~2 GB.
export function execute(inputJson: string): string {
  const s = 'short' + inputJson
  store<u32>(changetype<usize>(s) - 4, 0x7ffffff0)
  return s
}
