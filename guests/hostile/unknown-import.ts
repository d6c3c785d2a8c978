// Imports a host function nobody provides.
@external("env", "fetch")
declare function fetch(url: i32): i32

export function execute(inputJson: string): string {
  return fetch(inputJson.length).toString()
}
