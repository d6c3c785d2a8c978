// The network capability: a definition asks (capabilities.network), the executor grants
// (options.network.allowedHosts and caps); every request is checked in Rust: scheme, host list,
// DNS answers against loopback/private/link-local/metadata (SSRF), redirects hop by hop, caps,
// timeouts. HTTP servers here run on loopback, allowed by their literal IP.
import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { spawn, type ChildProcess } from 'node:child_process'
import { mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs'
import { createInterface } from 'node:readline'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { WasmActivityExecutor } from '../index'
import { def, failure, guest, MemoryBlobStore, root } from './helpers'
import { guestWat } from './wat'

const built = (path: string) => readFileSync(join(root, 'build', path))
const NET = { capabilities: { network: true } }
let server: Server
let port = 0
let base = ''
const cacheDir = mkdtempSync(join(tmpdir(), 'loom-net-cache-'))
const seen: Array<{ method: string; url: string; headers: Record<string, unknown>; body: string }> = []
const paced = new Map<string, number>()

beforeAll(async () => {
  server = createServer((req, res) => {
    let body = ''
    req.on('data', (c) => (body += c))
    req.on('end', () => {
      seen.push({ method: req.method!, url: req.url!, headers: req.headers, body })
      const u = new URL(req.url!, 'http://x')
      if (u.pathname === '/json') {
        res.setHeader('content-type', 'application/json')
        res.setHeader('x-answer', '42')
        return res.end(JSON.stringify({ hello: 'world', method: req.method, body }))
      }
      if (u.pathname === '/status') return (res.statusCode = Number(u.searchParams.get('code'))), res.end('{"failed":true}')
      if (u.pathname === '/redirect') {
        const fat = Number(u.searchParams.get('fat') ?? 0)
        return res.writeHead(Number(u.searchParams.get('code') ?? 302), { location: u.searchParams.get('to')!, ...(fat ? { 'x-fat': 'y'.repeat(fat) } : {}) }).end()
      }
      if (u.pathname === '/long-redirect') return res.writeHead(302, { location: `/json?${'q'.repeat(Number(u.searchParams.get('n')))}` }).end()
      if (u.pathname === '/loop') return res.writeHead(302, { location: '/loop' }).end()
      if (u.pathname === '/big') return res.end(JSON.stringify({ data: 'x'.repeat(Number(u.searchParams.get('n'))) }))
      // JSON of n bytes that parses to 0 (a large body, a small answer).
      if (u.pathname === '/spaces') return res.end(' '.repeat(Number(u.searchParams.get('n')) - 1) + '0')
      if (u.pathname === '/stream') {
        // No content-length: a body that keeps coming.
        const timer = setInterval(() => res.write('x'.repeat(64 * 1024)), 1)
        res.on('close', () => clearInterval(timer))
        return
      }
      if (u.pathname === '/paced') {
        // 1 MiB at a time, every 30 ms, n (10) in all, no content-length: how many went out
        // before the client let go is kept under the request's id.
        const id = u.searchParams.get('id')!
        const n = Number(u.searchParams.get('n') ?? 10)
        paced.set(id, 0)
        const timer = setInterval(() => {
          res.write('p'.repeat(1 << 20))
          paced.set(id, paced.get(id)! + 1)
          if (paced.get(id) === n) clearInterval(timer), res.end()
        }, 30)
        res.on('close', () => clearInterval(timer))
        return
      }
      if (u.pathname === '/fat-headers') return res.writeHead(200, { 'x-fat': 'y'.repeat(Number(u.searchParams.get('n') ?? 8000)) }).end('{}')
      if (u.pathname === '/slow') return // never answers
      if (u.pathname === '/later') return void setTimeout(() => res.end('{}'), 200)
      res.statusCode = 404
      res.end('{}')
    })
  })
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r))
  port = (server.address() as AddressInfo).port
  base = `http://127.0.0.1:${port}`
})

afterAll(async () => {
  server.closeAllConnections()
  await new Promise((r) => server.close(r))
})

async function executorWith(network: Record<string, unknown> | undefined, blobs: Record<string, Buffer> = {}) {
  const store = new MemoryBlobStore()
  await store.upload('http.wasm', guest('host/http'))
  for (const [name, bytes] of Object.entries(blobs)) await store.upload(`${name}.wasm`, bytes)
  // One artifact cache for the file: the 12 MB JavaScript components compile once.
  return new WasmActivityExecutor(store, network ? { network, cacheDir } : { cacheDir })
}

/** Runs the AssemblyScript guest with these requests; its responses parsed. */
async function requests(ex: WasmActivityExecutor, reqs: object[], extra = {}) {
  const out: any = await ex.execute(def('http', { ...NET, ...extra }), { requests: reqs.map((r) => JSON.stringify(r)) })
  return out.responses.map((r: any) => ({ ...r, json: r.body.startsWith('{') ? JSON.parse(r.body) : undefined }))
}

describe('HTTP from AssemblyScript (loom.http: JSON request in, JSON response out)', () => {
  it('an allowed request goes out with its method, headers and body; the status, headers and body come back', async () => {
    const ex = await executorWith({ allowedHosts: [`127.0.0.1:${port}`] })
    const [get, post, notFound] = await requests(ex, [
      { url: `${base}/json` },
      { method: 'POST', url: `${base}/json`, headers: { 'x-loom': 'yes' }, body: 'payload é' },
      { url: `${base}/status?code=503` },
    ])
    expect(get.status).toBe(200)
    expect(get.headers['x-answer']).toBe('42')
    expect(get.json).toEqual({ hello: 'world', method: 'GET', body: '' })
    expect(post.json).toEqual({ hello: 'world', method: 'POST', body: 'payload é' })
    expect(seen.find((s) => s.method === 'POST')!.headers['x-loom']).toBe('yes')
    expect(notFound.status).toBe(503)
  })

  it('a guest-chosen Host header is dropped: the request names the URL\'s host (no virtual-host hopping)', async () => {
    const ex = await executorWith({ allowedHosts: [`127.0.0.1:${port}`] })
    const [r] = await requests(ex, [{ url: `${base}/json`, headers: { Host: 'admin.internal', 'x-ok': '1' } }])
    expect(r.status).toBe(200)
    const last = seen.at(-1)!
    expect([last.headers.host, last.headers['x-ok']]).toEqual([`127.0.0.1:${port}`, '1'])
  })

  it('the body\'s framing and the connection are the host\'s: a guest\'s Content-Length, Transfer-Encoding, Connection, Upgrade... are dropped (review AX3)', async () => {
    const ex = await executorWith({ allowedHosts: [`127.0.0.1:${port}`] })
    const smuggled = 'abcGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n'
    const hop = { Connection: 'close', 'Keep-Alive': 'timeout=1', 'Proxy-Connection': 'close', TE: 'trailers', Trailer: 'x-t', Upgrade: 'websocket' }
    const [short, long, chunked] = await requests(ex, [
      // Before, the server read 3 bytes and the call succeeded; 40 had the request wait for its timeout.
      { method: 'POST', url: `${base}/json`, headers: { 'Content-Length': '3', ...hop, 'x-n': 'short' }, body: smuggled },
      { method: 'POST', url: `${base}/json`, headers: { 'content-length': '40', 'x-n': 'long' }, body: 'abc' },
      { method: 'PUT', url: `${base}/json`, headers: { 'Transfer-Encoding': 'chunked', 'x-n': 'chunked' }, body: 'whole' },
    ], { limits: { maxExecutionMs: 5000 } })
    expect([short.json.body, long.json.body, chunked.json.body]).toEqual([smuggled, 'abc', 'whole'])
    const got = (n: string) => seen.find((s) => s.headers['x-n'] === n)!.headers
    expect(got('short')['content-length']).toBe(String(smuggled.length))
    expect([got('long')['content-length'], got('chunked')['content-length'], got('chunked')['transfer-encoding']]).toEqual(['3', '5', undefined])
    for (const name of ['connection', 'keep-alive', 'proxy-connection', 'te', 'trailer', 'upgrade']) expect(got('short')[name]).toBeUndefined()
    expect(seen.some((s) => s.url === '/smuggled')).toBe(false)
  })

  it('a redirect to an allowed host is followed', async () => {
    const ex = await executorWith({ allowedHosts: [`127.0.0.1:${port}`] })
    const [r] = await requests(ex, [{ url: `${base}/redirect?to=${encodeURIComponent(`${base}/json`)}` }])
    expect(r.json.hello).toBe('world')
  })

  it('a redirect is followed as browsers do: a 303 (and a POST\'s 301 or 302) becomes a GET without a body, a 307 or 308 repeats the request; credentials stay with their origin', async () => {
    const ex = await executorWith({ allowedHosts: [`127.0.0.1:${port}`] })
    const post = (code: number, to = '/json') => ({
      method: 'POST',
      url: `${base}/redirect?code=${code}&to=${encodeURIComponent(to)}`,
      headers: { 'content-type': 'text/plain', authorization: 'Bearer s3cret', 'x-keep': 'k' },
      body: 'the body',
    })
    const out = await requests(ex, [post(303), post(302), post(301), post(307), post(308)])
    expect(out.map((r: any) => [r.json.method, r.json.body])).toEqual([
      ['GET', ''], ['GET', ''], ['GET', ''], ['POST', 'the body'], ['POST', 'the body'],
    ])
    const last = seen.at(-1)!
    expect([last.headers.authorization, last.headers['x-keep'], last.headers['content-type']]).toEqual(['Bearer s3cret', 'k', 'text/plain'])
    // The same address in another spelling is another origin: the credentials are not sent there.
    const [other] = await requests(ex, [post(307, `http://[::ffff:127.0.0.1]:${port}/json`)])
    expect(other.json).toEqual({ hello: 'world', method: 'POST', body: 'the body' })
    expect([seen.at(-1)!.headers.authorization, seen.at(-1)!.headers['x-keep']]).toEqual([undefined, 'k'])
  })

  it('asking for the network is not enough: CAPABILITY_DENIED without capabilities.network or without options.network', async () => {
    const granted = await executorWith({ allowedHosts: [`127.0.0.1:${port}`] })
    const e = await failure(granted.execute(def('http'), { requests: [] }))
    expect([e.code, e.message.includes('loom.http')]).toEqual(['CAPABILITY_DENIED', true])
    const closed = await executorWith(undefined)
    const e2 = await failure(closed.execute(def('http', NET), { requests: [] }))
    expect([e2.code, e2.message.includes('options.network')]).toEqual(['CAPABILITY_DENIED', true])
  })
})

describe('every rule of the grant has a denial (NETWORK_DENIED naming the host)', () => {
  const denied = async (network: Record<string, unknown>, reqs: object[], host: string | RegExp, why: string | RegExp) => {
    const ex = await executorWith(network)
    const before = seen.length
    const e = await failure(requests(ex, reqs))
    expect(e.code, e.message).toBe('NETWORK_DENIED')
    if (typeof host === 'string') expect(e.host).toBe(host)
    else expect(e.host).toMatch(host)
    expect(e.message).toMatch(why)
    expect(e.retryable).toBe(false)
    return { e, reached: seen.length - before }
  }

  it('a host not in allowedHosts, another port, a subdomain pattern that does not cover it', async () => {
    expect((await denied({ allowedHosts: ['api.example.com'] }, [{ url: `${base}/json` }], '127.0.0.1', 'allowedHosts')).reached).toBe(0)
    await denied({ allowedHosts: [`127.0.0.1:${port + 1}`] }, [{ url: `${base}/json` }], '127.0.0.1', 'allowedHosts')
    await denied({ allowedHosts: ['*.example.org'] }, [{ url: 'https://example.org/' }], 'example.org', 'allowedHosts')
    await denied({ allowedHosts: ['*.example.org'] }, [{ url: 'https://evil-example.org/' }], 'evil-example.org', 'allowedHosts')
  })

  it('only http and https', async () => {
    for (const url of ['ftp://127.0.0.1/x', 'file:///etc/passwd', 'gopher://127.0.0.1:70/']) {
      await denied({ allowedHosts: ['127.0.0.1'] }, [{ url }], /.*/, 'only http and https')
    }
  })

  it('a name that resolves to loopback is refused even when the name is allowed (SSRF); the literal IP is the opt-in', async () => {
    const { reached } = await denied({ allowedHosts: [`localhost:${port}`] }, [{ url: `http://localhost:${port}/json` }], 'localhost', 'loopback')
    expect(reached).toBe(0)
  })

  it('private, link-local and metadata addresses, in any spelling, unless named literally', async () => {
    const network = { allowedHosts: ['*.example.com', 'example.com'] }
    for (const url of [
      'http://169.254.169.254/latest/meta-data/',
      'http://[fd00:ec2::254]/latest/meta-data/',
      'http://10.0.0.1/',
      'http://192.168.1.1/',
      'http://2130706433/', // 127.0.0.1 in decimal
      'http://0x7f.0.0.1/',
      'http://[::ffff:127.0.0.1]/',
      'http://[::1]/',
    ]) {
      await denied(network, [{ url }], /.+/, 'allowedHosts')
    }
    // The literal IP named in allowedHosts is reachable, in another spelling too.
    const ex = await executorWith({ allowedHosts: [`127.0.0.1:${port}`] })
    expect((await requests(ex, [{ url: `http://[::ffff:127.0.0.1]:${port}/json` }]))[0].status).toBe(200)
  })

  it('a failure on a redirect hop names that hop\'s host', async () => {
    const ex = await executorWith({ allowedHosts: [`127.0.0.1:${port}`, '[::1]'] })
    const e = await failure(requests(ex, [{ url: `${base}/redirect?to=${encodeURIComponent('http://[::1]:1/')}` }]))
    expect([e.code, e.host]).toEqual(['NETWORK_ERROR', '[::1]'])
  })

  it('redirects are checked hop by hop: to a host not allowed, to a name on loopback, past 5 hops', async () => {
    const network = { allowedHosts: [`127.0.0.1:${port}`] }
    const to = (u: string) => `${base}/redirect?to=${encodeURIComponent(u)}`
    await denied(network, [{ url: to('http://169.254.169.254/latest/meta-data/') }], '169.254.169.254', 'redirect')
    await denied({ allowedHosts: [`127.0.0.1:${port}`, `localhost:${port}`] }, [{ url: to(`http://localhost:${port}/json`) }], 'localhost', 'loopback')
    await denied(network, [{ url: `${base}/loop` }], '127.0.0.1', 'redirects')
  })

  it('a body the guest could not hold is OUT_OF_MEMORY as soon as that much came, not read on to maxResponseBytes (review AA)', async () => {
    // Before: the host read all 10 MiB for a guest capped at 1 MiB (250 such calls at once took
    // 2.7 GiB of host memory: a call waiting on the network holds no concurrency slot).
    const ex = await executorWith({ allowedHosts: [`127.0.0.1:${port}`], maxResponseBytes: 20 << 20 })
    const e = await failure(requests(ex, [{ url: `${base}/paced?id=aa` }], { limits: { maxMemoryMB: 1 } }))
    expect(e.code, e.message).toBe('OUT_OF_MEMORY')
    await new Promise((r) => setTimeout(r, 100))
    expect(paced.get('aa')).toBeLessThanOrEqual(4)
    // Room enough, the same body comes whole.
    const [whole] = await requests(ex, [{ url: `${base}/paced?id=ab&n=3` }])
    expect(whole.body.length).toBe(3 << 20)
    // A memory's size is not what the guest holds: a guest whose memory is at its 8 MiB cap, all
    // but a page of it free, still takes a response (review AN1F: every response was refused as
    // if the memory were full, 10 bytes too).
    const request = JSON.stringify({ url: `${base}/json` })
    const utf16 = [...Buffer.from(request, 'utf16le')].map((b) => `\\${b.toString(16).padStart(2, '0')}`).join('')
    const length = [...Buffer.alloc(4)].map((_, i) => `\\${((request.length * 2) >> (8 * i) & 255).toString(16).padStart(2, '0')}`).join('')
    const full = await guestWat(
      `(data (i32.const 60) "${length}${utf16}")
      (func (export "execute") (param i32) (result i32)
        (drop (memory.grow (i32.sub (i32.const 128) (memory.size))))
        (call $http (i32.const 64)))`,
      '(import "loom" "http" (func $http (param i32) (result i32)))',
    )
    const atCap = await executorWith({ allowedHosts: [`127.0.0.1:${port}`] }, { full })
    const answer: any = await atCap.execute(def('full', { ...NET, limits: { maxMemoryMB: 8 } }), {})
    expect(answer.status).toBe(200)
    expect(JSON.parse(answer.body)).toEqual({ hello: 'world', method: 'GET', body: '' })
  })

  it('caps: response bytes (declared and streamed), request bytes, header bytes both ways, requests per call', async () => {
    const host = `127.0.0.1:${port}`
    await denied({ allowedHosts: [host], maxResponseBytes: 1000 }, [{ url: `${base}/big?n=5000` }], '127.0.0.1', 'maxResponseBytes')
    await denied({ allowedHosts: [host], maxResponseBytes: 1_000_000 }, [{ url: `${base}/stream` }], '127.0.0.1', 'maxResponseBytes')
    await denied({ allowedHosts: [host], maxRequestBytes: 10 }, [{ method: 'POST', url: `${base}/json`, body: 'y'.repeat(100) }], '127.0.0.1', 'maxRequestBytes')
    await denied({ allowedHosts: [host], maxHeaderBytes: 1000 }, [{ url: `${base}/json`, headers: { 'x-big': 'z'.repeat(2000) } }], '127.0.0.1', 'maxHeaderBytes')
    await denied({ allowedHosts: [host], maxHeaderBytes: 4000 }, [{ url: `${base}/fat-headers` }], '127.0.0.1', 'maxHeaderBytes')
    // A redirect's headers count as the answer's do (review N: a hop of 200 KB was followed).
    const fatHop = `${base}/redirect?fat=8000&to=${encodeURIComponent('/json')}`
    await denied({ allowedHosts: [host], maxHeaderBytes: 4000 }, [{ url: fatHop }], '127.0.0.1', 'maxHeaderBytes')
    // The URL is in the request's head: over maxHeaderBytes, or over what a request can carry,
    // it is refused before it is sent, from the guest or from a redirect (review N: a builder
    // error, retryable NETWORK_ERROR, the whole URL in its message).
    const long = await denied({ allowedHosts: [host], maxHeaderBytes: 1000 }, [{ url: `${base}/json?${'q'.repeat(2000)}` }], '127.0.0.1', 'maxHeaderBytes')
    expect(long.reached).toBe(0)
    const { e: longHop } = await denied({ allowedHosts: [host], maxHeaderBytes: 1 << 20 }, [{ url: `${base}/long-redirect?n=70000` }], '127.0.0.1', 'the most an HTTP request carries')
    expect(longHop.message.length).toBeLessThan(1000)
    // A head past what the client reads at all (about 400 KiB), in an answer or a redirect, is
    // refused as a head over maxHeaderBytes is (it was a retryable NETWORK_ERROR).
    for (const url of [`${base}/fat-headers?n=1000000`, `${base}/long-redirect?n=1000000`]) {
      const { e: huge } = await denied({ allowedHosts: [host], maxHeaderBytes: 1 << 20 }, [{ url }], '127.0.0.1', 'the response\'s head is more than the client reads')
      expect([huge.retryable, huge.message.length < 1000]).toEqual([false, true])
    }
    const { reached } = await denied({ allowedHosts: [host], maxRequestsPerCall: 2 }, [1, 2, 3].map(() => ({ url: `${base}/json` })), '127.0.0.1', 'maxRequestsPerCall')
    expect(reached).toBe(2)
  })

  it('bad allowedHosts entries and caps are INVALID_ARGUMENT at construction', () => {
    const store = new MemoryBlobStore()
    for (const network of [
      {},
      { allowedHosts: ['http://example.com'] },
      { allowedHosts: ['a.*.com'] },
      { allowedHosts: ['example.com:0'] },
      { allowedHosts: [5] },
      { allowedHosts: [], maxResponseBytes: -1 },
      { allowedHosts: [], timeoutMs: 0 },
      // A misspelt cap is refused, not left at its default (review N: maxRedirect was ignored).
      { allowedHosts: [], maxRedirect: 0 },
    ]) {
      expect(() => new WasmActivityExecutor(store, { network } as any), JSON.stringify(network)).toThrow(
        expect.objectContaining({ code: 'INVALID_ARGUMENT' }),
      )
    }
  })
})

describe('failures on the way and time', () => {
  it('a refused connection is NETWORK_ERROR (retryable); a slow server hits timeoutMs, or the call deadline first', async () => {
    const closed = createServer()
    await new Promise<void>((r) => closed.listen(0, '127.0.0.1', r))
    const deadPort = (closed.address() as AddressInfo).port
    await new Promise((r) => closed.close(r))
    const ex = await executorWith({ allowedHosts: ['127.0.0.1'], timeoutMs: 200 })
    const refused = await failure(requests(ex, [{ url: `http://127.0.0.1:${deadPort}/` }]))
    expect([refused.code, refused.retryable, refused.host]).toEqual(['NETWORK_ERROR', true, '127.0.0.1'])
    const slow = await failure(requests(ex, [{ url: `${base}/slow` }]))
    expect([slow.code, slow.message.includes('timed out')]).toEqual(['NETWORK_ERROR', true])
    const patient = await executorWith({ allowedHosts: ['127.0.0.1'] })
    const t0 = performance.now()
    const late = await failure(requests(patient, [{ url: `${base}/slow` }], { limits: { maxExecutionMs: 300 } }))
    expect(late.code).toBe('TIMEOUT')
    expect(performance.now() - t0).toBeGreaterThanOrEqual(290)
  })
})

describe('connections: pooled, and bounded whatever hosts a guest reaches', () => {
  // Servers in a process of their own: the descriptors counted here are the executor's.
  let servers: ChildProcess
  let ports: number[] = []
  beforeAll(async () => {
    // /to/A/B/...: a redirect to port A with the rest of the path; the end answers.
    const code = `const { createServer } = require('node:http'); const ports = [];
      const answer = (q, r) => { const [, to, first, ...rest] = q.url.split('/');
        if (to !== 'to' || !first) return r.end('{}');
        r.writeHead(302, { location: 'http://127.0.0.1:' + first + '/to/' + rest.join('/') }).end() };
      (async () => { for (let i = 0; i < 150; i++) { const s = createServer(answer); s.keepAliveTimeout = 120000;
        await new Promise((r) => s.listen(0, '127.0.0.1', r)); ports.push(s.address().port) }
        process.stdout.write(JSON.stringify(ports) + '\\n') })()`
    servers = spawn(process.execPath, ['-e', code], { stdio: ['ignore', 'pipe', 'inherit'] })
    ports = JSON.parse(await new Promise<string>((r) => createInterface({ input: servers.stdout! }).once('line', r)))
  })
  afterAll(() => void servers.kill())
  const descriptors = () => readdirSync('/proc/self/fd').length
  /** The descriptor count once it has stopped changing (a closed executor's connections close as their tasks end). */
  const settled = async () => {
    for (let last = -1, now = descriptors(); ; last = now, now = descriptors()) {
      if (now === last) return now
      await new Promise((r) => setTimeout(r, 100))
    }
  }

  it('a guest reaching 150 hosts (every port of an IP allowed without one) leaves at most 32 connections open, not 150', async () => {
    // Hostile: reqwest's pool kept an idle connection (a descriptor) per host reached in the last
    // 30 s, with no bound on hosts: enough of them runs the process out of descriptors.
    const ex = await executorWith({ allowedHosts: ['127.0.0.1'], maxRequestsPerCall: 1000 })
    const before = await settled()
    for (const half of [ports.slice(0, 75), ports.slice(75)]) {
      const out = await requests(ex, half.map((p) => ({ url: `http://127.0.0.1:${p}/` })))
      expect(out.map((r: any) => r.status)).toEqual(half.map(() => 200))
    }
    const held = descriptors() - before
    expect(held).toBeLessThanOrEqual(32 + 8)
    expect(held).toBeGreaterThan(0)
    await ex.close()
  })

  it('redirect hops count as hosts too: 30 requests each redirected through 5 hosts leave at most 32 connections open', async () => {
    // Hostile: hops followed inside the HTTP client went to its pool whatever the bound.
    const ex = await executorWith({ allowedHosts: ['127.0.0.1'], maxRequestsPerCall: 1000 })
    const before = await settled()
    const chains = Array.from({ length: 30 }, (_, i) => ports.slice(i * 5, i * 5 + 5))
    const out = await requests(ex, chains.map(([first, ...rest]) => ({ url: `http://127.0.0.1:${first}/to/${rest.join('/')}/` })))
    expect(out.map((r: any) => r.status)).toEqual(chains.map(() => 200))
    const held = descriptors() - before
    expect(held).toBeLessThanOrEqual(32 + 8)
    expect(held).toBeGreaterThan(0)
    await ex.close()
  })

  it('a guest reaching one host reuses its connection across requests and calls', async () => {
    let opened = 0
    const count = () => opened++
    server.on('connection', count)
    try {
      const ex = await executorWith({ allowedHosts: [`127.0.0.1:${port}`] })
      for (let call = 0; call < 3; call++) {
        const out = await requests(ex, Array.from({ length: 5 }, () => ({ url: `${base}/json` })))
        expect(out.map((r: any) => r.status)).toEqual([200, 200, 200, 200, 200])
      }
      // Not 15: one, or now and then two (hyper hands a finished connection back to the pool
      // from a task of its own, which the next request can outrun).
      expect(opened).toBeGreaterThanOrEqual(1)
      expect(opened).toBeLessThanOrEqual(2)
      await ex.close()
    } finally {
      server.off('connection', count)
    }
  })

  it("requests are refused, not sent, once the process's descriptors left are its reserve: Node keeps its own (review AA)", async () => {
    // Before: each call waiting on the network held a socket, and none holds a concurrency slot:
    // under a limit of 1,024, 1,000 such calls took every descriptor, and Node's own opens failed.
    const stall = spawn(process.execPath, ['-e', `require('node:net').createServer(() => {}).listen(0, '127.0.0.1', function () { console.log(this.address().port) })`], { stdio: ['ignore', 'pipe', 'inherit'] })
    try {
      const port = Number(await new Promise<string>((r) => createInterface({ input: stall.stdout! }).once('line', r)))
      const dir = mkdtempSync(join(tmpdir(), 'loom-fds-'))
      const script = join(dir, 'fds.cjs')
      writeFileSync(script, `
        const { WasmActivityExecutor } = require(${JSON.stringify(root)})
        const fs = require('node:fs')
        const bytes = fs.readFileSync(${JSON.stringify(join(root, 'build', 'host', 'http.wasm'))})
        ;(async () => {
          const ex = new WasmActivityExecutor({ download: async () => bytes }, { network: { allowedHosts: ['127.0.0.1:${port}'] } })
          const d = { name: 'http', version: '1', wasmBlobPath: 'http.wasm', capabilities: { network: true }, limits: { maxExecutionMs: 3000, maxMemoryMB: 1 } }
          const request = { requests: [JSON.stringify({ url: 'http://127.0.0.1:${port}/' })] }
          const calls = Array.from({ length: 600 }, () => ex.execute(d, request).then(() => 'ok', (e) => e.code + (/short of file descriptors/.test(e.message) ? ' (descriptors)' : '')))
          await new Promise((r) => setTimeout(r, 1500))
          let open
          try { fs.closeSync(fs.openSync(__filename, 'r')); open = 'ok' } catch (e) { open = e.code }
          const codes = {}
          for (const c of await Promise.all(calls)) codes[c] = (codes[c] || 0) + 1
          await ex.close()
          console.log(JSON.stringify({ open, codes }))
        })()`)
      const out = await new Promise<string>((resolve, reject) => {
        const child = spawn('bash', ['-c', `ulimit -n 512 && exec "${process.execPath}" "${script}"`], { stdio: ['ignore', 'pipe', 'inherit'] })
        let text = ''
        child.stdout!.on('data', (c) => (text += c))
        child.on('exit', (code) => (code === 0 ? resolve(text) : reject(new Error(`exit ${code}: ${text}`))))
      })
      const { open, codes } = JSON.parse(out)
      expect(open).toBe('ok')
      expect(codes['NETWORK_ERROR (descriptors)']).toBeGreaterThan(0)
      // The rest waited on the silent server until their deadline.
      expect(Object.keys(codes).sort()).toEqual(['NETWORK_ERROR (descriptors)', 'TIMEOUT'])
    } finally {
      stall.kill()
    }
  }, 60_000)
})

describe('HTTP from Extism plugins (http_request / http_status_code, Extism\'s semantics)', () => {
  it('an allowed request returns the body block and its status; a denied one fails the call', async () => {
    const ex = await executorWith({ allowedHosts: [`127.0.0.1:${port}`] }, { plugin: built('c/host-plugin.wasm') })
    const d = def('plugin', { ...NET, entrypoint: 'fetch', capabilities: { network: true, hostFunctions: ['crm.lookup'] } })
    // The plugin also imports crm.lookup: grant it (never called by `fetch`).
    const withFns = new WasmActivityExecutor(await storeOf({ plugin: built('c/host-plugin.wasm') }), {
      network: { allowedHosts: [`127.0.0.1:${port}`] },
      hostFunctions: { 'crm.lookup': () => null },
    })
    expect(await withFns.execute(d, { url: `${base}/json`, method: 'POST', body: 'from C' })).toEqual({
      status: 200,
      body: { hello: 'world', method: 'POST', body: 'from C' },
    })
    expect(await withFns.execute(d, { url: `${base}/status?code=404` })).toEqual({ status: 404, body: { failed: true } })
    const e = await failure(withFns.execute(d, { url: 'http://169.254.169.254/' }))
    expect([e.code, e.host]).toEqual(['NETWORK_DENIED', '169.254.169.254'])
    const no = await failure(withFns.execute(def('plugin', { entrypoint: 'fetch', capabilities: { hostFunctions: ['crm.lookup'] } }), { url: `${base}/json` }))
    expect([no.code, no.message.includes('network')]).toEqual(['CAPABILITY_DENIED', true])
    expect((await failure(ex.execute(d, { url: `${base}/json` }))).code).toBe('CAPABILITY_DENIED')
  })
})

describe('HTTP from a JavaScript component: componentize-js\'s own fetch() over wasi:http', () => {
  it('fetch() reaches an allowed host; a failure on the way rejects it; a denied request fails the call even when caught', async () => {
    const ex = await executorWith({ allowedHosts: ['127.0.0.1'] }, { fetch: built('js/fetch.wasm') })
    const d = def('fetch', NET)
    expect(await ex.execute(d, { url: `${base}/json`, method: 'POST', headers: { 'x-loom': 'wasi' }, body: 'from wasi:http' })).toEqual({
      status: 200,
      contentType: 'application/json',
      body: { hello: 'world', method: 'POST', body: 'from wasi:http' },
    })
    expect(seen.at(-1)!.headers['x-loom']).toBe('wasi')
    expect(await ex.execute(d, { url: `${base}/status?code=418` })).toMatchObject({ status: 418, body: { failed: true } })
    const down = (await ex.execute(d, { url: 'http://127.0.0.1:1/' })) as any
    expect(typeof down.fetchError).toBe('string')
    // The guest catches the rejection and returns normally: the call still fails.
    for (const url of ['http://169.254.169.254/latest/meta-data/', `http://localhost:${port}/json`, 'http://example.com/']) {
      const e = await failure(ex.execute(d, { url }))
      expect(e.code, url).toBe('NETWORK_DENIED')
    }
    const big = await executorWith({ allowedHosts: ['127.0.0.1'], maxResponseBytes: 100 }, { fetch: built('js/fetch.wasm') })
    expect((await failure(big.execute(d, { url: `${base}/big?n=1000` }))).code).toBe('NETWORK_DENIED')
    const t0 = performance.now()
    const late = await failure(ex.execute(def('fetch', { ...NET, limits: { maxExecutionMs: 300 } }), { url: `${base}/slow` }))
    expect(late.code).toBe('TIMEOUT')
    expect(performance.now() - t0).toBeGreaterThanOrEqual(290)
  })

  it("a body that disagrees with the Content-Length the component set is the guest's own failure, not a broken grant: not sent, and fetch() rejects (review BS2)", async () => {
    const ex = await executorWith({ allowedHosts: ['127.0.0.1'], maxRequestBytes: 1 << 20 }, { fetch: built('js/fetch.wasm') })
    const d = def('fetch', NET)
    const before = seen.length
    const out = (await ex.execute(d, { url: `${base}/json`, method: 'POST', body: 'abc', headers: { 'Content-Length': '100' } })) as any
    expect(typeof out.fetchError).toBe('string')
    expect(seen.length).toBe(before)
    // A body over maxRequestBytes still breaks the grant.
    const small = await executorWith({ allowedHosts: ['127.0.0.1'], maxRequestBytes: 10 }, { fetch: built('js/fetch.wasm') })
    const e = await failure(small.execute(d, { url: `${base}/json`, method: 'POST', body: 'y'.repeat(100) }))
    expect([e.code, e.message]).toEqual(['NETWORK_DENIED', expect.stringContaining('maxRequestBytes 10')])
    expect(seen.length).toBe(before)
  })

  it("bodies a component holds in the host count against its maxMemoryMB: responses kept unread across calls, requests sent at once", async () => {
    // Unbudgeted, an actor keeping its responses held 500 MiB more per call (3 GiB after 6 calls,
    // its guest memory 9 MiB), and 100 requests of 10 MiB at once held 2 GiB.
    const ex = await executorWith({ allowedHosts: ['127.0.0.1'] }, { fetch: built('js/fetch.wasm') })
    const d = def('fetch', { ...NET, limits: { maxMemoryMB: 48 } })
    const keep = { url: `${base}/big?n=${2 * 1024 * 1024}`, keep: 10 }
    expect(await ex.execute(d, keep, { actorId: 'keeper' })).toEqual({ kept: 10 })
    expect(await ex.execute(d, keep, { actorId: 'keeper' })).toEqual({ kept: 20 })
    expect((await failure(ex.execute(d, keep, { actorId: 'keeper' }))).code).toBe('OUT_OF_MEMORY')
    // Headers count with their response: 100 of 60 KB per call, under a 16 MiB cap.
    const heady = def('fetch', { ...NET, limits: { maxMemoryMB: 16 } })
    const fat = { url: `${base}/fat-headers?n=60000`, keep: 100 }
    expect(await ex.execute(heady, fat, { actorId: 'heady' })).toEqual({ kept: 100 })
    expect(await ex.execute(heady, fat, { actorId: 'heady' })).toEqual({ kept: 200 })
    expect((await failure(ex.execute(heady, fat, { actorId: 'heady' }))).code).toBe('OUT_OF_MEMORY')
    // Another instance has its own budget.
    expect(await ex.execute(d, { ...keep, keep: 5 })).toEqual({ kept: 5 })
    const posts = await failure(ex.execute(d, { url: `${base}/later`, post: { n: 10, size: 8 * 1024 * 1024 } }))
    expect(posts.code).toBe('OUT_OF_MEMORY')
    // Within the budget, as before.
    expect(await ex.execute(d, { url: `${base}/later`, post: { n: 2, size: 8 * 1024 * 1024 } })).toEqual({ statuses: [200, 200] })
  })

  it('large bodies and many fetches: the pollable componentize-js keeps per 8 KiB read is not counted against the resource cap', async () => {
    // Counted, a 16 MiB body (2,048 reads) or an actor's 16th fetch of 1 MiB trapped with "resource
    // table has no free keys". Those pollables are paid for from maxMemoryMB instead (see README).
    const ex = await executorWith({ allowedHosts: ['127.0.0.1'], maxResponseBytes: 32 << 20 }, { fetch: built('js/fetch.wasm') })
    const d = def('fetch', { ...NET, limits: { maxMemoryMB: 128 } })
    expect(await ex.execute(d, { url: `${base}/spaces?n=${17 << 20}` })).toMatchObject({ status: 200, body: 0 })
    for (let i = 0; i < 24; i++) {
      expect(await ex.execute(d, { url: `${base}/spaces?n=${1 << 20}` }, { actorId: 'reader' })).toMatchObject({ status: 200, body: 0 })
    }
  })

  it('a component importing wasi:http runs only with capabilities.network and options.network', async () => {
    const granted = await executorWith({ allowedHosts: ['127.0.0.1'] }, { fetch: built('js/fetch.wasm') })
    const e = await failure(granted.execute(def('fetch'), { url: `${base}/json` }))
    expect([e.code, e.message.includes('wasi:http/outgoing-handler')]).toEqual(['CAPABILITY_DENIED', true])
    const closed = await executorWith(undefined, { fetch: built('js/fetch.wasm') })
    expect((await failure(closed.execute(def('fetch', NET), { url: `${base}/json` }))).code).toBe('CAPABILITY_DENIED')
  })
})

describe('HTTP from a JavaScript component (a fetch() over loom:activity/host.http)', () => {
  it('fetch() reaches an allowed host; a failure on the way rejects fetch; a denied host ends the call', async () => {
    const ex = await executorWith({ allowedHosts: ['127.0.0.1'] }, { js: built('js/echo.wasm') })
    expect(await ex.execute(def('js', NET), { fetch: { url: `${base}/json`, method: 'POST', body: 'from js' } })).toEqual({
      status: 200,
      body: { hello: 'world', method: 'POST', body: 'from js' },
    })
    const down = (await ex.execute(def('js', NET), { fetch: { url: 'http://127.0.0.1:1/' } })) as any
    expect(down.fetchError).toMatch(/^fetch failed/)
    const e = await failure(ex.execute(def('js', NET), { fetch: { url: 'http://169.254.169.254/' } }))
    expect(e.code).toBe('NETWORK_DENIED')
    const closed = await failure(ex.execute(def('js'), { fetch: { url: `${base}/json` } }))
    expect(closed.code).toBe('CAPABILITY_DENIED')
  })
})

async function storeOf(blobs: Record<string, Buffer>) {
  const store = new MemoryBlobStore()
  for (const [name, bytes] of Object.entries(blobs)) await store.upload(`${name}.wasm`, bytes)
  return store
}
