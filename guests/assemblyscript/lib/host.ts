// Reaching the host from an AssemblyScript activity.
//
// Host functions (options.hostFunctions of the executor, granted per definition in
// capabilities.hostFunctions) are imports that take and return JSON text:
//
//   @external("crm", "lookup")
//   declare function lookup(inputJson: string): string   // 'crm.lookup'
//
// A host function that throws or rejects fails the call (HOST_FUNCTION_ERROR); an async one
// suspends the guest until its Promise settles, holding no thread.
//
// HTTP requests (capabilities.network, options.network.allowedHosts) go through `http` below:
// {"method", "url", "headers", "body"} in, {"status", "headers", "body"} out. A request the grant
// refuses fails the call (NETWORK_DENIED); a connection that fails, NETWORK_ERROR.

@external("loom", "http")
declare function loomHttp(requestJson: string): string

/** Sends an HTTP request (JSON text) and returns the response (JSON text). */
export function http(requestJson: string): string {
  return loomHttp(requestJson)
}

/** Escapes a string as a JSON string literal (quotes included). */
export function quote(s: string): string {
  let out = '"'
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i)
    if (c == 0x22) out += '\\"'
    else if (c == 0x5c) out += '\\\\'
    else if (c < 0x20) out += '\\u' + (0x10000 + c).toString(16).slice(1)
    else out += String.fromCharCode(c)
  }
  return out + '"'
}
