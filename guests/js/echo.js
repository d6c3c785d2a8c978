// The echo activity in plain JavaScript, compiled into a WebAssembly component against
// wit/activity.wit by componentize-js (npm run guests:js). Actions beyond echo, for the tests:
// {"fail": "why"} returns an error; {"spin": true} never returns; {"grow": n} keeps n MiB alive;
// {"count": true} counts calls in a module-level variable (the component's state, for actors);
// {"hostCall": {"name", "input"}} calls a host function; {"fetch": {"url", ...init}} makes an
// HTTP request with the fetch() below.
import { log, call, http } from 'loom:activity/host'

// fetch() over the host's HTTP function (loom:activity/host.http, under the network grant).
// Synchronous: a componentize-js export here is a plain function, so the request completes
// before it returns. A failure on the way rejects as fetch does (a TypeError); a request the
// grant refuses ends the call with NETWORK_DENIED before this code sees it.
function fetch(url, init = {}) {
  let text
  try {
    text = http(JSON.stringify({ url: String(url), method: init.method ?? 'GET', headers: init.headers ?? {}, body: init.body }))
  } catch (e) {
    throw new TypeError(`fetch failed: ${e.payload ?? e.message}`)
  }
  const r = JSON.parse(text)
  return { ok: r.status >= 200 && r.status < 300, status: r.status, headers: r.headers, text: () => r.body, json: () => JSON.parse(r.body) }
}

const ok = (value) => ({ tag: 'ok', val: JSON.stringify(value) })

let calls = 0
const kept = []

export function execute(inputJson) {
  const input = JSON.parse(inputJson)
  calls++
  if (input.fail) return { tag: 'err', val: String(input.fail) }
  if (input.spin) for (;;) {}
  if (input.grow) for (let i = 0; i < input.grow; i++) kept.push(new Uint8Array(1024 * 1024).fill(1))
  if (input.count) return { tag: 'ok', val: JSON.stringify({ calls }) }
  if (input.log) log('info', String(input.log))
  if (input.hostCall) {
    try {
      return ok({ result: JSON.parse(call(input.hostCall.name, JSON.stringify(input.hostCall.input ?? null))) })
    } catch (e) {
      return ok({ hostError: String(e.payload ?? e.message) })
    }
  }
  if (input.fetch) {
    try {
      const res = fetch(input.fetch.url, input.fetch)
      return ok({ status: res.status, body: res.json() })
    } catch (e) {
      return ok({ fetchError: String(e.message) })
    }
  }
  const times = input.times ?? 1
  const result = Array.from({ length: Math.max(0, times) }, () => input.message).join(' ')
  return { tag: 'ok', val: JSON.stringify({ result, length: result.length, executedBy: 'WASM' }) }
}
