// The package entry: napi's generated loader (index.js), with a clear error where no binary
// matches this platform.
'use strict'

function platform() {
  let libc = ''
  if (process.platform === 'linux') {
    const report = process.report && process.report.getReport ? process.report.getReport() : null
    libc = report && report.header && report.header.glibcVersionRuntime ? '-gnu' : '-musl'
  }
  return `${process.platform}-${process.arch}${libc}`
}

// The one platform with prebuilt binaries, loaded straight away: napi's generic loader first
// probes the libc (it reads /usr/bin/ldd) and is itself 800 lines to compile, which is about
// 2 ms of every cold start. Anything unusual (an override, another libc, no binary) takes the
// generic path.
function direct() {
  if (process.platform !== 'linux' || process.arch !== 'x64' || process.env.NAPI_RS_NATIVE_LIBRARY_PATH) return null
  const { existsSync } = require('node:fs')
  const local = require('node:path').join(__dirname, '..', 'loom-wasm-executor.linux-x64-gnu.node')
  try {
    return existsSync(local) ? require(local) : require('loom-wasm-executor-linux-x64-gnu')
  } catch {
    return null
  }
}

try {
  const binding = direct()
  if (binding) {
    if (!Object.prototype.hasOwnProperty.call(binding, '__napiBindingTarget')) {
      Object.defineProperty(binding, '__napiBindingTarget', { configurable: true, enumerable: true, value: 'native', writable: true })
    }
    module.exports = binding
  } else {
    module.exports = require('../index.js')
  }
} catch (err) {
  const here = platform()
  const e = new Error(
    `loom-wasm-executor has no native binary for this platform (${here}). ` +
      'Prebuilt binaries: linux-x64-gnu. To build it from source (needs Rust 1.88+ and Node 20+): ' +
      'git clone the repository, then `npm install` there (it builds the addon), and install that ' +
      'directory, or run `npm run build` and copy loom-wasm-executor.*.node next to index.js.',
  )
  e.code = 'NO_NATIVE_BINARY'
  e.platform = here
  e.cause = err
  throw e
}
