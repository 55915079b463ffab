//! The receive buffer's caps on fds (transport module docs): never more
//! than `max_fds` held at once, never more than `MAX_FD_CHUNKS` separate
//! batches, over a real socket and sans-I/O.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use uvfio_user::transport::{
    self, FrameLimits, Message, RecvBuffer, TransportError, MAX_FD_CHUNKS,
};

fn frame(msg_size: u32, body_len: usize) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&7u16.to_le_bytes());
    v.extend_from_slice(&4u16.to_le_bytes());
    v.extend_from_slice(&msg_size.to_le_bytes());
    v.extend_from_slice(&[0u8; 8]);
    v.extend(std::iter::repeat_n(0u8, body_len));
    v
}

fn eventfds(n: usize) -> Vec<OwnedFd> {
    (0..n)
        .map(|_| uvfio_core::irq::eventfd().unwrap())
        .collect()
}

fn limits(max_fds: usize) -> FrameLimits {
    FrameLimits {
        max_fds,
        frame_timeout: Duration::from_secs(5),
        ..FrameLimits::default()
    }
}

#[test]
fn recv_buffer_fds_in_many_pieces_of_one_message_are_a_flood() {
    let (a, b) = UnixStream::pair().unwrap();
    let bytes = frame(16 + 64, 64);
    let efds = eventfds(1);
    // One byte per sendmsg, each with an fd: Linux ends a read at each.
    for chunk in bytes.chunks(1) {
        let fds: Vec<BorrowedFd<'_>> = efds.iter().map(AsFd::as_fd).collect();
        transport::send_message(a.as_fd(), chunk, &fds).unwrap();
    }
    let mut rb = RecvBuffer::new();
    let mut m = Message::default();
    let e = rb
        .recv(
            b.as_fd(),
            &limits(16),
            Some(Instant::now() + Duration::from_secs(20)),
            &mut m,
        )
        .unwrap_err();
    assert_eq!(e, TransportError::FdFlood { max: MAX_FD_CHUNKS });
    assert!(e.is_fatal());
}

#[test]
fn recv_buffer_holds_at_most_max_fds_and_rejects_the_message_beyond() {
    let mut rb = RecvBuffer::new();
    let l = limits(2);
    let bytes = frame(16 + 8, 8);
    // Three pieces of one message with 1 fd each: the third is over.
    rb.push(&bytes[..4], eventfds(1), &l).unwrap();
    rb.push(&bytes[4..10], eventfds(1), &l).unwrap();
    rb.push(&bytes[10..], eventfds(1), &l).unwrap();
    let mut m = Message::default();
    assert!(rb.pop(&l, &mut m).unwrap());
    assert!(m.fds_rejected);
    assert!(m.fds.is_empty());
    // The stream stays framed: the next message is fine.
    rb.push(&frame(16, 0), eventfds(2), &l).unwrap();
    assert!(rb.pop(&l, &mut m).unwrap());
    assert!(!m.fds_rejected);
    assert_eq!(m.fds.len(), 2);
    assert!(!rb.pop(&l, &mut m).unwrap());
}

#[test]
fn recv_buffer_pop_waits_for_a_whole_message_and_checks_its_size() {
    let mut rb = RecvBuffer::new();
    let l = limits(1);
    let bytes = frame(16 + 4, 4);
    rb.push(&bytes[..10], Vec::new(), &l).unwrap();
    let mut m = Message::default();
    assert!(!rb.pop(&l, &mut m).unwrap());
    rb.push(&bytes[10..], Vec::new(), &l).unwrap();
    assert!(rb.pop(&l, &mut m).unwrap());
    assert_eq!(m.body.len(), 4);
    rb.push(&frame(8, 0), Vec::new(), &l).unwrap();
    assert!(matches!(
        rb.pop(&l, &mut m),
        Err(TransportError::BadSize { msg_size: 8, .. })
    ));
}
