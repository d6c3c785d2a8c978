// An activity that calls an HTTP API with fetch(): componentize-js's own, over wasi:http, which
// the host sends under the network grant (capabilities.network, options.network). Built with
// the http feature on (npm run guests:polyglot). Input {url, method?, headers?, body?}; output
// {status, contentType, body} (the body parsed when it is JSON), or {fetchError} when fetch
// rejects (a failure on the way; a request the grant refuses also fails the call: NETWORK_DENIED).
// Hostile modes (tests): {url, keep: n} fetches n times and keeps every response unread, across an
// actor's calls; {url, post: {n, size}} sends n POSTs of size bytes at once, each body streamed
// from one reused 64 KiB chunk (little guest memory, much for the host to hold).
const kept = []
export async function execute(inputJson) {
  const input = JSON.parse(inputJson)
  if (input.keep) {
    for (let i = 0; i < input.keep; i++) kept.push(await fetch(input.url))
    return { tag: 'ok', val: JSON.stringify({ kept: kept.length }) }
  }
  if (input.post) {
    const chunk = new Uint8Array(64 * 1024).fill(120)
    const body = () => {
      let sent = 0
      return new ReadableStream({ pull(c) { if (sent >= input.post.size) c.close(); else { c.enqueue(chunk); sent += chunk.length } } })
    }
    const sent = Array.from({ length: input.post.n }, () =>
      fetch(input.url, { method: 'POST', body: body(), duplex: 'half' }).then((r) => r.status, (e) => String(e)))
    return { tag: 'ok', val: JSON.stringify({ statuses: await Promise.all(sent) }) }
  }
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
