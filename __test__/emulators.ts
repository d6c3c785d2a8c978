// Real object-store services for the tests, started and stopped by the tests themselves on
// loopback: s3rver (S3) and Azurite (Azure Blob Storage), both from npm.
import { spawn, type ChildProcess } from 'node:child_process'
import { mkdtempSync } from 'node:fs'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { root } from './helpers'

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer()
    srv.once('error', reject)
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as any).port
      srv.close(() => resolve(port))
    })
  })
}

async function waitForHttp(url: string, ms = 20_000): Promise<void> {
  const deadline = Date.now() + ms
  while (Date.now() < deadline) {
    try {
      await fetch(url)
      return
    } catch {
      await new Promise((r) => setTimeout(r, 100))
    }
  }
  throw new Error(`${url} did not come up within ${ms} ms`)
}

export interface Service {
  port: number
  stop(): Promise<void>
}

function start(bin: string, args: string[]): ChildProcess {
  const child = spawn(join(root, 'node_modules', '.bin', bin), args, { stdio: ['ignore', 'ignore', 'pipe'] })
  child.stderr?.on('data', (d) => process.env.DEBUG_EMULATORS && process.stderr.write(d))
  return child
}

function stopper(child: ChildProcess) {
  return () =>
    new Promise<void>((resolve) => {
      if (child.exitCode !== null) return resolve()
      child.once('exit', () => resolve())
      child.kill('SIGTERM')
    })
}

/** s3rver with `bucket` created. */
export async function startS3(bucket: string): Promise<Service> {
  const port = await freePort()
  const dir = mkdtempSync(join(tmpdir(), 's3rver-'))
  const child = start('s3rver', ['-d', dir, '--address', '127.0.0.1', '--port', String(port), '--silent'])
  await waitForHttp(`http://127.0.0.1:${port}/`)
  const res = await fetch(`http://127.0.0.1:${port}/${bucket}`, { method: 'PUT' })
  if (!res.ok) throw new Error(`creating bucket failed: ${res.status}`)
  return { port, stop: stopper(child) }
}

const AZURITE_KEY = 'Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=='

/** Azurite's blob service with `container` created. */
export async function startAzurite(container: string): Promise<Service> {
  const port = await freePort()
  const child = start('azurite-blob', [
    '--inMemoryPersistence', '--disableTelemetry', '--skipApiVersionCheck', '--loose',
    '--blobHost', '127.0.0.1', '--blobPort', String(port),
  ])
  await waitForHttp(`http://127.0.0.1:${port}/`)
  const { BlobServiceClient } = await import('@azure/storage-blob')
  const client = BlobServiceClient.fromConnectionString(
    `DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=${AZURITE_KEY};` +
      `BlobEndpoint=http://127.0.0.1:${port}/devstoreaccount1;`,
  )
  await client.getContainerClient(container).create()
  return { port, stop: stopper(child) }
}

/**
 * moto's S3 server (PyPI), with `bucket` created: an S3 emulator that honours conditional writes
 * (If-Match / If-None-Match on PUT), which s3rver ignores. Installed on first use into
 * .cache/moto-venv by pip (python3 -m venv), then reused.
 */
export async function startMoto(bucket: string): Promise<Service> {
  const venv = join(root, '.cache', 'moto-venv')
  const server = join(venv, 'bin', 'moto_server')
  const { existsSync } = await import('node:fs')
  const { execFileSync } = await import('node:child_process')
  if (!existsSync(server)) {
    execFileSync('python3', ['-m', 'venv', venv], { stdio: 'inherit' })
    execFileSync(join(venv, 'bin', 'pip'), ['install', '--quiet', 'moto[server]==5.2.5'], { stdio: 'inherit', timeout: 600_000 })
  }
  const port = await freePort()
  const child = spawn(server, ['-H', '127.0.0.1', '-p', String(port)], { stdio: ['ignore', 'ignore', 'pipe'] })
  child.stderr?.on('data', (d) => process.env.DEBUG_EMULATORS && process.stderr.write(d))
  await waitForHttp(`http://127.0.0.1:${port}/`)
  const res = await fetch(`http://127.0.0.1:${port}/${bucket}`, { method: 'PUT' })
  if (!res.ok) throw new Error(`creating bucket failed: ${res.status}`)
  return { port, stop: stopper(child) }
}

/**
 * An HTTP proxy on loopback in front of `targetPort` that can lose answers: for each request,
 * `lose(method, path)` says whether the target's answer is to be lost. A lost request is still
 * forwarded and answered by the target (a write lands), but its client gets a 500 instead: what a
 * network or an overloaded endpoint does to a write whose answer never arrives. If `lose` returns
 * a function, it is called with the target's status once the target has answered, and the 500
 * waits for the promise it returns.
 */
export async function startLossyProxy(
  targetPort: number,
  lose: (method: string, path: string) => boolean | ((status: number) => Promise<void>),
  strip: string[] = [], // request headers not passed on (a store that ignores them)
): Promise<Service> {
  const http = await import('node:http')
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = []
    req.on('data', (c) => chunks.push(c))
    req.on('end', () => {
      const verdict = lose(req.method ?? 'GET', req.url ?? '/')
      for (const h of strip) delete req.headers[h]
      const upstream = http.request(
        { host: '127.0.0.1', port: targetPort, method: req.method, path: req.url, headers: req.headers },
        (answer) => {
          const body: Buffer[] = []
          answer.on('data', (c) => body.push(c))
          answer.on('end', async () => {
            if (verdict === false) {
              res.writeHead(answer.statusCode ?? 502, answer.headers)
              return res.end(Buffer.concat(body))
            }
            if (verdict !== true) await verdict(answer.statusCode ?? 0)
            res.writeHead(500, { 'content-type': 'application/xml' })
            res.end('<Error><Code>InternalError</Code><Message>answer lost by the test proxy</Message></Error>')
          })
        },
      )
      upstream.on('error', () => res.destroy())
      upstream.end(Buffer.concat(chunks))
    })
  })
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()))
  const port = (server.address() as any).port
  return { port, stop: () => new Promise<void>((r) => { server.closeAllConnections(); server.close(() => r()) }) }
}
