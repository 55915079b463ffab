//! Socket files: a folder only we can enter, and the stale-socket rule.

use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::Path;

use anyhow::{bail, Context};

/// Creates `dir` (mode 0700) if missing. An existing folder must be a real
/// folder owned by us, not a symlink.
pub fn ensure_dir(dir: &Path) -> anyhow::Result<()> {
    match std::fs::symlink_metadata(dir) {
        Ok(m) => {
            if !m.file_type().is_dir() {
                bail!("{} exists and is not a folder", dir.display());
            }
            if m.uid() != rustix::process::geteuid().as_raw() {
                bail!("{} is owned by another user", dir.display());
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("creating {}", dir.display()))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
            Ok(())
        }
        Err(e) => Err(e).with_context(|| format!("checking {}", dir.display())),
    }
}

/// Makes `path` free for a new socket: nothing there is fine; a socket that
/// nobody listens on (a dead server's) is removed; a live socket or any
/// other kind of file is an error. Symlinks are never followed.
pub fn prepare(path: &Path) -> anyhow::Result<()> {
    let m = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("checking {}", path.display())),
    };
    if !m.file_type().is_socket() {
        bail!("{} exists and is not a socket", path.display());
    }
    if UnixStream::connect(path).is_ok() {
        bail!("{} is in use by a live server", path.display());
    }
    std::fs::remove_file(path).with_context(|| format!("removing stale {}", path.display()))?;
    Ok(())
}
