// Never returns: only an interrupt ends it.
export function execute(inputJson: string): string {
  let n: i32 = inputJson.length
  while (true) {
    n = n * 31 + 7
    if (n == 0x7fffffff) break
  }
  return n.toString()
}
