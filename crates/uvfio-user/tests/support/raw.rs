//! A raw vfio-user client: hand-built frames over a `UnixStream`, for
//! tests that misbehave on purpose.

#![allow(dead_code)]

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use rustix::io::Errno;
use uvfio_user::proto::{self, Capabilities, Request, Version};
use uvfio_user::transport::{self, FrameLimits, Message, TransportError};

pub const HANG_GUARD: Duration = Duration::from_secs(20);

pub struct Raw {
    pub s: UnixStream,
    pub id: u16,
}

pub fn header(msg_id: u16, command: u16, msg_size: u32, flags: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity(16);
    v.extend_from_slice(&msg_id.to_le_bytes());
    v.extend_from_slice(&command.to_le_bytes());
    v.extend_from_slice(&msg_size.to_le_bytes());
    v.extend_from_slice(&flags.to_le_bytes());
    v.extend_from_slice(&0u32.to_le_bytes());
    v
}

impl Raw {
    pub fn connect(path: &Path) -> Raw {
        Raw {
            s: UnixStream::connect(path).unwrap(),
            id: 0x100,
        }
    }

    pub fn send(&self, bytes: &[u8], fds: &[BorrowedFd<'_>]) {
        transport::send_message(self.s.as_fd(), bytes, fds).unwrap();
    }

    /// Like `send`, but a failure is returned (the server may be gone).
    pub fn try_send(&self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> Result<(), TransportError> {
        transport::send_message(self.s.as_fd(), bytes, fds)
    }

    pub fn recv(&self) -> Result<Message, TransportError> {
        let mut m = Message::default();
        let limits = FrameLimits {
            max_msg_size: 64 << 20,
            ..FrameLimits::default()
        };
        transport::recv_message(
            self.s.as_fd(),
            &limits,
            Some(Instant::now() + HANG_GUARD),
            &mut m,
        )?;
        Ok(m)
    }

    pub fn encode(&mut self, req: &Request<'_>, no_reply: bool) -> Vec<u8> {
        self.id = self.id.wrapping_add(1);
        let mut v = Vec::new();
        req.encode(self.id, no_reply, &mut v).unwrap();
        v
    }

    /// Sends `bytes` (one command) and returns its reply.
    pub fn round_trip(&self, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> Message {
        self.send(bytes, fds);
        let m = self.recv().expect("a reply");
        assert!(m.is_reply());
        assert_eq!(m.msg_id(), u16::from_le_bytes([bytes[0], bytes[1]]));
        m
    }

    pub fn request(&mut self, req: &Request<'_>, fds: &[BorrowedFd<'_>]) -> Message {
        let bytes = self.encode(req, false);
        self.round_trip(&bytes, fds)
    }

    pub fn version() -> Request<'static> {
        Request::Version(Version::ours(Capabilities::default()))
    }

    pub fn negotiate(&mut self) {
        let m = self.request(&Self::version(), &[]);
        assert_eq!(errno_of(&m), None, "VERSION refused");
    }
}

/// The errno of an error reply, `None` for a success.
pub fn errno_of(m: &Message) -> Option<Errno> {
    if m.flags() & proto::VFIO_USER_F_ERROR == 0 {
        return None;
    }
    let raw = u32::from_le_bytes(m.header[12..16].try_into().unwrap());
    Some(Errno::from_raw_os_error(raw as i32))
}

pub fn expect_errno(m: &Message, want: Errno) {
    assert_eq!(m.msg_size(), 16, "error replies are the header alone");
    assert_eq!(errno_of(m), Some(want));
}

/// Reads until EOF (skipping replies). A reset counts: the server closed
/// with our unread bytes still queued.
pub fn expect_closed(r: &Raw) {
    loop {
        match r.recv() {
            Ok(_) => continue,
            Err(TransportError::Closed | TransportError::Io(Errno::CONNRESET)) => return,
            Err(e) => panic!("expected EOF, got {e}"),
        }
    }
}

pub fn dma_map(address: u64, size: u64) -> Request<'static> {
    Request::DmaMap(proto::DmaMap {
        argsz: proto::DmaMap::ARGSZ,
        flags: proto::VFIO_USER_F_DMA_REGION_READ | proto::VFIO_USER_F_DMA_REGION_WRITE,
        offset: 0,
        address,
        size,
    })
}

pub fn dma_unmap(address: u64, size: u64) -> Request<'static> {
    Request::DmaUnmap(proto::DmaUnmap::new(address, size))
}

pub fn region_read(region: u32, offset: u64, count: u32) -> Request<'static> {
    Request::RegionRead(proto::RegionAccess {
        offset,
        region,
        count,
    })
}

pub fn set_eventfds(index: u32, start: u32, count: u32) -> Request<'static> {
    Request::DeviceSetIrqs(proto::SetIrqs {
        index,
        start,
        count,
        action: proto::IrqAction::Trigger,
        data: proto::IrqData::Eventfd,
    })
}

pub fn eventfds(n: usize) -> Vec<OwnedFd> {
    (0..n)
        .map(|_| uvfio_core::irq::eventfd().unwrap())
        .collect()
}

pub fn borrow(fds: &[OwnedFd]) -> Vec<BorrowedFd<'_>> {
    fds.iter().map(AsFd::as_fd).collect()
}
