// An activity that calls an HTTP API with fetch(): componentize-js's own, over wasi:http, which
// the host sends under the network grant (capabilities.network, options.network). Built with
// the http feature on (npm run guests:polyglot). Input {url, method?, headers?, body?}; output
// {status, contentType, body} (the body parsed when it is JSON), or {fetchError} when fetch
// rejects (a failure on the way; a request the grant refuses also fails the call: NETWORK_DENIED).
export async function execute(inputJson) {
  const input = JSON.parse(inputJson)
  try {
    const res = await fetch(input.url, { method: input.method ?? 'GET', headers: input.headers ?? {}, body: input.body })
    const text = await res.text()
    let body = text
    try {
      body = JSON.parse(text)
    } catch {}
    return { tag: 'ok', val: JSON.stringify({ status: res.status, contentType: res.headers.get('content-type'), body }) }
  } catch (e) {
    return { tag: 'ok', val: JSON.stringify({ fetchError: String(e && e.message ? e.message : e) }) }
  }
}
