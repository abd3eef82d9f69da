//! Small system calls the standard library does not wrap.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// A libc call's return code as a result: 0 is success, anything else the OS error `errno`
/// holds.
fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sets this thread's timer slack. Linux lets a sleeping thread's timer fire up to 50 µs late
/// by default; a parked reactor with a due timer wants to wake on time.
pub fn set_timer_slack_ns(ns: u64) -> io::Result<()> {
    // SAFETY: PR_SET_TIMERSLACK takes a plain integer and touches no memory of ours.
    let rc = unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, ns as libc::c_ulong, 0, 0, 0) };
    check(rc)
}

/// Size in bytes of an open block device (ioctl BLKGETSIZE64).
pub fn block_device_size(file: &File) -> io::Result<u64> {
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which points at `size`.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64, &mut size as *mut u64) };
    check(rc)?;
    Ok(size)
}

/// Logical block size of an open block device (ioctl BLKSSZGET).
pub fn block_device_logical_block_size(file: &File) -> io::Result<u32> {
    let mut size: libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one int through the pointer, which points at `size`.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKSSZGET, &mut size as *mut libc::c_int) };
    check(rc)?;
    Ok(size as u32)
}

/// `_IOR(0x12, 114, size_t)` from linux/fs.h.
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
/// `_IO(0x12, 104)` from linux/fs.h.
const BLKSSZGET: libc::c_ulong = 0x1268;

/// CPU time this process has used, user plus system, in nanoseconds.
pub fn process_cpu_time_ns() -> io::Result<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through the pointer, which points at `ts`.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    check(rc)?;
    Ok(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

/// Restricts the calling thread to `cores` (sched_setaffinity on the thread itself).
pub fn set_current_thread_affinity(cores: &[usize]) -> io::Result<()> {
    // SAFETY: cpu_set_t is a plain bit array for which all-zero is the valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &core in cores {
        if core >= libc::CPU_SETSIZE as usize {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        // SAFETY: `core` is below CPU_SETSIZE, so the bit lies inside `set`.
        unsafe { libc::CPU_SET(core, &mut set) };
    }
    // SAFETY: `set` is a valid, initialised cpu_set_t of the size passed; pid 0 is this thread.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    check(rc)
}

/// Waits up to `timeout` for a descriptor to become readable (for a listening socket: a
/// connection to accept). Returns whether it did; an interrupted wait reads as "not yet".
pub fn wait_readable(fd: &impl AsRawFd, timeout: std::time::Duration) -> io::Result<bool> {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: poll reads and writes the one pollfd `p` points at, for the count given (1).
    let rc = unsafe { libc::poll(&mut p, 1, ms) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted {
            Ok(false)
        } else {
            Err(e)
        };
    }
    Ok(rc > 0)
}

/// Sets TCP-level socket option `option` to the bytes of `value` (setsockopt, IPPROTO_TCP).
fn set_tcp_option(fd: &impl AsRawFd, option: libc::c_int, value: &[u8]) -> io::Result<()> {
    // SAFETY: setsockopt reads `value.len()` bytes from the pointer, which points at `value`.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            option,
            value.as_ptr() as *const libc::c_void,
            value.len() as libc::socklen_t,
        )
    };
    check(rc)
}

/// Sets a TCP socket's congestion control algorithm by name (setsockopt TCP_CONGESTION).
pub fn set_tcp_congestion(fd: &impl AsRawFd, name: &str) -> io::Result<()> {
    set_tcp_option(fd, libc::TCP_CONGESTION, name.as_bytes())
}

/// A TCP socket's congestion control algorithm (getsockopt TCP_CONGESTION).
pub fn tcp_congestion(fd: &impl AsRawFd) -> io::Result<String> {
    // TCP_CA_NAME_MAX in linux/tcp.h.
    let mut name = [0u8; 16];
    let mut len = name.len() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `name`, which is `len` bytes long,
    // and stores the length it wrote in `len`.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_CONGESTION,
            name.as_mut_ptr() as *mut libc::c_void,
            &mut len,
        )
    };
    check(rc)?;
    let name = &name[..(len as usize).min(name.len())];
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    Ok(String::from_utf8_lossy(&name[..end]).into_owned())
}

/// Turns a TCP socket's quick-ACK mode on or off (setsockopt TCP_QUICKACK; off means the
/// kernel may delay ACKs to send them with data, until it decides otherwise).
pub fn set_tcp_quickack(fd: &impl AsRawFd, on: bool) -> io::Result<()> {
    set_tcp_option(fd, libc::TCP_QUICKACK, &(on as libc::c_int).to_ne_bytes())
}
