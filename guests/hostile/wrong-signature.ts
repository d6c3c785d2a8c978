// `execute` takes and returns a float, not a string.
export function execute(x: f64): f64 {
  return x * 2
}
