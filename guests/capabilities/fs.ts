// Reads (or with "write", writes) a file relative to the first preopened directory (fd 3).
// Input {"path": "...", "write"?: "...", "follow"?: true (follow a final symlink)}; output {"content": "..."}, {"written": n} or {"errno": n}.
import { fd_close, fd_read, fd_write, path_open } from './wasi'
import { parse, quote } from '../assemblyscript/lib/json'

const PREOPEN: u32 = 3
const RIGHT_FD_READ: u64 = 1 << 1
const RIGHT_FD_WRITE: u64 = 1 << 6
const O_CREAT: u16 = 1
const O_TRUNC: u16 = 8

function errno(e: u16): string {
  return '{"errno":' + e.toString() + '}'
}

export function execute(inputJson: string): string {
  const input = parse(inputJson)
  if (input == null) return '{"error":"bad input"}'
  const path = input.getString('path')
  if (path == null) return '{"error":"path must be a string"}'
  const text = input.getString('write')
  const pathBytes = String.UTF8.encode(path)
  const opened = new ArrayBuffer(4)
  const writing = text != null
  const follow: u32 = input.getBool('follow', false) ? 1 : 0
  const e = path_open(
    PREOPEN, follow, changetype<usize>(pathBytes), pathBytes.byteLength,
    writing ? O_CREAT | O_TRUNC : 0,
    writing ? RIGHT_FD_WRITE : RIGHT_FD_READ, 0, 0, changetype<usize>(opened),
  )
  if (e != 0) return errno(e)
  const fd = load<u32>(changetype<usize>(opened))
  const iov = new ArrayBuffer(8)
  const count = new ArrayBuffer(4)
  if (writing) {
    const data = String.UTF8.encode(text!)
    store<u32>(changetype<usize>(iov), changetype<usize>(data))
    store<u32>(changetype<usize>(iov) + 4, data.byteLength)
    const w = fd_write(fd, changetype<usize>(iov), 1, changetype<usize>(count))
    fd_close(fd)
    if (w != 0) return errno(w)
    return '{"written":' + load<u32>(changetype<usize>(count)).toString() + '}'
  }
  const buf = new ArrayBuffer(65536)
  store<u32>(changetype<usize>(iov), changetype<usize>(buf))
  store<u32>(changetype<usize>(iov) + 4, buf.byteLength)
  const r = fd_read(fd, changetype<usize>(iov), 1, changetype<usize>(count))
  fd_close(fd)
  if (r != 0) return errno(r)
  const n = load<u32>(changetype<usize>(count))
  return '{"content":' + quote(String.UTF8.decodeUnsafe(changetype<usize>(buf), n)) + '}'
}
