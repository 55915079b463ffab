//! Golden bytes written by hand from the spec's message tables (QEMU's
//! `docs/devel/vfio-user.rst`), not produced by our encoder. Each test decodes them and checks
//! that the encoder reproduces them exactly.

use uvfio_user::proto::*;

fn decode(bytes: &[u8], nfds: usize) -> (Header, Message<'_>) {
    decode_message(bytes, nfds, &DecodeLimits::default()).expect("golden message decodes")
}

#[test]
fn golden_version_request_qemu_json() {
    // Header: msg_id 1, command 1, msg_size 16+4+len(json)+1, command type.
    let json = br#"{"capabilities":{"max_msg_fds":16,"max_data_xfer_size":1048576,"max_dma_maps":65535,"pgsizes":4096,"migration":{"pgsize":4096,"max_bitmap_size":268435456},"write_multiple":true}}"#;
    let msg_size = u8::try_from(16 + 4 + json.len() + 1).unwrap();
    let mut bytes = vec![
        0x01, 0x00, // msg_id
        0x01, 0x00, // command VERSION
        msg_size, 0x00, 0x00, 0x00, // msg_size
        0x00, 0x00, 0x00, 0x00, // flags: command
        0x00, 0x00, 0x00, 0x00, // error
        0x00, 0x00, // major 0
        0x00, 0x00, // minor 0
    ];
    bytes.extend_from_slice(json);
    bytes.push(0);

    let (hdr, msg) = decode(&bytes, 0);
    assert_eq!(hdr.msg_id, 1);
    let expected = Version {
        major: 0,
        minor: 0,
        capabilities: Some(Capabilities {
            max_msg_fds: 16,
            max_data_xfer_size: 1 << 20,
            max_dma_maps: 65535,
            pgsizes: 4096,
            migration: Some(MigrationCaps {
                pgsize: Some(4096),
                max_bitmap_size: Some(256 << 20),
            }),
            twin_socket: None,
            write_multiple: true,
        }),
    };
    assert_eq!(msg, Message::Request(Request::Version(expected.clone())));

    let mut out = Vec::new();
    Request::Version(expected)
        .encode(1, false, &mut out)
        .unwrap();
    assert_eq!(out, bytes);
}

#[test]
fn golden_version_request_with_fd_is_einval() {
    let bytes = [
        0x01, 0x00, 0x01, 0x00, 0x14, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, //
        0x00, 0x00, 0x00, 0x00,
    ];
    let err = decode_message(&bytes, 1, &DecodeLimits::default()).unwrap_err();
    assert_eq!(
        err,
        ProtoError::Illegal(PeerMisbehaved::UnexpectedFds {
            command: Command::Version,
            nfds: 1,
            rule: FdRule::None
        })
    );
    assert_eq!(err.errno(), rustix::io::Errno::INVAL);
}

#[test]
fn golden_dma_map_with_fd() {
    let bytes = [
        0x02, 0x01, // msg_id 0x0102
        0x02, 0x00, // DMA_MAP
        0x30, 0x00, 0x00, 0x00, // msg_size 48
        0x00, 0x00, 0x00, 0x00, // command
        0x00, 0x00, 0x00, 0x00, // error
        0x20, 0x00, 0x00, 0x00, // argsz 32
        0x03, 0x00, 0x00, 0x00, // READ | WRITE
        0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // offset 0x1000
        0x00, 0x00, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, // address 0x8000_0000
        0x00, 0x00, 0x20, 0x00, 0x00, 0x00, 0x00, 0x00, // size 0x20_0000
    ];
    let expected = DmaMap {
        argsz: 32,
        flags: VFIO_USER_F_DMA_REGION_READ | VFIO_USER_F_DMA_REGION_WRITE,
        offset: 0x1000,
        address: 0x8000_0000,
        size: 0x20_0000,
    };
    let (hdr, msg) = decode(&bytes, 1);
    assert_eq!(hdr.msg_id, 0x0102);
    assert_eq!(msg, Message::Request(Request::DmaMap(expected)));

    let mut out = Vec::new();
    Request::DmaMap(expected)
        .encode(0x0102, false, &mut out)
        .unwrap();
    assert_eq!(out, bytes);

    // Two fds are never allowed with DMA_MAP.
    let err = decode_message(&bytes, 2, &DecodeLimits::default()).unwrap_err();
    assert!(matches!(
        err,
        ProtoError::Illegal(PeerMisbehaved::UnexpectedFds { nfds: 2, .. })
    ));
}

#[test]
fn golden_region_read_reply() {
    let bytes = [
        0x07, 0x00, // msg_id 7
        0x09, 0x00, // REGION_READ
        0x24, 0x00, 0x00, 0x00, // msg_size 36
        0x01, 0x00, 0x00, 0x00, // reply
        0x00, 0x00, 0x00, 0x00, // error
        0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // offset 0x10
        0x07, 0x00, 0x00, 0x00, // region 7 (config)
        0x04, 0x00, 0x00, 0x00, // count 4
        0xde, 0xad, 0xbe, 0xef, // data
    ];
    let (hdr, msg) = decode(&bytes, 0);
    assert_eq!(hdr.msg_type, MsgType::Reply);
    let expected = RegionReadReply {
        offset: 0x10,
        region: VFIO_PCI_CONFIG_REGION_INDEX,
        data: &[0xde, 0xad, 0xbe, 0xef],
    };
    assert_eq!(msg, Message::Reply(Reply::RegionRead(expected)));
    // The data is borrowed from the input, not copied.
    if let Message::Reply(Reply::RegionRead(r)) = &msg {
        assert!(core::ptr::eq(r.data.as_ptr(), bytes[32..].as_ptr()));
    }

    let mut out = Vec::new();
    Reply::RegionRead(expected).encode(7, &mut out).unwrap();
    assert_eq!(out, bytes);

    // And the in-place encoder produces the same bytes.
    let mut out2 = Vec::new();
    let access = RegionAccess {
        offset: 0x10,
        region: 7,
        count: 4,
    };
    encode_region_read_reply_with(7, &access, &mut out2, |buf: &mut [u8]| {
        buf.copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        Ok::<(), ()>(())
    })
    .unwrap();
    assert_eq!(out2, bytes);
}

#[test]
fn golden_set_irqs_msix_eventfds() {
    let bytes = [
        0x03, 0x00, // msg_id 3
        0x08, 0x00, // SET_IRQS
        0x24, 0x00, 0x00, 0x00, // msg_size 36
        0x00, 0x00, 0x00, 0x00, // command
        0x00, 0x00, 0x00, 0x00, // error
        0x14, 0x00, 0x00, 0x00, // argsz 20
        0x24, 0x00, 0x00, 0x00, // DATA_EVENTFD | ACTION_TRIGGER
        0x02, 0x00, 0x00, 0x00, // index MSI-X
        0x00, 0x00, 0x00, 0x00, // start 0
        0x02, 0x00, 0x00, 0x00, // count 2
    ];
    let expected = SetIrqs {
        index: VFIO_PCI_MSIX_IRQ_INDEX,
        start: 0,
        count: 2,
        action: IrqAction::Trigger,
        data: IrqData::Eventfd,
    };
    let (_, msg) = decode(&bytes, 2);
    assert_eq!(msg, Message::Request(Request::DeviceSetIrqs(expected)));
    // Zero fds de-assigns; one fd for two vectors is an error.
    assert!(decode_message(&bytes, 0, &DecodeLimits::default()).is_ok());
    assert!(matches!(
        decode_message(&bytes, 1, &DecodeLimits::default()).unwrap_err(),
        ProtoError::Illegal(PeerMisbehaved::UnexpectedFds {
            rule: FdRule::CountOrNone(2),
            ..
        })
    ));

    let mut out = Vec::new();
    Request::DeviceSetIrqs(expected)
        .encode(3, false, &mut out)
        .unwrap();
    assert_eq!(out, bytes);
}

#[test]
fn golden_region_info_reply_with_sparse_mmap() {
    let bytes = [
        0x05, 0x00, // msg_id 5
        0x05, 0x00, // GET_REGION_INFO
        0x60, 0x00, 0x00, 0x00, // msg_size 96
        0x01, 0x00, 0x00, 0x00, // reply
        0x00, 0x00, 0x00, 0x00, // error
        0x50, 0x00, 0x00, 0x00, // argsz 80 = 32 + 16 + 2*16
        0x0f, 0x00, 0x00, 0x00, // READ | WRITE | MMAP | CAPS
        0x00, 0x00, 0x00, 0x00, // index 0 (BAR0)
        0x20, 0x00, 0x00, 0x00, // cap_offset 32
        0x00, 0x40, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // size 0x4000
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // offset 0
        0x01, 0x00, // cap id SPARSE_MMAP
        0x01, 0x00, // version 1
        0x00, 0x00, 0x00, 0x00, // next 0
        0x02, 0x00, 0x00, 0x00, // nr_areas 2
        0x00, 0x00, 0x00, 0x00, // reserved
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // area 0 offset 0
        0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // area 0 size 0x1000
        0x00, 0x20, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // area 1 offset 0x2000
        0x00, 0x20, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // area 1 size 0x2000
    ];
    let info = RegionInfo {
        flags: VFIO_REGION_INFO_FLAG_READ
            | VFIO_REGION_INFO_FLAG_WRITE
            | VFIO_REGION_INFO_FLAG_MMAP,
        index: VFIO_PCI_BAR0_REGION_INDEX,
        size: 0x4000,
        offset: 0,
        caps: vec![RegionCap::SparseMmap(vec![
            SparseMmapArea {
                offset: 0,
                size: 0x1000,
            },
            SparseMmapArea {
                offset: 0x2000,
                size: 0x2000,
            },
        ])],
    };
    let reply = info.reply_for(80).unwrap();
    assert!(reply.send_fd());

    let (_, msg) = decode(&bytes, 1);
    assert_eq!(
        msg,
        Message::Reply(Reply::DeviceGetRegionInfo(reply.clone()))
    );

    let mut out = Vec::new();
    Reply::DeviceGetRegionInfo(reply)
        .encode(5, &mut out)
        .unwrap();
    assert_eq!(out, bytes);

    // The same region asked with argsz 32: header-only answer, argsz 80, no
    // CAPS flag, no fd.
    let short = [
        0x05, 0x00, 0x05, 0x00, 0x30, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, //
        0x50, 0x00, 0x00, 0x00, // argsz 80 (needed)
        0x07, 0x00, 0x00, 0x00, // READ | WRITE | MMAP
        0x00, 0x00, 0x00, 0x00, // index 0
        0x00, 0x00, 0x00, 0x00, // cap_offset 0
        0x00, 0x40, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // size
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // offset
    ];
    let small = info.reply_for(32).unwrap();
    assert!(!small.send_fd());
    let mut out = Vec::new();
    Reply::DeviceGetRegionInfo(small.clone())
        .encode(5, &mut out)
        .unwrap();
    assert_eq!(out, short);
    let (_, msg) = decode(&short, 0);
    assert_eq!(msg, Message::Reply(Reply::DeviceGetRegionInfo(small)));
}

/// The kernel's and rust-vmm's answer to a too-small argsz keeps CAPS set
/// with cap_offset 0 and no chain: it decodes as "retry with argsz 80".
#[test]
fn golden_region_info_reply_kernel_style_too_small() {
    let bytes = [
        0x05, 0x00, 0x05, 0x00, 0x30, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, //
        0x50, 0x00, 0x00, 0x00, // argsz 80 (needed)
        0x0f, 0x00, 0x00, 0x00, // READ | WRITE | MMAP | CAPS
        0x00, 0x00, 0x00, 0x00, // index 0
        0x00, 0x00, 0x00, 0x00, // cap_offset 0: the chain did not fit
        0x00, 0x40, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // size
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // offset
    ];
    let (_, msg) = decode(&bytes, 0);
    let Message::Reply(Reply::DeviceGetRegionInfo(r)) = msg else {
        panic!("not a region info reply: {msg:?}")
    };
    assert!(r.info.caps.is_empty());
    assert_eq!(r.argsz, 80);
    assert!(!r.send_fd());
}

#[test]
fn golden_error_reply() {
    let bytes = [
        0x09, 0x00, // msg_id 9
        0x0a, 0x00, // REGION_WRITE
        0x10, 0x00, 0x00, 0x00, // msg_size 16
        0x21, 0x00, 0x00, 0x00, // reply | ERROR
        0x16, 0x00, 0x00, 0x00, // EINVAL
    ];
    let (_, msg) = decode(&bytes, 0);
    let expected = ErrorReply {
        command: Command::RegionWrite,
        errno: 22,
    };
    assert_eq!(msg, Message::Reply(Reply::Error(expected)));
    assert_eq!(expected.errno(), rustix::io::Errno::INVAL);

    let mut out = Vec::new();
    encode_error_reply(
        9,
        VFIO_USER_REGION_WRITE,
        rustix::io::Errno::INVAL,
        &mut out,
    );
    assert_eq!(out, bytes);
}

#[test]
fn golden_device_feature_set_mig_state_lvu() {
    let bytes = [
        0xb1, 0xfa, // msg_id 0xfab1
        0x10, 0x00, // DEVICE_FEATURE
        0x20, 0x00, 0x00, 0x00, // msg_size 32
        0x00, 0x00, 0x00, 0x00, // command
        0x00, 0x00, 0x00, 0x00, // error
        0x10, 0x00, 0x00, 0x00, // argsz 16
        0x02, 0x00, 0x02, 0x00, // SET | MIG_DEVICE_STATE
        0x03, 0x00, 0x00, 0x00, // STOP_COPY
        0xff, 0xff, 0xff, 0xff, // data_fd -1
    ];
    let expected = DeviceFeature {
        argsz: 16,
        feature: VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE,
        op: FeatureOp::Set,
        data: FeatureData::MigDeviceState {
            device_state: MigState::StopCopy,
            data_fd: u32::MAX,
        },
    };
    let (_, msg) = decode(&bytes, 0);
    assert_eq!(
        msg,
        Message::Request(Request::DeviceFeature(expected.clone()))
    );
    let mut out = Vec::new();
    Request::DeviceFeature(expected)
        .encode(0xfab1, false, &mut out)
        .unwrap();
    assert_eq!(out, bytes);
}

#[test]
fn golden_region_io_fds_reply_spec_entry() {
    let bytes = [
        0x0b, 0x00, // msg_id 11
        0x06, 0x00, // GET_REGION_IO_FDS
        0x48, 0x00, 0x00, 0x00, // msg_size 72 = 16 + 16 + 40
        0x01, 0x00, 0x00, 0x00, // reply
        0x00, 0x00, 0x00, 0x00, // error
        0x38, 0x00, 0x00, 0x00, // argsz 56
        0x00, 0x00, 0x00, 0x00, // flags
        0x02, 0x00, 0x00, 0x00, // index BAR2
        0x01, 0x00, 0x00, 0x00, // count 1
        0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // offset 0x1000
        0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // size 4
        0x00, 0x00, 0x00, 0x00, // fd_index 0
        0x00, 0x00, 0x00, 0x00, // type ioeventfd
        0x01, 0x00, 0x00, 0x00, // flags DATAMATCH
        0x00, 0x00, 0x00, 0x00, // pad
        0x2a, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // datamatch 42
    ];
    let entry = IoFdEntry {
        offset: 0x1000,
        size: 4,
        fd_index: 0,
        type_: VFIO_USER_IO_FD_TYPE_IOEVENTFD,
        flags: 1,
        datamatch: 42,
        shadow: None,
    };
    let reply = RegionIoFdsReply::for_request(56, 2, vec![entry]).unwrap();
    let (_, msg) = decode(&bytes, 1);
    assert_eq!(
        msg,
        Message::Reply(Reply::DeviceGetRegionIoFds(reply.clone()))
    );
    assert!(decode_message(&bytes, 0, &DecodeLimits::default()).is_err());
    let mut out = Vec::new();
    Reply::DeviceGetRegionIoFds(reply)
        .encode(11, &mut out)
        .unwrap();
    assert_eq!(out, bytes);
}

#[test]
fn golden_dma_write_from_server_and_reply() {
    let request = [
        0x21, 0x00, // msg_id 0x21
        0x0c, 0x00, // DMA_WRITE
        0x23, 0x00, 0x00, 0x00, // msg_size 35
        0x00, 0x00, 0x00, 0x00, // command
        0x00, 0x00, 0x00, 0x00, // error
        0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, // address 0x10000
        0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // count 3
        0x01, 0x02, 0x03, // data
    ];
    let (_, msg) = decode(&request, 0);
    let expected = DmaWrite {
        address: 0x10000,
        data: &[1, 2, 3],
    };
    assert_eq!(msg, Message::Request(Request::DmaWrite(expected)));
    assert_eq!(Command::DmaWrite.sender(), Role::Server);
    let mut out = Vec::new();
    Request::DmaWrite(expected)
        .encode(0x21, false, &mut out)
        .unwrap();
    assert_eq!(out, request);

    let reply = [
        0x21, 0x00, 0x0c, 0x00, 0x20, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, //
        0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, // address
        0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // count (u64, as lvu)
    ];
    let (_, msg) = decode(&reply, 0);
    let ack = DmaAccess {
        address: 0x10000,
        count: 3,
    };
    assert_eq!(msg, Message::Reply(Reply::DmaWrite(ack)));
    let mut out = Vec::new();
    Reply::DmaWrite(ack).encode(0x21, &mut out).unwrap();
    assert_eq!(out, reply);
}
