//! The control socket (`DIR/control.sock`, 0600): mdev's sysfs
//! `create`/`remove`/`available_instances` as one JSON request and one JSON
//! response per connection, newline-terminated.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

use crate::spec::DeviceSpec;

/// File name of the control socket inside the socket folder.
pub const CONTROL_SOCKET: &str = "control.sock";

/// Largest request line accepted.
const MAX_LINE: u64 = 64 * 1024;

/// A request to the running server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Create and register an instance.
    Create {
        /// What to create.
        spec: DeviceSpec,
    },
    /// Unregister an instance, waiting for its client.
    Remove {
        /// Instance name.
        name: String,
        /// Give up after this long (the instance is then already unlinked).
        timeout_ms: Option<u64>,
    },
    /// Types and instances.
    List,
}

/// A device type and how many more instances it can make.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypeInfo {
    /// Type name.
    pub name: String,
    /// One-line description.
    pub description: String,
    /// Like mdev's `available_instances`.
    pub available_instances: u32,
}

/// One registered instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceInfo {
    /// Instance name.
    pub name: String,
    /// Its device type.
    #[serde(rename = "type")]
    pub ty: String,
    /// Its vfio-user socket.
    pub socket: PathBuf,
    /// Labels of the attached clients (empty when free).
    pub clients: Vec<String>,
}

/// The server's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    /// An instance was created.
    Created {
        /// Its name.
        name: String,
        /// Its socket.
        socket: PathBuf,
    },
    /// An instance was removed.
    Removed {
        /// Its name.
        name: String,
    },
    /// The listing.
    List {
        /// Device types.
        types: Vec<TypeInfo>,
        /// Instances.
        instances: Vec<InstanceInfo>,
    },
    /// The request failed.
    Error {
        /// Why.
        message: String,
    },
}

/// Sends one request to the server listening in `dir` and returns its
/// response.
pub fn call(dir: &Path, req: &Request, timeout: Option<Duration>) -> anyhow::Result<Response> {
    let path = dir.join(CONTROL_SOCKET);
    let mut s = UnixStream::connect(&path).with_context(|| {
        format!(
            "no uvfio server at {} (is `uvfio serve` running?)",
            path.display()
        )
    })?;
    s.set_read_timeout(timeout)?;
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    s.write_all(&line)?;
    let mut resp = String::new();
    BufReader::new(s.take(MAX_LINE * 16))
        .read_line(&mut resp)
        .context("reading the server's response")?;
    if resp.is_empty() {
        bail!("the server closed the control connection without answering");
    }
    serde_json::from_str(&resp).context("malformed response")
}

/// Serves the control socket at `dir/control.sock` on a background thread;
/// each connection gets its own thread (a `remove` may wait for a client).
pub fn serve(
    dir: &Path,
    handler: Arc<dyn Fn(Request) -> Response + Send + Sync>,
) -> anyhow::Result<PathBuf> {
    let path = dir.join(CONTROL_SOCKET);
    crate::sockfile::prepare(&path)?;
    let listener =
        UnixListener::bind(&path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    std::thread::Builder::new()
        .name("uvfio-control".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let handler = handler.clone();
                let _ = std::thread::Builder::new()
                    .name("uvfio-control-conn".into())
                    .spawn(move || handle(conn, &*handler));
            }
        })?;
    Ok(path)
}

fn handle(conn: UnixStream, handler: &dyn Fn(Request) -> Response) {
    let Ok(read_half) = conn.try_clone() else {
        return;
    };
    let mut line = String::new();
    let resp = match BufReader::new(read_half.take(MAX_LINE)).read_line(&mut line) {
        Ok(0) => return,
        Ok(_) => match serde_json::from_str::<Request>(&line) {
            Ok(req) => handler(req),
            Err(e) => Response::Error {
                message: format!("bad request: {e}"),
            },
        },
        Err(e) => Response::Error {
            message: format!("reading request: {e}"),
        },
    };
    let mut out = match serde_json::to_vec(&resp) {
        Ok(v) => v,
        Err(_) => return,
    };
    out.push(b'\n');
    let mut conn = conn;
    if let Err(e) = conn.write_all(&out) {
        tracing::debug!("control client went away: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_and_response_round_trip_through_json() {
        let r = Request::Create {
            spec: "mtty:s,ports=2".parse().unwrap(),
        };
        let j = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<Request>(&j).unwrap(), r);
        let resp = Response::Error {
            message: "x".into(),
        };
        let j = serde_json::to_string(&resp).unwrap();
        assert!(j.contains("\"result\":\"error\""));
    }

    #[test]
    fn serve_answers_calls_and_rejects_garbage() {
        let dir = tempfile::tempdir().unwrap();
        serve(
            dir.path(),
            Arc::new(|req| match req {
                Request::List => Response::List {
                    types: vec![],
                    instances: vec![],
                },
                _ => Response::Error {
                    message: "nope".into(),
                },
            }),
        )
        .unwrap();
        let r = call(dir.path(), &Request::List, Some(Duration::from_secs(5))).unwrap();
        assert_eq!(
            r,
            Response::List {
                types: vec![],
                instances: vec![]
            }
        );
        let mut s = UnixStream::connect(dir.path().join(CONTROL_SOCKET)).unwrap();
        s.write_all(b"{not json\n").unwrap();
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).unwrap();
        assert!(line.contains("bad request"), "{line}");
    }
}
