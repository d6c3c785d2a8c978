// The loom-wasm CLI, end to end: the real binary spawned, its output, errors and exit statuses.
import { spawnSync } from 'node:child_process'
import { createHash } from 'node:crypto'
import { closeSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, statSync, truncateSync, utimesSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { describe, expect, it } from 'vitest'
import { root } from './helpers'
import { guestWat } from './wat'

const cli = (args: string[], stdin?: string) => {
  const r = spawnSync(process.execPath, [join(root, 'bin', 'loom-wasm.js'), ...args], {
    cwd: root,
    input: stdin,
    encoding: 'utf8',
    // A CLI that hangs fails its test (status null), not the whole run.
    timeout: 60_000,
  })
  return { status: r.status, stdout: r.stdout, stderr: r.stderr }
}
const wasm = (name: string) => join('build', `${name}.wasm`)

describe('loom-wasm run', () => {
  it('reads only regular files it names, and URLs as URLs (review AB)', () => {
    const dir = mkdtempSync(join(tmpdir(), 'loom-cli-ab-'))
    const fifo = join(dir, 'fifo')
    spawnSync('mkfifo', [fifo])
    // Before: a FIFO waited forever; /dev/zero filled memory until the process was killed.
    // All usage errors: `run` reads its module before it makes the executor (review BI2: read by the
    // store's download, a refusal there was a load error, 5, and a module too large BLOB_NOT_FOUND).
    const cases: [string[], number][] = [
      [['run', fifo], 2],
      [['inspect', fifo], 2],
      [['run', wasm('echo'), '--input', `@${fifo}`], 2],
      [['inspect', '/dev/zero'], 2],
      [['run', wasm('echo'), '--input', '@/dev/zero'], 2],
    ]
    for (const [args, status] of cases) {
      const r = cli(args)
      expect([r.status, r.stderr], args.join(' ')).toEqual([status, expect.stringContaining('not a regular file')])
    }
    // A path with a space, in a file:// URL (percent-encoded there): it was looked for encoded.
    writeFileSync(join(dir, 'a b.wasm'), readFileSync(join(root, wasm('echo'))))
    const spaced = cli(['run', `file://${join(dir, 'a b.wasm').replace(/ /g, '%20')}`, '--input', '{"message":"hi"}'])
    expect([spaced.status, spaced.stdout && JSON.parse(spaced.stdout).result]).toEqual([0, 'hi'])
    // A file that states a size of 0 (/proc) is read to its end (it was read for 1 byte: "L").
    expect(cli(['run', wasm('echo'), '--input', '@/proc/version']).stderr).toContain('"Linux vers')
    // Stdin is bounded as a named file is (`< /dev/zero` filled memory).
    const zero = openSync('/dev/zero', 'r')
    const flood = spawnSync(process.execPath, [join(root, 'bin', 'loom-wasm.js'), 'run', wasm('echo')], { cwd: root, stdio: [zero, 'pipe', 'pipe'], encoding: 'utf8', timeout: 60_000 })
    closeSync(zero)
    expect([flood.status, flood.stderr]).toEqual([4, expect.stringContaining('INPUT_TOO_LARGE')])
    // Input (stdin, @file) is at most the executor's maxInputBytes, refused before it is parsed
    // (review AZ2: 250 MB of [{},...] was parsed first, and V8 ran out of heap after 7 minutes).
    const objects = '[' + '{},'.repeat(6 * 1024 * 1024) + '{}]'
    writeFileSync(join(dir, 'big.json'), objects)
    const big = cli(['run', wasm('echo'), '--input', `@${join(dir, 'big.json')}`])
    expect([big.status, big.stderr]).toEqual([4, expect.stringContaining(`big.json: over ${16 * 1024 * 1024} bytes`)])
    const piped = spawnSync(process.execPath, [join(root, 'bin', 'loom-wasm.js'), 'run', wasm('echo')], { cwd: root, input: objects, encoding: 'utf8', timeout: 60_000 })
    expect([piped.status, piped.stderr]).toEqual([4, expect.stringContaining(`INPUT_TOO_LARGE: stdin: over ${16 * 1024 * 1024} bytes`)])
    // A URL that does not parse is the user's mistake (exit 2), not an internal error (1).
    const bad = cli(['run', 'http://exa mple.com/x.wasm'])
    expect([bad.status, bad.stderr]).toEqual([2, expect.stringContaining('USAGE')])
  })

  it('prints the output for --input JSON, @file and stdin', () => {
    const inline = cli(['run', wasm('echo'), '--input', '{"message":"hi","times":2}'])
    expect(inline.status).toBe(0)
    expect(JSON.parse(inline.stdout)).toEqual({ result: 'hi hi', length: 5, executedBy: 'WASM' })
    const file = join(mkdtempSync(join(tmpdir(), 'loom-cli-')), 'in.json')
    writeFileSync(file, '{"message":"from file 🌍"}')
    expect(JSON.parse(cli(['run', wasm('echo'), '--input', `@${file}`]).stdout).result).toBe('from file 🌍')
    expect(JSON.parse(cli(['run', wasm('echo')], '{"message":"piped"}').stdout).result).toBe('piped')
  })

  it('--actor with --repeat keeps state across runs', () => {
    const r = cli(['run', wasm('counter-actor'), '--input', '{"action":"increment","amount":2}', '--actor', 'a', '--repeat', '3'])
    expect(r.status).toBe(0)
    expect(r.stdout.trim().split('\n').map((l) => JSON.parse(l).count)).toEqual([2, 4, 6])
  })

  it('limits: --timeout, --memory, --fuel end with exit status 4', () => {
    const t = cli(['run', wasm('hostile/spin'), '--timeout', '100'])
    expect(t.status).toBe(4)
    expect(t.stderr).toContain('TIMEOUT')
    expect(cli(['run', wasm('hostile/memory-bomb'), '--memory', '8']).stderr).toContain('OUT_OF_MEMORY')
    const f = cli(['run', wasm('mortgage'), '--input', '{"principal":1000,"years":30,"scenarios":50}', '--fuel', '1000'])
    expect(f.status).toBe(4)
    expect(f.stderr).toContain('OUT_OF_FUEL')
  })

  it('guest errors exit 3, load errors 5, usage errors 2; each prints code and message', () => {
    const abort = cli(['run', wasm('hostile/abort'), '--input', '{"x":1}'])
    expect(abort.status).toBe(3)
    expect(abort.stderr).toMatch(/^loom-wasm: GUEST_ABORT: .*refusing input/)
    expect(cli(['run', wasm('hostile/not-json')]).status).toBe(3)
    const missing = cli(['run', 'build/no-such.wasm'])
    expect(missing.status).toBe(5)
    expect(missing.stderr).toContain('BLOB_NOT_FOUND')
    expect(cli(['run', wasm('hostile/no-execute')]).status).toBe(5)
    expect(cli(['run', wasm('echo'), '--input', '{nope'])).toMatchObject({ status: 2 })
    expect(cli(['run', wasm('echo'), '--bogus', '1'])).toMatchObject({ status: 2 })
    expect(cli(['run'])).toMatchObject({ status: 2 })
    expect(cli(['frobnicate'])).toMatchObject({ status: 2 })
    expect(cli(['run', wasm('echo'), '--timeout', '-1']).status).toBe(2)
    // Limits are written in decimal: `Number` read `0x10` as 16 and `5e-324` as a cap of 0 bytes (review AZ2);
    // fuel is a whole number.
    for (const [flag, value] of [['--fuel', '0x10'], ['--memory', '5e-324'], ['--timeout', '1e3'], ['--fuel', '1.5'], ['--memory', ' 8']]) {
      const refused = cli(['run', wasm('echo'), flag, value, '--input', '{}'])
      expect(refused.status, `${flag} ${value}`).toBe(2)
      expect(refused.stderr).toContain(flag)
    }
    expect(cli(['run', wasm('echo'), '--fuel', '100000000', '--memory', '8.5', '--timeout', '5000', '--input', '{"a":1}'])).toMatchObject({ status: 0 })
  })

  it("a guest's text reaches the terminal with its control characters escaped (review V)", async () => {
    // The abort message sets the window title, clears the screen, writes in red and returns the
    // cursor to overwrite the line's start; C1's CSI and a bidi override too.
    const message = '\x1b]0;pwned\x07\x1b[2J\x1b[31mFAKE: all tests passed\x1b[0m\r\u009b2J\u202e\n'
    const utf16 = Buffer.from(message, 'utf16le')
    const header = Buffer.alloc(4)
    header.writeUInt32LE(utf16.length)
    const escaped = [...Buffer.concat([header, utf16])].map((b) => '\\' + b.toString(16).padStart(2, '0')).join('')
    const dir = mkdtempSync(join(tmpdir(), 'loom-cli-'))
    writeFileSync(join(dir, 'ansi.wasm'), await guestWat(`(data (i32.const 1000) "${escaped}")
      (func (export "execute") (param i32) (result i32) (call $abort (i32.const 1004) (i32.const 0) (i32.const 0) (i32.const 0)) (unreachable))`))
    const r = cli(['run', join(dir, 'ansi.wasm'), '--input', '1'])
    expect(r.status).toBe(3)
    expect(r.stderr).toMatch(/^loom-wasm: GUEST_ABORT: /)
    expect(r.stderr).not.toMatch(/[\u0000-\u0009\u000b-\u001f\u007f-\u009f\u202e]/)
    expect(r.stderr.split('\n')).toEqual([expect.stringContaining('\\u001b]0;pwned\\u0007\\u001b[2J\\u001b[31mFAKE'), ''])
    expect(r.stderr).toContain('\\u000d\\u009b2J\\u202e\\u000a')
    // On stdout, JSON.stringify escapes C0 but not C1 controls, bidi overrides or zero-width
    // marks (review W): a guest's output and an export's name (inspect) come out escaped, as the
    // same JSON.
    const disguised = '\u202eA\u009b2J\u009b31mforged\u200b\u2028'
    const out = cli(['run', wasm('echo'), '--input', JSON.stringify({ message: disguised })])
    expect(out.status).toBe(0)
    expect(out.stdout).not.toMatch(/[\u007f-\u009f\u200b-\u200f\u2028\u202e]/)
    expect(JSON.parse(out.stdout).result).toBe(disguised)
    writeFileSync(join(dir, 'named.wasm'), await guestWat('(func (export "x\\e2\\80\\aeevil\\c2\\9b2J") (param i32) (result i32) (local.get 0))'))
    const info = cli(['inspect', join(dir, 'named.wasm')])
    expect(info.stdout).not.toMatch(/[\u007f-\u009f\u202e]/)
    expect(JSON.parse(info.stdout).exports).toContainEqual(expect.objectContaining({ name: 'x\u202eevil\u009b2J' }))
  })

  it('a guest error of a WASI command exits 3, a compile limit 4 (not 1: internal is INTERNAL alone)', async () => {
    const failed = cli(['run', wasm('c/command'), '--input', '{"exit":3}'])
    expect(failed.stderr).toMatch(/^loom-wasm: GUEST_ERROR: /)
    expect(failed.status).toBe(3)
    // 60,000 locals: past maxLocals (50,000), refused before compiling.
    const dir = mkdtempSync(join(tmpdir(), 'loom-cli-'))
    writeFileSync(join(dir, 'locals.wasm'), await guestWat('(func (local ' + 'i32 '.repeat(60_000) + ')) (func (export "execute") (param i32) (result i32) (local.get 0))'))
    const limit = cli(['run', join(dir, 'locals.wasm')])
    expect(limit.stderr).toMatch(/^loom-wasm: COMPILE_LIMIT: .*maxLocals/)
    expect(limit.status).toBe(4)
  })
})

describe('loom-wasm inspect and precompile', () => {
  it('inspect reports digest, exports, imports and the ABI match', () => {
    const r = cli(['inspect', wasm('echo')])
    expect(r.status).toBe(0)
    const info = JSON.parse(r.stdout)
    expect(info.sha256).toMatch(/^[0-9a-f]{64}$/)
    expect(info.abi).toBe('assemblyscript')
    expect(info.exports.find((e: any) => e.name === 'execute').type).toContain('i32')
    expect(info.imports).toContainEqual(expect.objectContaining({ module: 'env', name: 'abort' }))
    const bad = JSON.parse(cli(['inspect', wasm('hostile/no-execute')]).stdout)
    expect(bad.abi).toBeNull()
    expect(bad.notes.join(' ')).toContain('execute')
  })

  it('precompile writes the artifact that later runs load', () => {
    const dir = mkdtempSync(join(tmpdir(), 'loom-cli-cache-'))
    const r = cli(['precompile', wasm('echo'), '--cache-dir', dir])
    expect(r.status).toBe(0)
    const digest = r.stdout.trim()
    expect(readdirSync(dir).filter((f) => f.endsWith('.cwasm'))).toEqual([
      expect.stringMatching(new RegExp(`^${digest}-[0-9a-f]{16}\\.cwasm$`)),
    ])
    expect(cli(['precompile', wasm('echo')]).status).toBe(2)
    expect(JSON.parse(cli(['run', wasm('echo'), '--cache-dir', dir, '--input', '{"message":"c"}']).stdout).result).toBe('c')
  })

  it('--max-cache-dir-bytes keeps --cache-dir under its bound, and refuses an artifact larger than it', () => {
    const onDisk = (dir: string, f: string) => statSync(join(dir, f)).blocks * 512
    const artifacts = (dir: string) => readdirSync(dir).filter((f) => f.endsWith('.cwasm'))
    // What mortgage's artifact takes, alone.
    const alone = mkdtempSync(join(tmpdir(), 'loom-cli-bound-'))
    expect(cli(['precompile', wasm('mortgage'), '--cache-dir', alone]).status).toBe(0)
    const [mortgageArtifact] = artifacts(alone)
    const mortgageBytes = onDisk(alone, mortgageArtifact)
    // Echo's artifact first, then mortgage's under a bound with room for it (and a few hints)
    // but not for both: echo's goes before the command ends, mortgage's stays and loads.
    const dir = mkdtempSync(join(tmpdir(), 'loom-cli-bound-'))
    expect(cli(['precompile', wasm('echo'), '--cache-dir', dir]).status).toBe(0)
    const [echoArtifact] = artifacts(dir)
    expect(onDisk(dir, echoArtifact)).toBeGreaterThan(3 * 4096)
    const bound = mortgageBytes + 3 * 4096
    const r = cli(['precompile', wasm('mortgage'), '--cache-dir', dir, '--max-cache-dir-bytes', String(bound)])
    expect(r.status, r.stderr).toBe(0)
    expect(artifacts(dir)).toEqual([mortgageArtifact])
    const run = cli(['run', wasm('mortgage'), '--cache-dir', dir, '--max-cache-dir-bytes', String(bound), '--input', '{"principal":100000,"annualRate":5,"years":1}'])
    expect(run.status, run.stderr).toBe(0)
    expect(JSON.parse(run.stdout).monthlyPayment).toBeGreaterThan(0)
    // A bound the artifact does not fit in: nothing is written, and the command says so, though
    // an artifact of that module for another engine (an older addon's, an hour old) is there.
    const small = mkdtempSync(join(tmpdir(), 'loom-cli-bound-'))
    const digest = createHash('sha256').update(readFileSync(wasm('mortgage'))).digest('hex')
    const other = join(small, `${digest}-0123456789abcdef.cwasm`)
    writeFileSync(other, Buffer.alloc(3000, 1))
    utimesSync(other, new Date(Date.now() - 3600_000), new Date(Date.now() - 3600_000))
    const refused = cli(['precompile', wasm('mortgage'), '--cache-dir', small, '--max-cache-dir-bytes', String(mortgageBytes - 4096)])
    expect(refused.status).toBe(2)
    expect(refused.stderr).toContain('INVALID_ARGUMENT: ')
    expect(refused.stderr).toContain(`larger than maxCacheDirBytes (${mortgageBytes - 4096} bytes): it was not written`)
    expect(artifacts(small)).toEqual([`${digest}-0123456789abcdef.cwasm`])
    // A directory planted under the artifact's name: the directory given cannot take it, a usage
    // error (review AM1: reported as INTERNAL, "a bug in the executor", status 1).
    const planted = mkdtempSync(join(tmpdir(), 'loom-cli-planted-'))
    expect(cli(['precompile', wasm('mortgage'), '--cache-dir', planted]).status).toBe(0)
    const [name] = artifacts(planted)
    rmSync(join(planted, name))
    mkdirSync(join(planted, name))
    writeFileSync(join(planted, name, 'x'), 'x')
    const blocked = cli(['precompile', wasm('mortgage'), '--cache-dir', planted])
    expect([blocked.status, blocked.stderr]).toEqual([2, expect.stringContaining('INVALID_ARGUMENT: the artifact')])
    expect(blocked.stderr).toContain('could not be written')
    // Bad values and a bound without a directory are usage errors.
    for (const bad of ['0', '-1', '1.5', 'many', '1e16']) {
      const b = cli(['precompile', wasm('echo'), '--cache-dir', small, '--max-cache-dir-bytes', bad])
      expect(b.status, bad).toBe(2)
    }
    expect(cli(['run', wasm('echo'), '--max-cache-dir-bytes', '1000000']).stderr).toContain('needs --cache-dir')
  })

  it('--help works for each command', () => {
    for (const args of [['--help'], ['run', '--help'], ['inspect', '--help'], ['precompile', '--help']]) {
      const r = cli(args)
      expect(r.status).toBe(0)
      expect(r.stdout).toContain('loom-wasm')
    }
  })
})

describe('review M: output into a pipe, odd arguments', () => {
  const bin = join(root, 'bin', 'loom-wasm.js')
  const sh = (script: string) => spawnSync('bash', ['-c', script], { cwd: root, encoding: 'utf8', timeout: 60_000 })

  it('an output of megabytes reaches a slow reader whole (it was cut at 64 KiB, with status 0)', () => {
    const dir = mkdtempSync(join(tmpdir(), 'loom-cli-pipe-'))
    const message = 'x'.repeat(2_000_000)
    writeFileSync(join(dir, 'in.json'), JSON.stringify({ message }))
    const expected = JSON.stringify({ result: message, length: message.length, executedBy: 'WASM' }).length + 1
    const r = sh(`"${process.execPath}" "${bin}" run ${wasm('echo')} --input @${join(dir, 'in.json')} | (sleep 1; wc -c); exit \${PIPESTATUS[0]}`)
    expect(r.status, r.stderr).toBe(0)
    expect(Number(r.stdout.trim())).toBe(expected)
  })

  it('a reader that closes early ends the run quietly', () => {
    const r = sh(`"${process.execPath}" "${bin}" run ${wasm('counter-actor')} --input '{"action":"get"}' --actor a --repeat 20000 | head -1; exit \${PIPESTATUS[0]}`)
    expect(JSON.parse(r.stdout.trim()).count).toBe(0)
    expect(r.stderr).toBe('')
    expect(r.status).toBe(0)
  })

  it('a missing --input file is a usage error, a missing module to inspect is BLOB_NOT_FOUND, --repeat is whole, commands are only commands', () => {
    const missing = cli(['run', wasm('echo'), '--input', '@/nonexistent/in.json'])
    expect([missing.status, missing.stderr]).toEqual([2, expect.stringContaining('--input /nonexistent/in.json: no such file')])
    const inspect = cli(['inspect', '/nonexistent/m.wasm'])
    expect([inspect.status, inspect.stderr]).toEqual([5, expect.stringContaining('BLOB_NOT_FOUND')])
    expect(cli(['run', wasm('counter-actor'), '--actor', 'a', '--repeat', '1.5', '--input', '{}']).status).toBe(2)
    for (const command of ['constructor', 'toString', '__proto__']) {
      const r = cli([command, '--help'])
      expect([r.status, r.stderr], command).toEqual([2, expect.stringContaining('unknown command')])
    }
  })

  it('review BI2: an argument it does not take, a second module, an empty or repeated value, a fractional count are usage errors; stdin that cannot be read is too; a failed write is said', () => {
    // Before: each was dropped silently (or `--repeat 1.0` taken as 1), `< /` ran with input null,
    // and `> /dev/full` exited 1 with nothing on stderr.
    const echo = wasm('echo')
    const refused: string[][] = [
      ['run', echo, echo],
      ['inspect', echo, '--fuel', '5'],
      ['precompile', echo, '--timeout', '5', '--cache-dir', tmpdir()],
      ['run', echo, '--cache-dir', ''],
      ['run', echo, '--timeout', '5', '--timeout', '6'],
      ['run', wasm('counter-actor'), '--actor', 'a', '--repeat', '2.0'],
      // Review BL1: Node's timer took these as 1 ms, and stdin that came at once was TIMEOUT.
      ['run', echo, '--timeout', '2147483648'],
      ['run', echo, '--timeout', '0.5'],
    ]
    for (const args of refused) {
      const r = cli(args)
      expect([r.status, r.stderr], args.join(' ')).toEqual([2, expect.stringContaining('USAGE')])
    }
    // `--` ends the options.
    expect(cli(['run', '--', echo], '{"message":"dashed"}').stdout).toContain('dashed')
    const dir = spawnSync(process.execPath, [join(root, 'bin', 'loom-wasm.js'), 'run', echo], { cwd: root, stdio: [openSync('/', 'r'), 'pipe', 'pipe'], encoding: 'utf8' })
    expect([dir.status, dir.stderr]).toEqual([2, expect.stringContaining('stdin is a directory')])
    const full = spawnSync(process.execPath, [join(root, 'bin', 'loom-wasm.js'), 'run', echo, '--input', '{"message":"x"}'], { cwd: root, stdio: ['pipe', openSync('/dev/full', 'w'), 'pipe'], encoding: 'utf8' })
    expect([full.status, full.stderr]).toEqual([1, expect.stringContaining('stdout cannot be written')])
  })

  it('review BI2: a file over the module bound is COMPILE_LIMIT for run, inspect and a file URL alike, read no further', () => {
    const big = join(mkdtempSync(join(tmpdir(), 'loom-cli-bi2-')), 'big.wasm')
    writeFileSync(big, '')
    truncateSync(big, 300 * 1024 * 1024)
    for (const args of [['run', big], ['inspect', big], ['inspect', `file://${big}`]]) {
      const r = cli(args)
      expect([r.status, r.stderr], args.join(' ')).toEqual([4, expect.stringContaining('COMPILE_LIMIT')])
    }
  })

  it('review BI2: invisible and bidirectional characters from a guest are escaped on the terminal', async () => {
    const marks = '\u061c\u00ad\u2060\ufeff\u{e0041}'
    const r = cli(['run', wasm('echo'), '--input', JSON.stringify({ message: `a${marks}b` })])
    expect(r.status).toBe(0)
    expect(r.stdout).toContain('a\\u061c\\u00ad\\u2060\\ufeff\\udb40\\udc41b')
    for (const c of ['\u061c', '\u00ad', '\u2060', '\ufeff', '\u{e0041}']) expect(r.stdout).not.toContain(c)
  })

  it('review BI2: stdin that does not end within --timeout is TIMEOUT (a trickling pipe held the CLI for ever)', () => {
    // The writer sends a byte every 100 ms for 20 s; before, the CLI waited for all of it.
    const started = Date.now()
    const r = sh(`(for i in $(seq 200); do printf ' '; sleep 0.1; done) | "${process.execPath}" "${bin}" run ${wasm('echo')} --timeout 700; echo "status \${PIPESTATUS[1]}" >&2`)
    expect(r.stderr).toContain('TIMEOUT: stdin did not end within 700 ms')
    expect(r.stderr).toContain('status 4')
    expect(Date.now() - started).toBeLessThan(15_000)
    // Input that ends in time still runs.
    const ok = sh(`(printf '{"message":'; sleep 0.3; printf '"late"}') | "${process.execPath}" "${bin}" run ${wasm('echo')} --timeout 5000`)
    expect([ok.status, ok.stdout]).toEqual([0, expect.stringContaining('late')])
  })
})
