//! A user of a registered device through the in-process uAPI.

use std::os::fd::OwnedFd;

use uvfio_core::{
    Container, Errno, GroupId, IrqAction, IrqData, MigState, OpenDevice, Registry, SetIrqs,
};
use uvfio_pci::index::VFIO_PCI_CONFIG_REGION_INDEX;
use uvfio_pci::migration::{parse_stream, PCI_MIG_HEADER_LEN, SECTION_END};
use uvfio_pci::StateWriter;

pub(crate) struct User {
    /// The device handle (through `Deref`), with its group and container.
    pub(crate) handle: OpenDevice,
}

impl User {
    pub(crate) fn open(registry: &Registry, group: GroupId, name: &str) -> User {
        User {
            handle: registry.open_device(group, name).unwrap(),
        }
    }

    /// The container, for DMA map/unmap and dirty logging.
    pub(crate) fn container(&self) -> &Container {
        self.handle.container()
    }

    pub(crate) fn bind(&self, index: u32, n: u32) -> Vec<OwnedFd> {
        let (req, mine) = SetIrqs::bind_new_eventfds(index, 0, n).unwrap();
        self.handle.set_irqs(req).unwrap();
        mine
    }

    pub(crate) fn unmask(&self, index: u32) {
        self.handle
            .set_irqs(SetIrqs {
                index,
                start: 0,
                count: 1,
                action: IrqAction::Unmask,
                data: IrqData::None,
            })
            .unwrap();
    }

    pub(crate) fn read8(&self, region: u32, off: u64) -> u8 {
        let mut b = [0u8; 1];
        self.handle.read(region, off, &mut b).unwrap();
        b[0]
    }

    pub(crate) fn write8(&self, region: u32, off: u64, v: u8) {
        self.handle.write(region, off, &[v]).unwrap();
    }

    pub(crate) fn read32(&self, region: u32, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.handle.read(region, off, &mut b).unwrap();
        u32::from_le_bytes(b)
    }

    pub(crate) fn write32(&self, region: u32, off: u64, v: u32) {
        self.handle.write(region, off, &v.to_le_bytes()).unwrap();
    }

    pub(crate) fn cfg_read32(&self, off: u64) -> u32 {
        self.read32(VFIO_PCI_CONFIG_REGION_INDEX, off)
    }

    pub(crate) fn cfg_write32(&self, off: u64, v: u32) {
        self.write32(VFIO_PCI_CONFIG_REGION_INDEX, off, v);
    }

    pub(crate) fn cfg_write16(&self, off: u64, v: u16) {
        self.handle
            .write(VFIO_PCI_CONFIG_REGION_INDEX, off, &v.to_le_bytes())
            .unwrap();
    }

    pub(crate) fn cfg_read16(&self, off: u64) -> u16 {
        let mut b = [0u8; 2];
        self.handle
            .read(VFIO_PCI_CONFIG_REGION_INDEX, off, &mut b)
            .unwrap();
        u16::from_le_bytes(b)
    }
}

impl User {
    pub(crate) fn irq_count(&self, index: u32) -> u32 {
        self.handle.irq_info(index).unwrap().count
    }
}

/// Migration, as a VMM drives it.
impl User {
    /// Reads the saving stream until EOF (STOP_COPY) or ENOMSG (PRE_COPY).
    pub(crate) fn drain(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = [0u8; 37];
        loop {
            match self.handle.mig_read(&mut buf) {
                Ok(0) => return out,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) if e == Errno::NOMSG => return out,
                Err(e) => panic!("mig_read: {e}"),
            }
        }
    }

    /// Source side: RUNNING → (PRE_COPY →) STOP_COPY, the whole stream.
    pub(crate) fn save(&self, precopy: bool) -> Vec<u8> {
        let mut stream = Vec::new();
        if precopy {
            self.handle.set_mig_state(MigState::PreCopy).unwrap();
            let (initial, _) = self.handle.precopy_info().unwrap();
            stream = self.drain();
            assert_eq!(stream.len() as u64, initial);
            assert_eq!(
                self.handle.mig_read(&mut [0u8; 8]).unwrap_err(),
                Errno::NOMSG,
                "PRE_COPY ends for now"
            );
        }
        self.handle.set_mig_state(MigState::StopCopy).unwrap();
        stream.extend(self.drain());
        stream
    }

    /// Destination side: RESUMING, write the stream, → RUNNING.
    pub(crate) fn resume(&self, stream: &[u8]) -> uvfio_core::Result<MigState> {
        self.handle.set_mig_state(MigState::Resuming).unwrap();
        for chunk in stream.chunks(50) {
            self.handle.mig_write(chunk).unwrap();
        }
        self.handle.set_mig_state(MigState::Running)
    }
}

/// Rewrites section `id` of a (valid) stream with `f`.
pub(crate) fn patch_section(stream: &[u8], id: u32, f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut w = StateWriter::new();
    w.bytes(&stream[..PCI_MIG_HEADER_LEN]);
    let mut f = Some(f);
    for s in parse_stream(stream).unwrap() {
        let mut p = s.payload.to_vec();
        if s.id == id {
            (f.take().unwrap())(&mut p);
        }
        w.u32(s.id).u32(p.len() as u32).bytes(&p);
    }
    assert!(f.is_none(), "no section {id}");
    w.u32(SECTION_END).u32(0);
    w.into_vec()
}
