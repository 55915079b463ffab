//! Device specifications: `TYPE[:NAME][,key=value…]` on the command line,
//! or `[[device]]` tables in a TOML config file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

/// One device to create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceSpec {
    /// Device type (`mtty`, `gpio`, `dma`).
    #[serde(rename = "type")]
    pub ty: String,
    /// Instance name; generated when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Type-specific options.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
}

impl std::str::FromStr for DeviceSpec {
    type Err = anyhow::Error;

    /// Parses `TYPE[:NAME][,key=value…]`, e.g. `mtty:ser0,ports=2`.
    fn from_str(s: &str) -> anyhow::Result<Self> {
        let mut parts = s.split(',');
        let head = parts.next().unwrap_or_default();
        let (ty, name) = match head.split_once(':') {
            Some((t, n)) => (t, Some(n)),
            None => (head, None),
        };
        if ty.is_empty() {
            bail!("device spec {s:?}: missing type (expected TYPE[:NAME][,key=value…])");
        }
        if name == Some("") {
            bail!("device spec {s:?}: empty name after ':'");
        }
        let mut options = BTreeMap::new();
        for kv in parts {
            let Some((k, v)) = kv.split_once('=') else {
                bail!("device spec {s:?}: option {kv:?} is not key=value");
            };
            if k.is_empty() {
                bail!("device spec {s:?}: option {kv:?} has an empty key");
            }
            if options.insert(k.to_owned(), v.to_owned()).is_some() {
                bail!("device spec {s:?}: option {k:?} given twice");
            }
        }
        Ok(DeviceSpec {
            ty: ty.to_owned(),
            name: name.map(str::to_owned),
            options,
        })
    }
}

/// The `--config` file.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Socket folder.
    pub dir: Option<PathBuf>,
    /// Devices to create at start.
    pub devices: Vec<DeviceSpec>,
    /// How connection threads wait (`poll = "spin:50us"`, as `--poll`).
    pub poll: Option<uvfio_user::Wait>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    dir: Option<PathBuf>,
    poll: Option<String>,
    #[serde(default)]
    device: Vec<DeviceTable>,
}

#[derive(Deserialize)]
struct DeviceTable {
    #[serde(rename = "type")]
    ty: String,
    name: Option<String>,
    #[serde(flatten)]
    options: BTreeMap<String, toml::Value>,
}

impl Config {
    /// Reads and parses a TOML config:
    ///
    /// ```toml
    /// dir = "/run/uvfio"
    /// poll = "spin:50us"
    /// [[device]]
    /// type = "mtty"
    /// name = "ser0"
    /// ports = 2
    /// ```
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("config {}", path.display()))
    }

    /// Parses TOML text.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let file: ConfigFile = toml::from_str(text)?;
        let mut devices = Vec::new();
        for d in file.device {
            let mut options = BTreeMap::new();
            for (k, v) in d.options {
                let v = match v {
                    toml::Value::String(s) => s,
                    toml::Value::Integer(i) => i.to_string(),
                    toml::Value::Boolean(b) => b.to_string(),
                    other => bail!(
                        "device {:?}: option {k:?} has unsupported value {other}",
                        d.ty
                    ),
                };
                options.insert(k, v);
            }
            devices.push(DeviceSpec {
                ty: d.ty,
                name: d.name,
                options,
            });
        }
        let poll = file
            .poll
            .map(|p| crate::cli::parse_wait(&p).map_err(anyhow::Error::msg))
            .transpose()?;
        Ok(Config {
            dir: file.dir,
            devices,
            poll,
        })
    }
}

/// `$XDG_RUNTIME_DIR/uvfio`, else `/tmp/uvfio-$UID`.
pub fn default_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d).join("uvfio"),
        _ => PathBuf::from(format!("/tmp/uvfio-{}", rustix::process::getuid().as_raw())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_with_name_and_options_parses() {
        let s: DeviceSpec = "mtty:ser0,ports=2".parse().unwrap();
        assert_eq!(s.ty, "mtty");
        assert_eq!(s.name.as_deref(), Some("ser0"));
        assert_eq!(s.options.get("ports").map(String::as_str), Some("2"));
        let s: DeviceSpec = "gpio".parse().unwrap();
        assert_eq!((s.ty.as_str(), s.name, s.options.len()), ("gpio", None, 0));
    }

    #[test]
    fn malformed_specs_are_errors() {
        for bad in ["", ":x", "mtty:", "mtty,ports", "mtty,=1", "mtty,a=1,a=2"] {
            assert!(bad.parse::<DeviceSpec>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn config_file_parses_devices_and_rejects_unknown_keys() {
        let c = Config::parse(
            "dir = \"/tmp/d\"\n[[device]]\ntype = \"mtty\"\nname = \"s\"\nports = 2\n[[device]]\ntype = \"gpio\"\nloopback = true\n",
        )
        .unwrap();
        assert_eq!(c.dir, Some(PathBuf::from("/tmp/d")));
        assert_eq!(c.devices.len(), 2);
        assert_eq!(c.devices[0].options["ports"], "2");
        assert_eq!(c.devices[1].options["loopback"], "true");
        assert_eq!(c.poll, None);
        let c = Config::parse("poll = \"yield:20us\"").unwrap();
        assert_eq!(
            c.poll,
            Some(uvfio_user::Wait::Yield(std::time::Duration::from_micros(
                20
            )))
        );
        assert!(Config::parse("poll = \"spin\"").is_err());
        assert!(Config::parse("bogus = 1").is_err());
        assert!(Config::parse("[[device]]\nname = \"x\"").is_err());
    }
}
