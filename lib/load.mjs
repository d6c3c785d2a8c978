// The package entry for ES modules: the CommonJS entry (load.cjs), required, and its exports
// named here. Importing load.cjs itself made Node read the names out of its text (and, through
// its fallback `require`, out of napi's 800-line loader) with cjs-module-lexer: 10-20 ms of
// every ESM import in a fresh process. Both entries give the very same binding. A test keeps
// these names equal to the addon's exports.
import { createRequire } from 'node:module'

const binding = createRequire(import.meta.url)('./load.cjs')

export const { ObjectBlobStore, WasmActivityExecutor, WasmActor, benchFloor, inspectModule, __napiBindingTarget } = binding
export default binding
