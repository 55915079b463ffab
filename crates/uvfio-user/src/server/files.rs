//! The socket folder and the socket files in it, never following a
//! symlink.
//!
//! - The folder is created 0700 if missing. With
//!   [`ServerConfig::private_socket_dir`](super::ServerConfig::private_socket_dir)
//!   (the default) an existing folder must be a real folder (not a
//!   symlink) owned by our effective uid, and its mode is set to 0700
//!   through a descriptor opened `O_NOFOLLOW`.
//! - A socket file is bound, then chmod 0600 through an
//!   `O_PATH|O_NOFOLLOW` descriptor, then listened on: nobody can connect
//!   before the mode is set, and a symlink swapped in is never followed.
//!   Its identity (device, inode) is recorded.
//! - An existing path is replaced only if it is a socket nobody listens on.
//! - Removal unlinks the path only if it is still *our* socket (same
//!   identity, `lstat`): a symlink or another socket planted there is left
//!   alone, and `unlink` itself never follows a link.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use rustix::fs::{FileType, Mode, OFlags};
use rustix::io::Errno;
use rustix::net::{AddressFamily, SocketAddrUnix, SocketFlags, SocketType};

/// Device and inode of a file we created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    fn of(st: &rustix::fs::Stat) -> FileId {
        FileId {
            #[allow(clippy::useless_conversion)]
            dev: u64::from(st.st_dev),
            #[allow(clippy::useless_conversion)]
            ino: u64::from(st.st_ino),
        }
    }
}

fn io_err(e: Errno, what: String) -> std::io::Error {
    std::io::Error::new(std::io::Error::from(e).kind(), what)
}

/// Creates or checks the socket folder (see the module docs).
pub(super) fn prepare_dir(dir: &Path, private: bool) -> std::io::Result<()> {
    match rustix::fs::lstat(dir) {
        Ok(_) => {}
        Err(Errno::NOENT) => {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
        Err(e) => return Err(io_err(e, format!("checking {}: {e}", dir.display()))),
    }
    if !private {
        return Ok(());
    }
    let st = rustix::fs::lstat(dir).map_err(|e| io_err(e, format!("{}: {e}", dir.display())))?;
    if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
        return Err(io_err(
            Errno::NOTDIR,
            format!(
                "{} is not a folder (symlinks are not followed)",
                dir.display()
            ),
        ));
    }
    let me = rustix::process::geteuid().as_raw();
    if st.st_uid != me {
        return Err(io_err(
            Errno::PERM,
            format!(
                "{} is owned by uid {}, not by us (uid {me})",
                dir.display(),
                st.st_uid
            ),
        ));
    }
    if st.st_mode & 0o777 != 0o700 {
        let fd = rustix::fs::open(
            dir,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io_err(e, format!("opening {}: {e}", dir.display())))?;
        let again = rustix::fs::fstat(&fd)?;
        if FileId::of(&again) != FileId::of(&st) {
            return Err(io_err(
                Errno::AGAIN,
                format!("{} changed while being checked", dir.display()),
            ));
        }
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o700))?;
        tracing::info!(
            path = %dir.display(),
            was = format_args!("{:o}", st.st_mode & 0o777),
            "socket folder mode set to 0700"
        );
    }
    Ok(())
}

/// Creates the listening socket at `path`, mode 0600, non-blocking.
pub(super) fn bind_listener(path: &Path) -> Result<(OwnedFd, FileId), Errno> {
    match rustix::fs::lstat(path) {
        Err(Errno::NOENT) => {}
        Err(e) => return Err(e),
        Ok(st) => {
            if FileType::from_raw_mode(st.st_mode) != FileType::Socket {
                // A file, a directory or a symlink: not ours to replace.
                return Err(Errno::EXIST);
            }
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => return Err(Errno::ADDRINUSE),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    tracing::info!(path = %path.display(), "replacing a stale socket");
                    rustix::fs::unlink(path)?;
                }
                Err(e) => return Err(Errno::from_io_error(&e).unwrap_or(Errno::EXIST)),
            }
        }
    }
    let sock = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?;
    let addr = SocketAddrUnix::new(path)?;
    rustix::net::bind(&sock, &addr)?;
    let id = match restrict_mode(path) {
        Ok(id) => id,
        Err(e) => {
            // Whatever is there now is not known to be ours: leave it.
            return Err(e);
        }
    };
    if let Err(e) = rustix::net::listen(&sock, 128) {
        remove_socket_file(path, id);
        return Err(e);
    }
    Ok((sock, id))
}

/// chmod 0600 without following a symlink swapped in after bind; returns
/// the socket file's identity.
fn restrict_mode(path: &Path) -> Result<FileId, Errno> {
    let fd = rustix::fs::open(
        path,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let st = rustix::fs::fstat(&fd)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::Socket {
        return Err(Errno::EXIST);
    }
    let proc_path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    rustix::fs::chmod(proc_path.as_str(), Mode::from_raw_mode(0o600))?;
    Ok(FileId::of(&st))
}

/// Unlinks `path` if it is still the socket we created.
pub(super) fn remove_socket_file(path: &Path, id: FileId) {
    match rustix::fs::lstat(path) {
        Ok(st)
            if FileType::from_raw_mode(st.st_mode) == FileType::Socket && FileId::of(&st) == id =>
        {
            if let Err(e) = rustix::fs::unlink(path) {
                tracing::warn!(path = %path.display(), "cannot remove socket: {e}");
            }
        }
        Ok(_) => {
            tracing::warn!(path = %path.display(), "socket path was replaced by something else; left alone");
        }
        Err(Errno::NOENT) => {}
        Err(e) => tracing::warn!(path = %path.display(), "cannot check socket: {e}"),
    }
}
