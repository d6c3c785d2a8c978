// Imports WASI (not granted).
@external("wasi_snapshot_preview1", "fd_write")
declare function fd_write(fd: i32, iovs: i32, iovsLen: i32, written: i32): i32

export function execute(inputJson: string): string {
  return fd_write(1, 0, 0, 0).toString()
}
