//! Reply deadlines without a kernel timer per wait.
//!
//! A client waits for each reply blocking in `recvmsg`. Bounding that wait
//! with `SO_RCVTIMEO` makes the kernel arm and cancel a timer on every
//! blocking call, ~0.4 µs of a ~9 µs round trip on the project's VM
//! (`uvfio bench`, message path on one CPU). Instead, channels that opt in
//! ([`Channel::with_watchdog`]) block with no timeout and publish that
//! their reader waits, with its timeout; one thread per process checks
//! them every [`TICK`], fixes a read's deadline at the first tick that sees
//! it (so the waiting call reads no clock), and closes the connection of a
//! reader that is overdue, which wakes it with the call failing as a
//! timeout. A reply is thus awaited for its timeout plus at most a tick,
//! which is plenty for timeouts of seconds.
//!
//! The thread starts with the first watched channel and exits once there
//! has been none for a second.

use std::sync::{Arc, Condvar, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use crate::channel::Channel;

/// How often deadlines are checked while any channel is watched.
pub(crate) const TICK: Duration = Duration::from_millis(50);

/// How long the thread lingers with nothing to watch before it exits (a
/// process without clients keeps no thread of ours).
const IDLE_EXIT: Duration = Duration::from_secs(1);

struct Watched {
    state: Mutex<State>,
    added: Condvar,
}

struct State {
    channels: Vec<Weak<Channel>>,
    /// Whether the thread is running (it clears this as it exits).
    running: bool,
}

fn watched() -> &'static Watched {
    static WATCHED: OnceLock<Watched> = OnceLock::new();
    WATCHED.get_or_init(|| Watched {
        state: Mutex::new(State {
            channels: Vec::new(),
            running: false,
        }),
        added: Condvar::new(),
    })
}

/// Keeps `chan`'s reply deadlines from now on (until it is dropped).
pub(crate) fn watch(chan: &Arc<Channel>) {
    let w = watched();
    let mut st = w.state.lock().unwrap_or_else(|e| e.into_inner());
    st.channels.push(Arc::downgrade(chan));
    if st.running {
        w.added.notify_one();
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("uvfio-reply-watchdog".into())
        .spawn(run);
    match spawned {
        Ok(_) => st.running = true,
        // Without the thread a reply that never comes blocks its call
        // until the peer closes; the next client tries again.
        Err(e) => tracing::error!("cannot start the reply watchdog: {e}"),
    }
}

fn run() {
    let w = watched();
    loop {
        {
            // No allocation per tick (the message path is checked to
            // allocate nothing, and this runs beside it): scan in place.
            // Holding this lock while a channel's state lock is taken is
            // fine: nothing takes them in the other order.
            let mut st = w.state.lock().unwrap_or_else(|e| e.into_inner());
            st.channels.retain(|c| c.strong_count() > 0);
            if st.channels.is_empty() {
                st = w
                    .added
                    .wait_timeout(st, IDLE_EXIT)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
                st.channels.retain(|c| c.strong_count() > 0);
                if st.channels.is_empty() {
                    st.running = false;
                    return;
                }
            }
            let now = Instant::now();
            for chan in st.channels.iter().filter_map(Weak::upgrade) {
                chan.expire_if_overdue(now);
            }
        }
        std::thread::sleep(TICK);
    }
}
