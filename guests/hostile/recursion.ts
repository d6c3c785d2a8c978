// Unbounded recursion: ends in a stack overflow trap.
function down(n: i32): i32 {
  return down(n + 1) + 1
}
export function execute(inputJson: string): string {
  return down(inputJson.length).toString()
}
