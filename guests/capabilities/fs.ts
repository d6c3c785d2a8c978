// Reads (or with "write", writes) a file relative to the first preopened directory (fd 3).
// Input {"path": "...", "write"?: "...", "follow"?: true (follow a final symlink)}; output
// {"content": "..."}, {"written": n} or {"errno": n}. Other operations, with "op":
// "touch" sets the path's times to now; "open-loop" opens (and closes) it "times" times;
// "flip" renames "path" to "to" and back "times" times; "symlink" makes "path" a link to "to". Each
// gives {"errno": n} of its first failure, or {"done": true}.
import { fd_close, fd_read, fd_write, path_filestat_set_times, path_open, path_rename, path_symlink } from './wasi'
import { parse, quote } from '../assemblyscript/lib/json'

const PREOPEN: u32 = 3
const RIGHT_FD_READ: u64 = 1 << 1
const RIGHT_FD_WRITE: u64 = 1 << 6
const O_CREAT: u16 = 1
const O_TRUNC: u16 = 8

function errno(e: u16): string {
  return '{"errno":' + e.toString() + '}'
}

const FST_ATIM_NOW: u16 = 2
const FST_MTIM_NOW: u16 = 8

function other(op: string, pathBytes: ArrayBuffer, follow: u32, to: string | null, times: i32): string {
  const p = changetype<usize>(pathBytes)
  const n = pathBytes.byteLength
  if (op == 'touch') {
    const e = path_filestat_set_times(PREOPEN, follow, p, n, 0, 0, FST_ATIM_NOW | FST_MTIM_NOW)
    return e != 0 ? errno(e) : '{"done":true}'
  }
  if (op == 'open-loop') {
    const opened = new ArrayBuffer(4)
    for (let i = 0; i < times; i++) {
      const e = path_open(PREOPEN, follow, p, n, 0, RIGHT_FD_READ, 0, 0, changetype<usize>(opened))
      if (e == 0) fd_close(load<u32>(changetype<usize>(opened)))
      else if (e != 44) return errno(e) // ENOENT: renamed away meanwhile
    }
    return '{"done":true}'
  }
  if (op == 'flip' && to != null) {
    const toBytes = String.UTF8.encode(to!)
    const q = changetype<usize>(toBytes)
    const m = toBytes.byteLength
    for (let i = 0; i < times; i++) {
      let e = path_rename(PREOPEN, p, n, PREOPEN, q, m)
      if (e != 0) return errno(e)
      e = path_rename(PREOPEN, q, m, PREOPEN, p, n)
      if (e != 0) return errno(e)
    }
    return '{"done":true}'
  }
  if (op == 'symlink' && to != null) {
    const target = String.UTF8.encode(to!)
    const e = path_symlink(changetype<usize>(target), target.byteLength, PREOPEN, p, n)
    return e != 0 ? errno(e) : '{"done":true}'
  }
  return '{"error":"unknown op"}'
}

export function execute(inputJson: string): string {
  const input = parse(inputJson)
  if (input == null) return '{"error":"bad input"}'
  const path = input.getString('path')
  if (path == null) return '{"error":"path must be a string"}'
  const op = input.getString('op')
  if (op != null) {
    const follow: u32 = input.getBool('follow', false) ? 1 : 0
    return other(op!, String.UTF8.encode(path!), follow, input.getString('to'), <i32>input.getNumber('times', 1))
  }
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
