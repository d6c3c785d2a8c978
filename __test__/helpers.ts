import { createHash } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import type { ActivityDefinition, BlobStore } from '../index'

export const root = join(__dirname, '..')

/** Loom's in-memory BlobStore, as Loom's own tests write it (uses `this`). */
export class MemoryBlobStore implements BlobStore {
  private blobs = new Map<string, Buffer>()
  downloads = 0

  async upload(path: string, data: Buffer): Promise<string> {
    this.blobs.set(path, data)
    return path
  }
  async download(path: string): Promise<Buffer> {
    this.downloads++
    const data = this.blobs.get(path)
    if (!data) throw new Error(`Blob not found: ${path}`)
    return data
  }
  async exists(path: string): Promise<boolean> {
    return this.blobs.has(path)
  }
  async delete(path: string): Promise<void> {
    this.blobs.delete(path)
  }
}

/** The bytes of a guest built by `npm run asbuild` (e.g. 'echo', 'hostile/spin'). */
export function guest(name: string): Buffer {
  return readFileSync(join(root, 'build', `${name}.wasm`))
}

/** A store holding the named guests at `<name>.wasm`. */
export async function storeWith(...names: string[]): Promise<MemoryBlobStore> {
  const store = new MemoryBlobStore()
  for (const n of names) await store.upload(`${n}.wasm`, guest(n))
  return store
}

export function def(name: string, extra: Partial<ActivityDefinition> = {}): ActivityDefinition {
  return { name, version: '1.0.0', wasmBlobPath: `${name}.wasm`, ...extra }
}

/** The rejection of a promise that must reject. */
export async function failure(p: Promise<unknown>): Promise<any> {
  try {
    await p
  } catch (e) {
    return e
  }
  throw new Error('expected the call to fail, but it succeeded')
}

/** `snapshot` (a copy) claiming a memory of `bytes` (the u64 after magic, version and module
 * digest), its checksum (the last 32 bytes: sha256 of the rest) made good again. */
export function claimingMemory(snapshot: Uint8Array, bytes: number): Buffer {
  const snap = Buffer.from(snapshot)
  const body = snap.subarray(0, snap.length - 32)
  body.writeBigUInt64LE(BigInt(bytes), 8 + 4 + 32)
  createHash('sha256').update(body).digest().copy(snap, snap.length - 32)
  return snap
}
