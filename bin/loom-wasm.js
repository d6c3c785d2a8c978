#!/usr/bin/env node
// loom-wasm: run, inspect and precompile Loom WebAssembly activities from the command line.
'use strict'

const { closeSync, constants, fstatSync, openSync, readSync } = require('node:fs')
const { resolve } = require('node:path')

// Exit statuses, one per class of failure.
const EXIT = { ok: 0, internal: 1, usage: 2, guest: 3, limit: 4, load: 5 }
// Every code of README's table has its class; only INTERNAL (and anything unknown) is 1.
const CLASS = {
  GUEST_ABORT: 'guest', GUEST_ERROR: 'guest', TRAP: 'guest', INVALID_OUTPUT: 'guest', OUTPUT_TOO_LARGE: 'guest',
  HOST_FUNCTION_ERROR: 'guest',
  TIMEOUT: 'limit', OUT_OF_MEMORY: 'limit', OUT_OF_FUEL: 'limit', INPUT_TOO_LARGE: 'limit', CANCELLED: 'limit',
  COMPILE_LIMIT: 'limit', BUSY: 'limit', NETWORK_DENIED: 'limit', CLOSED: 'limit',
  BLOB_NOT_FOUND: 'load', BLOB_UNAVAILABLE: 'load', INVALID_MODULE: 'load', MISSING_EXPORT: 'load',
  CAPABILITY_DENIED: 'load', INTEGRITY_MISMATCH: 'load', NETWORK_ERROR: 'load', SNAPSHOT_INVALID: 'load',
  SNAPSHOT_MISMATCH: 'load', ACTOR_CONFLICT: 'load',
  INVALID_ARGUMENT: 'usage', INVALID_INPUT: 'usage', USAGE: 'usage',
}

const HELP = {
  main: `loom-wasm <command> [options]

Commands:
  run <module.wasm | url>        run a guest's execute() and print its JSON output
  inspect <module.wasm | url>    size, sha256, exports, imports, and whether it matches the guest ABI
  precompile <module.wasm | url> --cache-dir DIR [--max-cache-dir-bytes N]
                                 write its compiled artifact into DIR

Run 'loom-wasm <command> --help' for a command's options.
Exit status: 0 ok, 1 internal error, 2 usage error, 3 guest error, 4 limit hit, 5 load error.`,
  run: `loom-wasm run <module.wasm | url> [options]

Runs the module's execute(input) and prints its output as JSON.

Options:
  --input '<json>'     the input (JSON text)
  --input @file.json   the input, from a file
                       (without --input, the input is read from stdin when it is not a terminal, else null)
  --timeout MS         time limit of the guest, and of reading stdin (default 30000)
  --memory MB          linear-memory cap (default 256)
  --fuel N             instruction budget
  --actor ID           run on one kept instance (guest state persists across --repeat)
  --repeat N           run N times, printing each output (default 1)
  --cache-dir DIR      compiled-artifact cache
  --max-cache-dir-bytes N
                       what DIR's artifacts and hints may take on disk (default 1 GiB);
                       past it the least recently used go
  --help`,
  inspect: `loom-wasm inspect <module.wasm | url>

Prints size, sha256, exports and imports with their types, and which guest ABI the module
matches (and why not, if none), as JSON.`,
  precompile: `loom-wasm precompile <module.wasm | url> --cache-dir DIR [--max-cache-dir-bytes N]

Compiles the module and writes its artifact (<sha256>-<engine>.cwasm) into DIR, so later runs and
executors with the same cacheDir skip compiling. Prints the module's sha256. With
--max-cache-dir-bytes N (default 1 GiB), DIR is kept under N bytes on disk (the least recently used
artifacts and hints go), and an artifact larger than N is not written: a usage error.`,
}

class UsageError extends Error {
  constructor(message) {
    super(message)
    this.code = 'USAGE'
  }
}

/** The options each command takes. */
const TAKES = {
  run: ['input', 'timeout', 'memory', 'fuel', 'actor', 'repeat', 'cache-dir', 'max-cache-dir-bytes'],
  inspect: [],
  precompile: ['cache-dir', 'max-cache-dir-bytes'],
}

/** Options and the one module a command takes; anything else is a usage error, not ignored
 * (review BI2: a second module, an option of another command, a repeated or empty value, were
 * silently dropped). `--` ends the options (a module path starting with `--`). */
function parse(argv) {
  const [command, ...rest] = argv
  const opts = { _: [] }
  const takes = Object.hasOwn(TAKES, command) ? TAKES[command] : []
  let ended = false
  for (let i = 0; i < rest.length; i++) {
    const a = rest[i]
    if (!ended && a === '--') ended = true
    else if (!ended && (a === '--help' || a === '-h')) opts.help = true
    else if (!ended && a.startsWith('--')) {
      const key = a.slice(2)
      if (!takes.includes(key)) throw new UsageError(`unknown option ${a}${Object.hasOwn(TAKES, command) ? ` for ${command}` : ''}`)
      if (i + 1 >= rest.length) throw new UsageError(`${a} needs a value`)
      if (Object.hasOwn(opts, key)) throw new UsageError(`${a} is given twice`)
      const value = rest[++i]
      if (value === '') throw new UsageError(`${a} needs a value (it is empty)`)
      opts[key] = value
    } else opts._.push(a)
  }
  if (opts._.length > 1) throw new UsageError(`one module at a time (given: ${opts._.length})`)
  return { command, opts }
}

/** The executor's cache options from --cache-dir and --max-cache-dir-bytes (the executor checks the
 * bound's range: `INVALID_ARGUMENT`). */
function cacheOptions(opts) {
  const text = opts['max-cache-dir-bytes']
  if (text !== undefined && !/^[0-9]+$/.test(text)) throw new UsageError('--max-cache-dir-bytes must be a whole number of bytes (digits only)')
  const bound = text === undefined ? undefined : Number(text)
  if (bound !== undefined && !opts['cache-dir']) throw new UsageError('--max-cache-dir-bytes needs --cache-dir DIR')
  if (!opts['cache-dir']) return undefined
  return bound === undefined ? { cacheDir: opts['cache-dir'] } : { cacheDir: opts['cache-dir'], maxCacheDirBytes: bound }
}

/** A positive number written in decimal (`Number` also reads `0x10`, `1e3` and `5e-324`: the last was a
 * cap of 0 bytes). */
function number(opts, key) {
  if (opts[key] === undefined) return undefined
  const text = opts[key]
  const n = Number(text)
  if (!/^[0-9]+(\.[0-9]+)?$/.test(text) || !Number.isFinite(n) || n <= 0) {
    throw new UsageError(`--${key} must be a positive decimal number`)
  }
  return n
}

function count(opts, key) {
  const n = number(opts, key)
  if (n !== undefined && (!/^[0-9]+$/.test(opts[key]) || !Number.isSafeInteger(n))) throw new UsageError(`--${key} must be a whole number`)
  return n
}

/** The most bytes a named file is read for: the executor's default maxModuleBytes. */
const MAX_NAMED_BYTES = 256 * 1024 * 1024
/** The most bytes of input (--input, its file, stdin): the executor's default maxInputBytes, checked
 * before the text is parsed (250 MB of `[{},...]` parsed to 85 million objects, and V8 ran out of
 * heap after 7 minutes: review AZ2). */
const MAX_INPUT_BYTES = 16 * 1024 * 1024
/** --timeout's default, the executor's maxExecutionMs default; reading stdin is held to it too. */
const DEFAULT_TIMEOUT_MS = 30000
/** The longest --timeout: the executor's bound on maxExecutionMs. */
const MAX_TIMEOUT_MS = 86400000

/** --timeout, checked before stdin is read under it (review BL1: a value past 2^31 - 1 ms, or
 * under 1, set Node's timer to 1 ms, and stdin that came at once was TIMEOUT). */
function timeoutMs(opts) {
  const ms = count(opts, 'timeout') ?? DEFAULT_TIMEOUT_MS
  if (ms > MAX_TIMEOUT_MS) throw new UsageError(`--timeout must be at most ${MAX_TIMEOUT_MS} ms`)
  return ms
}

/** A file the user named: its bytes, or the failure a missing module is (`BLOB_NOT_FOUND`). Only a
 * regular file is read, and at most MAX_NAMED_BYTES of it (a FIFO waited forever, opened and read
 * on this thread; /dev/zero filled memory until the system killed the process). */
function readNamed(path, what, max = MAX_NAMED_BYTES) {
  let fd
  try {
    // Non-blocking: opening a FIFO with no writer waits otherwise (it is refused just after).
    fd = openSync(resolve(path), constants.O_RDONLY | (constants.O_NONBLOCK ?? 0))
    // Not a pipe either (stdin is read when no --input is given).
    if (!fstatSync(fd).isFile()) {
      // Stdin is read for the input only (review BI2: a module was told to be piped there).
      const hint = what === 'module' ? '' : ' (pipe it to stdin instead)'
      throw Object.assign(new Error(`not a regular file${hint}`), { code: 'NOT_A_FILE' })
    }
    // Read to its end, whatever size it states (a /proc file states 0).
    // One buffer to read into, each read's bytes copied out: a filesystem that answers in short
    // reads (FUSE, NFS) kept a 1 MiB buffer per read, far past the bound (review BI2, from the code).
    const chunks = []
    const into = Buffer.allocUnsafe(1 << 20)
    let n = 0
    for (let got = -1; got !== 0 && n <= max; n += got) {
      got = readSync(fd, into, 0, into.length, null)
      if (got > 0) chunks.push(Buffer.from(into.subarray(0, got)))
    }
    if (n > max) throw tooLarge(what, path, max)
    return Buffer.concat(chunks, n)
  } catch (e) {
    if (e.code === 'COMPILE_LIMIT' || e.code === 'INPUT_TOO_LARGE') throw e
    const err = new Error(`${what} ${path}: ${e.code === 'ENOENT' ? 'no such file' : e.message}`)
    err.code = what === 'module' && e.code === 'ENOENT' ? 'BLOB_NOT_FOUND' : 'USAGE'
    throw err
  } finally {
    if (fd !== undefined) closeSync(fd)
  }
}

/** The error for a named file or stdin over `max` bytes. */
function tooLarge(what, path, max) {
  const err = new Error(`${what}${path === undefined ? '' : ` ${path}`}: over ${max} bytes`)
  err.code = what === 'module' ? 'COMPILE_LIMIT' : 'INPUT_TOO_LARGE'
  return err
}

/** A URL the user named, and the object's key in its store (the path, percent-decoded). */
function parseUrl(spec) {
  try {
    const u = new URL(spec)
    return { origin: `${u.protocol}//${u.host}`, key: decodeURIComponent(u.pathname) }
  } catch (e) {
    throw new UsageError(`${spec} is not a URL: ${e.message}`)
  }
}

// Characters a terminal acts on or that disguise text: DEL, C1 controls (U+009B is a CSI), the soft
// hyphen, the Arabic letter mark, zero-width and bidirectional marks and overrides, line and
// paragraph separators, invisible operators, the byte-order mark, Hangul fillers and tag characters
// (review BI2: U+061C, U+00AD, U+2060-2064, U+FEFF and the tags passed through).
const DISGUISING =
  '\\u007f-\\u009f\\u00ad\\u034f\\u061c\\u115f\\u1160\\u180e\\u200b-\\u200f\\u2028-\\u202e\\u2060-\\u206f\\u3164\\ufeff\\uffa0\\u{e0000}-\\u{e007f}'
// Each UTF-16 unit as `\uXXXX` (a tag character is two), as JSON writes escapes.
const escape = (c) => c.split('').map((u) => `\\u${u.charCodeAt(0).toString(16).padStart(4, '0')}`).join('')

/** Text for a terminal: C0 controls and `DISGUISING` written as `\uXXXX`, so that a guest's message
 * (an abort's, a trap's) cannot retitle the window, clear the screen, move the cursor to overwrite a
 * line or forge one of its own. */
const printable = (text) => String(text).replace(new RegExp(`[\\u0000-\\u001f${DISGUISING}]`, 'gu'), escape)

/** JSON for a terminal: `JSON.stringify` escapes C0 controls but not `DISGUISING`, which can only
 * be inside its strings, where an escape is the same text. */
const json = (value, indent) => JSON.stringify(value, null, indent).replace(new RegExp(`[${DISGUISING}]`, 'gu'), escape)

/** Writes a line to stdout, waiting while the pipe is full (a guest's output may be megabytes). */
function print(text) {
  return new Promise((done) => {
    if (process.stdout.write(text + '\n')) done()
    else process.stdout.once('drain', done)
  })
}

const isUrl = (s) => /^[a-z][a-z0-9+.-]*:\/\//i.test(s)

/** A blob store and definition for a module given as a path or a URL (a store on its origin). */
function target(spec, extra = {}) {
  if (!spec) throw new UsageError('missing <module.wasm | url>')
  if (isUrl(spec)) {
    const { ObjectBlobStore } = require('..')
    const { origin, key } = parseUrl(spec)
    const store = new ObjectBlobStore(origin)
    return { store, def: { name: spec, version: 'cli', wasmBlobPath: key, ...extra } }
  }
  // Read now: a refusal thrown from the store's download would be BLOB_NOT_FOUND (review BI2: a
  // file over 256 MiB was, where `inspect` and a file:// URL said COMPILE_LIMIT).
  const bytes = readNamed(spec, 'module')
  const store = { download: async () => bytes }
  return { store, def: { name: spec, version: 'cli', wasmBlobPath: 'module.wasm', ...extra } }
}

async function readInput(opts) {
  if (opts.input !== undefined) {
    const named = opts.input.startsWith('@')
    if (!named && Buffer.byteLength(opts.input) > MAX_INPUT_BYTES) throw tooLarge('--input', undefined, MAX_INPUT_BYTES)
    const text = named ? readNamed(opts.input.slice(1), '--input', MAX_INPUT_BYTES).toString('utf8') : opts.input
    try {
      return JSON.parse(text)
    } catch (e) {
      throw new UsageError(`--input is not JSON: ${e.message}`)
    }
  }
  if (process.stdin.isTTY) return null
  // A directory, or a descriptor that is not open for reading, is a usage error, not an empty input
  // or an uncoded one (review BI2: `< /` ran with input null, `0>file` failed with EBADF).
  let kind
  try {
    kind = fstatSync(0)
  } catch (e) {
    throw new UsageError(`stdin cannot be read: ${e.message}`)
  }
  if (kind.isDirectory()) throw new UsageError('stdin is a directory')
  const chunks = []
  let n = 0
  // Stdin must end within the run's time limit (review BI2: a pipe that trickled a byte now and then,
  // or never closed, held the CLI for ever; --timeout bounded only the guest).
  const ms = timeoutMs(opts)
  let late = false
  const timer = setTimeout(() => {
    late = true
    process.stdin.destroy()
  }, ms)
  try {
    for await (const c of process.stdin) {
      n += c.length
      // Bounded as a named file is (`< /dev/zero` filled memory).
      if (n > MAX_INPUT_BYTES) throw tooLarge('stdin', undefined, MAX_INPUT_BYTES)
      chunks.push(c)
    }
  } catch (e) {
    if (e.code === 'INPUT_TOO_LARGE') throw e
    if (!late) throw new UsageError(`stdin cannot be read: ${e.message}`)
  } finally {
    clearTimeout(timer)
  }
  if (late) {
    process.stdin.destroy()
    throw Object.assign(new Error(`stdin did not end within ${ms} ms (--timeout)`), { code: 'TIMEOUT' })
  }
  const text = Buffer.concat(chunks).toString('utf8').trim()
  if (!text) return null
  try {
    return JSON.parse(text)
  } catch (e) {
    throw new UsageError(`stdin is not JSON: ${e.message}`)
  }
}

async function bytesOf(spec) {
  if (!spec) throw new UsageError('missing <module.wasm | url>')
  if (!isUrl(spec)) return readNamed(spec, 'module')
  // A file URL is read as its file is: at most 256 MiB (review BI2: through a store, up to 1 GiB was
  // read, 2.1 GB of memory, before the module's bound refused it).
  if (/^file:/i.test(spec)) {
    let path
    try {
      path = require('node:url').fileURLToPath(spec)
    } catch (e) {
      throw new UsageError(`${spec} is not a file URL: ${e.message}`)
    }
    return readNamed(path, 'module')
  }
  const { ObjectBlobStore } = require('..')
  const { origin, key } = parseUrl(spec)
  return new ObjectBlobStore(origin).download(key)
}

async function main(argv) {
  const { command, opts } = parse(argv)
  if (!command || command === '--help' || command === '-h' || command === 'help') {
    await print(HELP.main)
    return command ? EXIT.ok : EXIT.usage
  }
  if (!Object.hasOwn(HELP, command) || command === 'main') throw new UsageError(`unknown command ${command} (see loom-wasm --help)`)
  if (opts.help) {
    await print(HELP[command])
    return EXIT.ok
  }
  const { WasmActivityExecutor, inspectModule } = require('..')
  if (command === 'run') {
    const limits = { maxExecutionMs: opts.timeout === undefined ? undefined : timeoutMs(opts), maxMemoryMB: number(opts, 'memory'), maxFuel: count(opts, 'fuel') }
    const repeat = count(opts, 'repeat') ?? 1
    if (repeat > 1 && opts.actor === undefined) throw new UsageError('--repeat needs --actor (without it every run starts fresh)')
    const { store, def } = target(opts._[0], { limits })
    const input = await readInput(opts)
    const executor = new WasmActivityExecutor(store, cacheOptions(opts))
    for (let i = 0; i < repeat; i++) {
      const out = await executor.execute(def, input, opts.actor !== undefined ? { actorId: opts.actor } : undefined)
      await print(json(out))
    }
    return EXIT.ok
  }
  if (command === 'inspect') {
    const info = await inspectModule(await bytesOf(opts._[0]))
    await print(json({ ...info, abi: info.abi ?? null }, 2))
    return EXIT.ok
  }
  if (command === 'precompile') {
    if (!opts['cache-dir']) throw new UsageError('precompile needs --cache-dir DIR')
    const { store, def } = target(opts._[0])
    const options = cacheOptions(opts)
    const executor = new WasmActivityExecutor(store, options)
    const dir = opts['cache-dir']
    // The directory given cannot take the artifact (a directory planted under its name, say): a
    // usage error, as the check below makes it (review AM1: reported as INTERNAL).
    const digest = await executor.precompile(def).catch((e) => {
      if (e && e.code === 'BLOB_UNAVAILABLE' && String(e.message).includes('artifact to cacheDir')) {
        throw Object.assign(new Error(`the artifact was not written to ${dir} (the directory could not be written: ${e.message})`), { code: 'INVALID_ARGUMENT' })
      }
      throw e
    })
    // An artifact larger than the bound is not written (the executor's rule): say so, rather than
    // print a digest whose artifact no later run finds. Checked as a later run would find it: a
    // fresh executor (not sharing this one's code) loading the pinned module with no download,
    // which only this engine's optimized artifact in DIR allows (an older engine's, or the
    // baseline code's, does not count).
    const refuse = { download: async () => Promise.reject(Object.assign(new Error('not in the cache'), { code: 'BLOB_NOT_FOUND' })) }
    const check = new WasmActivityExecutor(refuse, { ...options, shareCode: false })
    const written = await check.precompile({ ...def, sha256: digest }).then(() => check.cacheStats().artifactHits === 1, () => false)
    await check.close()
    if (!written) {
      const why = options.maxCacheDirBytes !== undefined ? `larger than --max-cache-dir-bytes ${options.maxCacheDirBytes}, or ` : ''
      const err = new Error(`the artifact of ${digest} was not written to ${dir} (${why}the directory could not be written)`)
      // The directory given cannot take it: a usage error, not the executor's (review AM1: a
      // directory planted under the artifact's name was reported as INTERNAL).
      err.code = 'INVALID_ARGUMENT'
      throw err
    }
    await print(digest)
    return EXIT.ok
  }
  return EXIT.usage
}

/** Exits once what was written has reached stdout and stderr (an exit at once cut a piped output
 * at 64 KiB, with status 0). */
function exit(status) {
  process.exitCode = status
  let left = 2
  const done = () => --left === 0 && process.exit(status)
  process.stdout.write('', done)
  process.stderr.write('', done)
}

// A reader that closed early (`| head`) wants no more: not a failure of ours. Any other failure to
// write is said on stderr (review BI2: `> /dev/full` exited 1 with nothing said).
process.stdout.on('error', (e) => {
  if (e && e.code === 'EPIPE') process.exit(EXIT.ok)
  try {
    require('node:fs').writeSync(2, `loom-wasm: INTERNAL: stdout cannot be written: ${printable(e && e.message ? e.message : String(e))}\n`)
  } catch {}
  process.exit(EXIT.internal)
})


main(process.argv.slice(2)).then(exit, (err) => {
  const code = err && err.code ? err.code : 'INTERNAL'
  process.stderr.write(`loom-wasm: ${printable(code)}: ${printable(err && err.message ? err.message : String(err))}\n`)
  exit(EXIT[CLASS[code]] ?? EXIT.internal)
})
