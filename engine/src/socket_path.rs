//! Taking a Unix socket path before binding it: a live server there (one that accepts a
//! connection) or a file that is not a socket is refused and left alone; a stale socket
//! (nobody listening) is removed. Used by the JSON-RPC server and the NBD server.

use std::io::ErrorKind;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::Path;

#[derive(Debug)]
pub(crate) enum PathTaken {
    /// Another server accepted a connection there.
    InUse,
    NotASocket,
    Io(std::io::Error),
}

/// Makes `path` free for `bind`, removing a stale socket.
pub(crate) fn clear_stale_socket(path: &Path) -> Result<(), PathTaken> {
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
