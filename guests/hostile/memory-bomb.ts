// Allocates 1 MiB blocks forever, keeping each alive.
const keep = new Array<ArrayBuffer>()
export function execute(inputJson: string): string {
  while (true) keep.push(new ArrayBuffer(1 << 20))
  return ''
}
