// vitest's global setup: every test file's temporary files (mkdtemp under os.tmpdir(), the
// emulators' data, the addon's own temporary files) go under one directory per run, removed when
// the run ends, so that `npm test` leaves nothing behind in the system's temporary directory.
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

export default function setup(): () => void {
  const root = mkdtempSync(join(tmpdir(), 'loom-test-run-'))
  // The forks vitest starts inherit the environment, and os.tmpdir() (and Rust's
  // std::env::temp_dir) read TMPDIR.
  process.env.TMPDIR = root
  return () => rmSync(root, { recursive: true, force: true })
}
