//! Taking a Unix socket path before binding it: a live server there (one that accepts a
//! connection) or a file that is not a socket is refused and left alone; a stale socket
//! (nobody listening) is removed. Then [`bind_private`] binds it so that it is never
//! reachable with looser permissions than 0600, whatever the umask: bound inside a private
//! 0700 directory, chmodded, then renamed into place. Used by the JSON-RPC server and the NBD
//! server (one way for both).

use std::io::ErrorKind;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

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

/// Why [`bind_private`] did not bind.
#[derive(Debug)]
pub(crate) enum BindError {
    /// The path itself cannot be taken.
    Taken(PathTaken),
    /// The path it is bound at first, in its private directory, is too long (its length).
    StagedTooLong(PathBuf, usize),
    /// Creating the private directory, binding, chmod or rename failed.
    Io(PathBuf, std::io::Error),
}

/// Binds a Unix socket at `path` with mode 0600 from its first moment: bound inside a private
/// 0700 directory `.tidepool-{tag}-{pid}` next to it, chmodded, then renamed into place (the
/// directory is removed whatever happens). A stale socket at `path` is replaced, a live one or
/// a file that is not a socket refused (see [`clear_stale_socket`]).
pub(crate) fn bind_private(path: &Path, tag: &str) -> Result<UnixListener, BindError> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let private = parent.join(format!(".tidepool-{tag}-{}", std::process::id()));
    // Bound there first: that path must be short enough too (checked before anything on disk
    // is touched).
    let staged = private.join("sock");
    if staged.as_os_str().len() > MAX_SOCKET_PATH_BYTES {
        let len = staged.as_os_str().len();
        return Err(BindError::StagedTooLong(staged, len));
    }
    clear_stale_socket(path).map_err(BindError::Taken)?;
    let _ = std::fs::remove_dir_all(&private);
    std::fs::create_dir(&private).map_err(|e| BindError::Io(private.clone(), e))?;
    let result = (|| {
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700))?;
        let listener = UnixListener::bind(&staged)?;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&staged, path)?;
        Ok(listener)
    })();
    let _ = std::fs::remove_dir_all(&private);
    result.map_err(|e| BindError::Io(path.to_path_buf(), e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A path of exactly `len` bytes in this test process's scratch directory.
    fn path_of_len(len: usize) -> std::path::PathBuf {
        let dir = crate::testkit::temp_file("sock-len-probe", 0)
            .parent()
            .unwrap()
            .to_path_buf();
        let prefix = dir.as_os_str().len() + 1;
        dir.join("s".repeat(len - prefix))
    }

    #[test]
    fn the_longest_path_a_client_can_reach_is_accepted_and_one_more_byte_refused() {
        let fits = path_of_len(MAX_SOCKET_PATH_BYTES);
        assert_eq!(fits.as_os_str().len(), 107);
        clear_stale_socket(&fits).unwrap();
        // It really is reachable: bound and connected to.
        let _listener = UnixListener::bind(&fits).unwrap();
        UnixStream::connect(&fits).unwrap();

        let over = path_of_len(MAX_SOCKET_PATH_BYTES + 1);
        assert!(matches!(
            clear_stale_socket(&over),
            Err(PathTaken::TooLong(108))
        ));
        assert!(UnixListener::bind(&over).is_err(), "the OS refuses it too");
    }
}
