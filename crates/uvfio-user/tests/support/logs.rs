//! Captures `tracing` events process-wide so tests can count the warnings
//! a limit produces. Events are tagged with the emitting thread's name
//! (connection threads are `uvfio-user:DEVICE`) so parallel tests that use
//! different device names do not see each other's lines.

#![allow(dead_code)]

use std::fmt::Write as _;
use std::sync::{Mutex, OnceLock};

use tracing::field::{Field, Visit};
use tracing::{span, Event, Level, Metadata, Subscriber};

/// One captured event.
#[derive(Debug, Clone)]
pub struct Line {
    pub level: Level,
    pub thread: String,
    /// `message` and every other field as `name=value`.
    pub text: String,
}

impl Line {
    /// Whether the line concerns `device` (its thread, or a `device` field).
    pub fn about(&self, device: &str) -> bool {
        self.thread == format!("uvfio-user:{device}")
            || self.text.contains(&format!("device={device} "))
            || self.text.ends_with(&format!("device={device}"))
    }
}

static LINES: Mutex<Vec<Line>> = Mutex::new(Vec::new());

struct Capture;

struct Fields(String);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, "{}={:?} ", field.name(), value);
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        let _ = write!(self.0, "{}={} ", field.name(), value);
    }
}

impl Subscriber for Capture {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        *m.level() <= Level::INFO
    }
    fn new_span(&self, _: &span::Attributes<'_>) -> span::Id {
        span::Id::from_u64(1)
    }
    fn record(&self, _: &span::Id, _: &span::Record<'_>) {}
    fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}
    fn event(&self, e: &Event<'_>) {
        let mut f = Fields(String::new());
        e.record(&mut f);
        let line = Line {
            level: *e.metadata().level(),
            thread: std::thread::current().name().unwrap_or("").to_owned(),
            text: f.0.trim_end().to_owned(),
        };
        if std::env::var_os("UVFIO_TEST_LOGS").is_some() {
            eprintln!("[{} {}] {}", line.level, line.thread, line.text);
        }
        LINES.lock().unwrap_or_else(|e| e.into_inner()).push(line);
    }
    fn enter(&self, _: &span::Id) {}
    fn exit(&self, _: &span::Id) {}
}

/// Installs the capture (once per test binary).
pub fn init() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        tracing::subscriber::set_global_default(Capture).expect("no other subscriber");
    });
}

/// Warnings (and errors) about `device` so far.
pub fn warnings(device: &str) -> Vec<Line> {
    LINES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|l| l.level <= Level::WARN && l.about(device))
        .cloned()
        .collect()
}

/// Warnings about `device` that name `limit`.
pub fn limit_warnings(device: &str, limit: &str) -> Vec<Line> {
    warnings(device)
        .into_iter()
        .filter(|l| l.text.contains(&format!("limit={limit}")))
        .collect()
}

/// All warnings naming `limit`, whoever emitted them.
pub fn any_limit_warnings(limit: &str) -> Vec<Line> {
    LINES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|l| l.level <= Level::WARN && l.text.contains(&format!("limit={limit}")))
        .cloned()
        .collect()
}
