//! `uvfio create`, `remove`, `list`: clients of the control socket.

use std::time::Duration;

use anyhow::{bail, Context};

use crate::cli::{CreateArgs, DirArg, RemoveArgs};
use crate::control::{self, Request, Response};
use crate::spec::{default_dir, DeviceSpec};

fn dir(d: &DirArg) -> std::path::PathBuf {
    d.dir.clone().unwrap_or_else(default_dir)
}

fn fail(resp: Response) -> anyhow::Result<()> {
    match resp {
        Response::Error { message } => bail!("{message}"),
        other => bail!("unexpected response {other:?}"),
    }
}

/// `uvfio create`.
pub fn create(args: CreateArgs) -> anyhow::Result<()> {
    let mut spec = DeviceSpec {
        ty: args.ty,
        name: args.name,
        options: Default::default(),
    };
    for kv in &args.options {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--opt {kv:?} is not KEY=VALUE"))?;
        spec.options.insert(k.to_owned(), v.to_owned());
    }
    let resp = control::call(
        &dir(&args.dir),
        &Request::Create { spec },
        Some(Duration::from_secs(30)),
    )?;
    match resp {
        Response::Created { name, socket } => {
            println!("{name} {}", socket.display());
            Ok(())
        }
        other => fail(other),
    }
}

/// `uvfio remove`.
pub fn remove(args: RemoveArgs) -> anyhow::Result<()> {
    let timeout_ms = match args.timeout {
        Some(t) if !(t.is_finite() && t >= 0.0) => bail!("--timeout must be a non-negative number"),
        Some(t) => Some((t * 1000.0) as u64),
        None => None,
    };
    let req = Request::Remove {
        name: args.name,
        timeout_ms,
    };
    // The server answers once the client let go (or the timeout passed).
    let resp = control::call(&dir(&args.dir), &req, None)?;
    match resp {
        Response::Removed { name } => {
            println!("removed {name}");
            Ok(())
        }
        other => fail(other),
    }
}

/// `uvfio list`.
pub fn list(args: DirArg) -> anyhow::Result<()> {
    let resp = control::call(&dir(&args), &Request::List, Some(Duration::from_secs(10)))?;
    let Response::List { types, instances } = resp else {
        return fail(resp);
    };
    println!("TYPE      AVAILABLE  DESCRIPTION");
    for t in types {
        let avail = if t.available_instances == u32::MAX {
            "unlimited".to_owned()
        } else {
            t.available_instances.to_string()
        };
        println!("{:<9} {:>9}  {}", t.name, avail, t.description);
    }
    println!();
    println!("INSTANCE          TYPE      CLIENT                SOCKET");
    for i in instances {
        let client = if i.clients.is_empty() {
            "-".to_owned()
        } else {
            i.clients.join(",")
        };
        println!(
            "{:<17} {:<9} {:<21} {}",
            i.name,
            i.ty,
            client,
            i.socket.display()
        );
    }
    Ok(())
}
