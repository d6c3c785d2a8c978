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

try {
  module.exports = require('../index.js')
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
