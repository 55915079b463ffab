//! Refusing a connection so that the client *sees* why: the acceptor keeps
//! the socket (no thread), waits for the client's first message header
//! (its VERSION), answers it with an error reply carrying the errno and
//! the client's own `msg_id` and command, and closes. A client that says
//! nothing before the deadline is simply closed.
//!
//! Everything is non-blocking and bounded: at most [`MAX_REFUSALS`]
//! sockets wait at once (more are closed at once), each for at most the
//! deadline, and fds sent along are never installed (plain `recv` without
//! a control buffer makes the kernel drop them).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Instant;

use rustix::io::Errno;
use rustix::net::{RecvFlags, SendFlags};

use crate::proto::{self, RawHeader, HEADER_SIZE};

/// Most connections being refused at once.
pub(super) const MAX_REFUSALS: usize = 64;

/// Bytes of a refused message's body read (and dropped) before closing,
/// so the client reads our reply rather than a reset.
const DRAIN_MAX: usize = 64 * 1024;

struct Refusal {
    sock: OwnedFd,
    errno: Errno,
    deadline: Instant,
    header: [u8; HEADER_SIZE],
    got: usize,
}

/// The connections being refused.
#[derive(Default)]
pub(super) struct Refusals {
    list: Vec<Refusal>,
}

enum Progress {
    Waiting,
    Done,
}

impl Refusals {
    /// Starts refusing `sock` with `errno`; closes it at once if too many
    /// refusals are pending.
    pub(super) fn add(&mut self, sock: OwnedFd, errno: Errno, deadline: Instant) {
        if self.list.len() >= MAX_REFUSALS {
            tracing::debug!("too many refusals pending; closing without a reply");
            return;
        }
        self.list.push(Refusal {
            sock,
            errno,
            deadline,
            header: [0; HEADER_SIZE],
            got: 0,
        });
    }

    /// The sockets to poll for input, in order.
    pub(super) fn fds(&self) -> impl Iterator<Item = BorrowedFd<'_>> {
        self.list.iter().map(|r| r.sock.as_fd())
    }

    /// How many are pending.
    pub(super) fn len(&self) -> usize {
        self.list.len()
    }

    /// The earliest deadline.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.list.iter().map(|r| r.deadline).min()
    }

    /// Serves the sockets `ready` says are readable (same order as
    /// [`Refusals::fds`] at poll time), then drops the expired ones.
    pub(super) fn service(&mut self, ready: &[bool], now: Instant) {
        let mut keep = Vec::with_capacity(self.list.len());
        for (i, mut r) in self.list.drain(..).enumerate() {
            let readable = ready.get(i).copied().unwrap_or(false);
            if readable {
                match progress(&mut r) {
                    Progress::Done => continue,
                    Progress::Waiting => {}
                }
            }
            if now >= r.deadline {
                tracing::debug!("refused client sent no message in time; closing");
                continue;
            }
            keep.push(r);
        }
        self.list = keep;
    }
}

/// Reads what the client sent; answers once the header is complete.
fn progress(r: &mut Refusal) -> Progress {
    loop {
        match rustix::net::recv(&r.sock, &mut r.header[r.got..], RecvFlags::DONTWAIT) {
            Ok((0, _)) => return Progress::Done,
            Ok((n, _)) => {
                r.got += n;
                if r.got == HEADER_SIZE {
                    answer(r);
                    return Progress::Done;
                }
            }
            Err(Errno::INTR) => {}
            Err(Errno::AGAIN) => return Progress::Waiting,
            Err(_) => return Progress::Done,
        }
    }
}

fn answer(r: &Refusal) {
    let h = RawHeader::parse(&r.header);
    let mut out = Vec::with_capacity(HEADER_SIZE);
    proto::encode_error_reply(h.msg_id, h.command, r.errno, &mut out);
    if let Err(e) = rustix::net::send(&r.sock, &out, SendFlags::DONTWAIT | SendFlags::NOSIGNAL) {
        tracing::debug!("cannot send the refusal: {e}");
        return;
    }
    // Drop what is already there of the body: closing with unread bytes
    // would reset the connection under the client's feet.
    let body = usize::try_from(h.msg_size)
        .unwrap_or(0)
        .saturating_sub(HEADER_SIZE)
        .min(DRAIN_MAX);
    let mut scratch = [0u8; 4096];
    let mut left = body;
    while left > 0 {
        let n = left.min(scratch.len());
        match rustix::net::recv(&r.sock, &mut scratch[..n], RecvFlags::DONTWAIT) {
            Ok((0, _)) => break,
            Ok((k, _)) => left -= k.min(left),
            Err(Errno::INTR) => {}
            Err(_) => break,
        }
    }
    if let Err(e) = rustix::net::shutdown(&r.sock, rustix::net::Shutdown::Write) {
        tracing::debug!("shutdown after the refusal: {e}");
    }
}
