//! Taking a Unix socket path before binding it: a live server there (one that accepts a
//! connection) or a file that is not a socket is refused and left alone; a stale socket
//! (nobody listening) is removed. Used by the JSON-RPC server and the NBD server.

use std::io::ErrorKind;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::Path;

/// Longest path a client can connect to: `sun_path` holds 108 bytes with the closing NUL.
/// A server could still listen on a longer one (bound elsewhere and renamed), but nobody
/// could reach it, and a live server there would look stale.
pub(crate) const MAX_SOCKET_PATH_BYTES: usize = 107;

#[derive(Debug)]
pub(crate) enum PathTaken {
    /// Another server accepted a connection there.
    InUse,
    NotASocket,
    /// Longer than [`MAX_SOCKET_PATH_BYTES`] (its length in bytes).
    TooLong(usize),
    Io(std::io::Error),
}

/// Makes `path` free for `bind`, removing a stale socket. Checks nothing on disk, and changes
/// nothing, for a path too long to connect to.
pub(crate) fn clear_stale_socket(path: &Path) -> Result<(), PathTaken> {
    let len = path.as_os_str().len();
    if len > MAX_SOCKET_PATH_BYTES {
        return Err(PathTaken::TooLong(len));
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => Err(PathTaken::NotASocket),
        Ok(_) if UnixStream::connect(path).is_ok() => Err(PathTaken::InUse),
        Ok(_) => {
            log::warn!("replacing stale socket {}", path.display());
            std::fs::remove_file(path).map_err(PathTaken::Io)
        }
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(PathTaken::Io(e)),
    }
}
