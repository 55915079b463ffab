//! Access control: the socket folder and files, the uid allow-list, and
//! never following a symlink when sockets are created or removed.

mod common;
#[path = "support/logs.rs"]
mod logs;

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::Duration;

use common::*;
use rustix::io::Errno;
use uvfio_core::{GroupId, RegisteredDevice, Registry, RegistryConfig};
use uvfio_user::{Client, ClientError, Server, ServerConfig};

fn registry() -> Registry {
    Registry::new(RegistryConfig {
        request_interval: Duration::from_millis(50),
    })
}

fn register(reg: &Registry, name: &str, group: u32) -> RegisteredDevice<TestDevice> {
    reg.init(test_device(), name, GroupId(group))
        .unwrap()
        .register()
        .unwrap()
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

#[test]
fn access_missing_socket_dir_is_created_0700_and_sockets_are_0600() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a/b/uvfio");
    let reg = registry();
    let server = Server::new(reg.clone(), ServerConfig::new(&dir)).unwrap();
    let _dev = register(&reg, "acc-new", 1);
    assert_eq!(mode(&dir), 0o700);
    let sock = server.socket_path("acc-new").unwrap();
    assert_eq!(mode(&sock), 0o600);
    assert!(std::fs::symlink_metadata(&sock)
        .unwrap()
        .file_type()
        .is_socket());
}

#[test]
fn access_existing_socket_dir_is_made_private() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("shared");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let server = Server::new(registry(), ServerConfig::new(&dir)).unwrap();
    assert_eq!(mode(&dir), 0o700);
    drop(server);
    // Opting out leaves the folder as it is.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o750)).unwrap();
    let server = Server::new(
        registry(),
        ServerConfig::new(&dir).private_socket_dir(false),
    )
    .unwrap();
    assert_eq!(mode(&dir), 0o750);
    drop(server);
}

#[test]
fn access_socket_dir_that_is_a_symlink_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let real = tmp.path().join("real");
    std::fs::create_dir(&real).unwrap();
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o755)).unwrap();
    let link = tmp.path().join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let e = Server::new(registry(), ServerConfig::new(&link)).unwrap_err();
    assert!(e.to_string().contains("not a folder"), "{e}");
    // The target was not touched.
    assert_eq!(mode(&real), 0o755);
}

#[test]
fn access_socket_dir_owned_by_another_user_is_refused() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: needs root to chown");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("theirs");
    std::fs::create_dir(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(54321), Some(54321)).unwrap();
    let e = Server::new(registry(), ServerConfig::new(&dir)).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied, "{e}");
}

fn server_errno(e: ClientError) -> Errno {
    match e {
        ClientError::Server { errno, .. } => errno,
        other => panic!("expected an error reply, got {other:?}"),
    }
}

#[test]
fn access_uid_not_in_the_allow_list_gets_eperm_and_one_warning() {
    logs::init();
    let tmp = tempfile::tempdir().unwrap();
    let me = rustix::process::geteuid().as_raw();
    let reg = registry();
    let server = Server::new(
        reg.clone(),
        ServerConfig::new(tmp.path()).allowed_uids([me.wrapping_add(1)]),
    )
    .unwrap();
    let dev = register(&reg, "acc-uid", 1);
    let path = server.socket_path("acc-uid").unwrap();
    let e = Client::connect(&path).unwrap_err();
    assert_eq!(server_errno(e), Errno::PERM);
    assert_eq!(dev.open_count(), 0);
    wait_until("the warning", || !logs::warnings("acc-uid").is_empty());
    assert_eq!(logs::limit_warnings("acc-uid", "allowed_uids").len(), 1);
    assert_eq!(logs::warnings("acc-uid").len(), 1);
    drop(server);

    // Listed: served.
    let tmp2 = tempfile::tempdir().unwrap();
    let server = Server::new(
        reg.clone(),
        ServerConfig::new(tmp2.path()).allowed_uids([me]),
    )
    .unwrap();
    let c = Client::connect(server.socket_path("acc-uid").unwrap()).unwrap();
    let mut id = [0u8; 2];
    c.region_read(CONFIG, 0, &mut id).unwrap();
    assert_eq!(u16::from_le_bytes(id), VENDOR_ID);
}

#[test]
fn access_removal_leaves_a_symlink_planted_at_the_socket_path() {
    let tmp = tempfile::tempdir().unwrap();
    let sockdir = tmp.path().join("s");
    let reg = registry();
    let server = Server::new(reg.clone(), ServerConfig::new(&sockdir)).unwrap();
    let dev = register(&reg, "acc-rm", 1);
    let path = server.socket_path("acc-rm").unwrap();
    // Someone swaps the socket for a symlink to a file of theirs.
    let victim = tmp.path().join("precious");
    std::fs::write(&victim, b"keep me").unwrap();
    std::fs::remove_file(&path).unwrap();
    std::os::unix::fs::symlink(&victim, &path).unwrap();
    drop(dev.unregister());
    assert!(server.socket_path("acc-rm").is_none());
    assert!(std::fs::symlink_metadata(&path)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(std::fs::read(&victim).unwrap(), b"keep me");
}

#[test]
fn access_removal_leaves_another_socket_at_the_path() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = registry();
    let server = Server::new(reg.clone(), ServerConfig::new(tmp.path())).unwrap();
    let dev = register(&reg, "acc-other", 1);
    let path = server.socket_path("acc-other").unwrap();
    // Another server took the path over (ours was unlinked under us).
    std::fs::remove_file(&path).unwrap();
    let theirs = UnixListener::bind(&path).unwrap();
    drop(dev.unregister());
    // Still theirs, still reachable.
    assert!(UnixStream::connect(&path).is_ok());
    drop(theirs);
    drop(server);
    assert!(std::fs::symlink_metadata(&path).is_ok());
}

#[test]
fn access_shutdown_removes_only_our_sockets() {
    let tmp = tempfile::tempdir().unwrap();
    let reg = registry();
    let server = Server::new(reg.clone(), ServerConfig::new(tmp.path())).unwrap();
    let _a = register(&reg, "acc-shut-a", 1);
    let _b = register(&reg, "acc-shut-b", 2);
    let a = server.socket_path("acc-shut-a").unwrap();
    let b = server.socket_path("acc-shut-b").unwrap();
    let target = tmp.path().join("target");
    std::fs::write(&target, b"x").unwrap();
    std::fs::remove_file(&b).unwrap();
    std::os::unix::fs::symlink(&target, &b).unwrap();
    server.shutdown();
    assert!(std::fs::symlink_metadata(&a).is_err(), "ours is removed");
    assert!(
        std::fs::symlink_metadata(&b).is_ok(),
        "the planted link stays"
    );
    assert_eq!(std::fs::read(&target).unwrap(), b"x");
}
