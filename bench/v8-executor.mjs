// The peer: what Loom's TypeScript executor does, done well, on V8. Compiled WebAssembly.Module
// cached per name@version, a fresh WebAssembly.Instance per call (or one kept per actor), and
// AssemblyScript strings written and read by their length header.

const STRING_ID = 2

function readString(memory, ptr) {
  const len = new Uint32Array(memory.buffer, ptr - 4, 1)[0]
  return Buffer.from(memory.buffer, ptr, len).toString('utf16le')
}

function imports(memoryRef) {
  return {
    env: {
      abort(msg, file, line, col) {
        const m = memoryRef.memory
        throw new Error(`abort: ${msg ? readString(m, msg) : ''} at ${file ? readString(m, file) : ''}:${line}:${col}`)
      },
      seed: () => Date.now() * Math.random(),
      trace() {},
      'Date.now': () => Date.now(),
    },
    loom: { log() {} },
  }
}

export class V8Executor {
  constructor(blobStore) {
    this.blobStore = blobStore
    this.modules = new Map()
    this.actors = new Map()
  }

  async module(def) {
    const key = `${def.name}@${def.version}`
    let m = this.modules.get(key)
    if (!m) {
      m = await WebAssembly.compile(await this.blobStore.download(def.wasmBlobPath))
      this.modules.set(key, m)
    }
    return m
  }

  instantiate(module) {
    const ref = {}
    const instance = new WebAssembly.Instance(module, imports(ref))
    ref.memory = instance.exports.memory
    return instance
  }

  async execute(def, input, options) {
    const module = await this.module(def)
    let instance
    if (options?.actorId) {
      instance = this.actors.get(options.actorId)
      if (!instance) this.actors.set(options.actorId, (instance = this.instantiate(module)))
    } else {
      instance = this.instantiate(module)
    }
    const { memory, __new, __pin, __unpin, execute } = instance.exports
    const json = JSON.stringify(input) ?? 'null'
    const ptr = __new(json.length * 2, STRING_ID)
    Buffer.from(memory.buffer, ptr, json.length * 2).write(json, 'utf16le')
    __pin(ptr)
    const out = execute(ptr)
    const text = readString(memory, out)
    __unpin(ptr)
    return JSON.parse(text)
  }
}
