// npm run pack:local: the tarballs a release would publish, written into pkg/: the main package
// (JS loader, types, CLI) with optionalDependencies on the per-platform packages, as
// `napi prepublish` wires them, and one package per platform holding its .node binary.
// Uses the addon `npm install` / `npm run build` already built; compiles nothing.
import { execFileSync } from 'node:child_process'
import { copyFileSync, cpSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const out = join(root, 'pkg')
const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'))
const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm'
rmSync(out, { recursive: true, force: true })
mkdirSync(out, { recursive: true })

const pack = (dir) =>
  execFileSync(npm, ['pack', dir, '--pack-destination', out, '--silent'], { cwd: root, encoding: 'utf8' }).trim()

const optional = {}
for (const platform of readdirSync(join(root, 'npm'))) {
  const dir = join(root, 'npm', platform)
  const meta = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8'))
  const binary = meta.main
  if (!existsSync(join(root, binary))) {
    console.error(`skipping ${meta.name}: ${binary} is not built here`)
    continue
  }
  if (meta.version !== pkg.version) throw new Error(`${meta.name} is at ${meta.version}, the package at ${pkg.version}`)
  copyFileSync(join(root, binary), join(dir, binary))
  optional[meta.name] = pkg.version
  console.log(pack(dir))
}
if (Object.keys(optional).length === 0) throw new Error('no platform binary is built: run `npm run build` first')

// The main package, staged without its development-only parts.
const stage = join(out, '.stage')
mkdirSync(stage)
for (const f of pkg.files) cpSync(join(root, f), join(stage, f), { recursive: true })
const published = { ...pkg, optionalDependencies: optional }
delete published.scripts
delete published.devDependencies
writeFileSync(join(stage, 'package.json'), `${JSON.stringify(published, null, 2)}\n`)
console.log(pack(stage))
rmSync(stage, { recursive: true, force: true })
