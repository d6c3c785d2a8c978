// npm run guests:polyglot: builds the guests of the other ABIs from source, with toolchains from
// the registries, into build/<language>/:
//   C (Extism plugin, WASI command) with zig cc  (`ziglang` from PyPI, into .cache/zig-venv)
//   Rust (WASI command)             with Debian's rustc + libstd-rust-dev-wasm32, if installed
//   JavaScript (component)          with componentize-js (npm, into .cache/componentize-js)
// A guest whose toolchain is missing comes from its committed fixture (guests/<language>/prebuilt/)
// unless `--require <language,...>` names it: then a failed build fails the script (CI requires c
// and js, so every ABI is built from source there).
import { execFileSync } from 'node:child_process'
import { copyFileSync, existsSync, mkdirSync, writeFileSync } from 'node:fs'
import { dirname, join, relative } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const cache = join(root, '.cache')
const arg = process.argv.indexOf('--require')
const required = new Set(arg > 0 ? process.argv[arg + 1].split(',') : [])
const run = (cmd, args, opts = {}) => execFileSync(cmd, args, { cwd: root, stdio: 'inherit', ...opts })

const ZIG = '0.17.1'
const COMPONENTIZE = ['@bytecodealliance/componentize-js@0.23.0', '@bytecodealliance/preview2-shim@0.17.9', '@napi-rs/lzma-linux-x64-gnu@1.5.3']

function zig() {
  const venv = join(cache, 'zig-venv')
  if (!existsSync(join(venv, 'bin', 'python'))) {
    run('python3', ['-m', 'venv', venv])
    run(join(venv, 'bin', 'pip'), ['install', '--quiet', `ziglang==${ZIG}`])
  }
  return (args) => run(join(venv, 'bin', 'python'), ['-m', 'ziglang', 'cc', ...args])
}

function componentize() {
  const dir = join(cache, 'componentize-js')
  const cli = join(dir, 'node_modules', '@bytecodealliance', 'componentize-js', 'src', 'cli.js')
  if (!existsSync(cli)) {
    mkdirSync(dir, { recursive: true })
    writeFileSync(join(dir, 'package.json'), JSON.stringify({ name: 'componentize-toolchain', private: true }))
    // Its native lzma binding is named explicitly: npm skips optional platform packages here.
    run('npm', ['install', '--ignore-scripts', '--no-audit', '--no-fund', ...COMPONENTIZE], { cwd: dir })
  }
  // componentize-js reads its inputs through a WASI view of the working directory: relative paths.
  return (args) => run(process.execPath, [cli, ...args])
}

const guests = [
  {
    language: 'c',
    outputs: ['plugin.wasm', 'host-plugin.wasm', 'command.wasm'],
    build: () => {
      const cc = zig()
      cc(['--target=wasm32-freestanding', '-O2', '-s', '-nostdlib', '-Wl,--no-entry', '-o', 'build/c/plugin.wasm', 'guests/c/plugin.c'])
      cc(['--target=wasm32-freestanding', '-O2', '-s', '-nostdlib', '-Wl,--no-entry', '-o', 'build/c/host-plugin.wasm', 'guests/c/host-plugin.c'])
      cc(['--target=wasm32-wasi', '-O2', '-s', '-o', 'build/c/command.wasm', 'guests/c/command.c'])
    },
  },
  {
    language: 'rust',
    outputs: ['command.wasm'],
    build: () => {
      if (!existsSync('/usr/bin/rustc') || !existsSync('/usr/lib/rustlib/wasm32-wasi')) {
        throw new Error("Debian's rustc with libstd-rust-dev-wasm32 is not installed (apt-get install rustc libstd-rust-dev-wasm32)")
      }
      run('/usr/bin/rustc', ['--edition', '2018', '-O', '--target', 'wasm32-wasi', '-C', 'strip=symbols', '-o', 'build/rust/command.wasm', 'guests/rust/command.rs'])
    },
  },
  {
    language: 'js',
    outputs: ['echo.wasm', 'fetch.wasm'],
    build: () => {
      const cjs = componentize()
      cjs(['guests/js/echo.js', '--wit', 'wit/activity.wit', '--world-name', 'activity',
        '-d', 'stdio', '-d', 'random', '-d', 'clocks', '-d', 'http', '-d', 'fetch-event', '-o', 'build/js/echo.wasm'])
      // fetch() needs the http feature (wasi:http, and the clocks and randomness it uses).
      cjs(['guests/js/fetch.js', '--wit', 'wit/activity.wit', '--world-name', 'activity',
        '-d', 'stdio', '-d', 'fetch-event', '-o', 'build/js/fetch.wasm'])
    },
  },
]

let failed = false
for (const g of guests) {
  mkdirSync(join(root, 'build', g.language), { recursive: true })
  const t0 = Date.now()
  try {
    g.build()
    console.log(`guests/${g.language}: built from source in ${((Date.now() - t0) / 1000).toFixed(1)} s`)
  } catch (e) {
    if (required.has(g.language)) {
      console.error(`guests/${g.language}: the build failed and is required: ${e.message}`)
      failed = true
      continue
    }
    const prebuilt = g.outputs.map((o) => join(root, 'guests', g.language, 'prebuilt', o))
    if (prebuilt.every(existsSync)) {
      for (const [i, o] of g.outputs.entries()) copyFileSync(prebuilt[i], join(root, 'build', g.language, o))
      console.log(`guests/${g.language}: ${e.message.split('\n')[0]}; using the committed fixtures (${relative(root, dirname(prebuilt[0]))})`)
    } else {
      console.error(`guests/${g.language}: no toolchain and no fixtures: ${e.message}`)
      failed = true
    }
  }
}
if (failed) process.exit(1)
