// Raw WASI preview1 imports (AssemblyScript's std no longer binds WASI itself).
@external("wasi_snapshot_preview1", "environ_sizes_get")
export declare function environ_sizes_get(count: usize, bufSize: usize): u16
@external("wasi_snapshot_preview1", "environ_get")
export declare function environ_get(environ: usize, buf: usize): u16
@external("wasi_snapshot_preview1", "path_open")
export declare function path_open(
  dirfd: u32, dirflags: u32, path: usize, pathLen: usize, oflags: u16,
  rightsBase: u64, rightsInheriting: u64, fdflags: u16, opened: usize,
): u16
@external("wasi_snapshot_preview1", "fd_read")
export declare function fd_read(fd: u32, iovs: usize, iovsLen: usize, nread: usize): u16
@external("wasi_snapshot_preview1", "fd_write")
export declare function fd_write(fd: u32, iovs: usize, iovsLen: usize, nwritten: usize): u16
@external("wasi_snapshot_preview1", "fd_close")
export declare function fd_close(fd: u32): u16
@external("wasi_snapshot_preview1", "path_filestat_set_times")
export declare function path_filestat_set_times(
  dirfd: u32, flags: u32, path: usize, pathLen: usize, atim: u64, mtim: u64, fstFlags: u16,
): u16
@external("wasi_snapshot_preview1", "path_symlink")
export declare function path_symlink(oldPath: usize, oldLen: usize, dirfd: u32, newPath: usize, newLen: usize): u16

@external("wasi_snapshot_preview1", "path_rename")
export declare function path_rename(
  dirfd: u32, oldPath: usize, oldLen: usize, newDirfd: u32, newPath: usize, newLen: usize,
): u16
