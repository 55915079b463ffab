//! Live migration and dirty logging, the client's side: typed wrappers of
//! DEVICE_FEATURE (MIGRATION, MIG_DEVICE_STATE, MIG_DATA_SIZE,
//! DMA_LOGGING_START/STOP/REPORT), MIG_DATA_READ and MIG_DATA_WRITE.
//!
//! Transfers larger than a message may carry (the smaller of both sides'
//! `max_data_xfer_size`) are split: stream reads and writes into chunks,
//! dirty reports into sub-ranges whose bitmaps fit (whole u64 words, so
//! the pieces concatenate). An error reply is [`ClientError::Server`] with
//! the server's errno, as for every other command.

use rustix::io::Errno;
use uvfio_core::MigFlags;

use super::{Client, ClientError, Result};
use crate::proto::{
    self, Command, DeviceFeature, DmaLoggingControl, DmaLoggingRange, DmaLoggingReport,
    FeatureData, FeatureOp, MigDataRead, MigDataWrite, MigState, Reply, Request,
};
use crate::session::migration::VFIO_DEVICE_FEATURE_MIG_DATA_SIZE;

/// DEVICE_FEATURE header bytes (argsz, flags).
const HDR: u32 = 8;

fn mismatch<T>(what: &'static str) -> Result<T> {
    Err(ClientError::UnexpectedReply {
        command: Command::DeviceFeature,
        what,
    })
}

impl Client {
    /// One DEVICE_FEATURE round trip; `on_reply` sees a reply for the same
    /// feature and operation.
    fn feature<T>(
        &self,
        f: DeviceFeature<'_>,
        on_reply: impl FnOnce(DeviceFeature<'_>) -> Result<T>,
    ) -> Result<T> {
        let (feature, op) = (f.feature, f.op);
        self.call(&Request::DeviceFeature(f), &[], |r, _| match r {
            Reply::DeviceFeature(d) if d.feature == feature && d.op == op => on_reply(d),
            Reply::DeviceFeature(_) => mismatch("feature or operation"),
            _ => Self::unexpected(Command::DeviceFeature),
        })
    }

    fn feature_get<T>(
        &self,
        feature: u16,
        data_len: u32,
        on_data: impl FnOnce(FeatureData<'_>) -> Result<T>,
    ) -> Result<T> {
        let req = DeviceFeature {
            argsz: HDR + data_len,
            feature,
            op: FeatureOp::Get,
            data: FeatureData::Empty,
        };
        self.feature(req, |d| on_data(d.data))
    }

    /// DEVICE_FEATURE PROBE: `Ok` if the server supports `feature` with
    /// GET (if `get`) and SET (if `set`); with neither, whether it knows
    /// the feature at all. Unsupported is an error reply: `ENOTTY` for an
    /// unknown feature, `EINVAL` for an unsupported operation.
    pub fn device_feature_probe(&self, feature: u16, get: bool, set: bool) -> Result<()> {
        let req = DeviceFeature {
            argsz: HDR,
            feature,
            op: FeatureOp::Probe { get, set },
            data: FeatureData::Raw(&[]),
        };
        self.feature(req, |_| Ok(()))
    }

    /// MIGRATION GET: what the device supports (STOP_COPY, PRE_COPY;
    /// vfio-user does not use P2P). `ENOTTY` without migration.
    pub fn migration_flags(&self) -> Result<MigFlags> {
        self.feature_get(proto::VFIO_DEVICE_FEATURE_MIGRATION, 8, |d| match d {
            FeatureData::Migration { flags } => Ok(MigFlags::from_bits_retain(flags)),
            _ => mismatch("migration data"),
        })
    }

    /// MIG_DEVICE_STATE GET.
    pub fn mig_state(&self) -> Result<MigState> {
        self.feature_get(
            proto::VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE,
            8,
            |d| match d {
                FeatureData::MigDeviceState { device_state, .. } => Ok(device_state),
                _ => mismatch("mig_device_state data"),
            },
        )
    }

    /// MIG_DEVICE_STATE SET: moves the device to `state` (through the
    /// kernel's path) before the reply. `EINVAL` for an impossible request
    /// (state unchanged); any other error may leave the device in ERROR.
    pub fn set_mig_state(&self, state: MigState) -> Result<()> {
        let req = DeviceFeature {
            argsz: HDR + 8,
            feature: proto::VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE,
            op: FeatureOp::Set,
            data: FeatureData::MigDeviceState {
                device_state: state,
                data_fd: u32::MAX,
            },
        };
        self.feature(req, |_| Ok(()))
    }

    /// MIG_DATA_SIZE GET (feature 9, as the kernel's): the bytes STOP_COPY
    /// is expected to produce.
    pub fn stop_copy_size(&self) -> Result<u64> {
        self.feature_get(VFIO_DEVICE_FEATURE_MIG_DATA_SIZE, 8, |d| match d {
            FeatureData::Raw(b) => b
                .try_into()
                .map(u64::from_le_bytes)
                .or_else(|_| mismatch("mig_data_size length")),
            _ => mismatch("mig_data_size data"),
        })
    }

    /// MIG_DATA_READ into `buf` (PRE_COPY, STOP_COPY), in as many messages
    /// as it takes. Returns the bytes read: fewer than `buf.len()` means
    /// the end of the stream (in PRE_COPY: for now; possibly 0).
    pub fn mig_read_into(&self, buf: &mut [u8]) -> Result<usize> {
        let chunk = self.chunk();
        let mut done = 0usize;
        while done < buf.len() {
            let n = (buf.len() - done).min(chunk);
            let size = u32::try_from(n).unwrap_or(u32::MAX);
            let req = Request::MigDataRead(MigDataRead {
                argsz: size.saturating_add(8),
                size,
            });
            let dst = &mut buf[done..done + n];
            let got = self.call(&req, &[], |r, _| match r {
                Reply::MigDataRead(d) if d.data.len() <= dst.len() => {
                    dst[..d.data.len()].copy_from_slice(d.data);
                    Ok(d.data.len())
                }
                Reply::MigDataRead(_) => Err(ClientError::UnexpectedReply {
                    command: Command::MigDataRead,
                    what: "more data than requested",
                }),
                _ => Self::unexpected(Command::MigDataRead),
            })?;
            done += got;
            if got < n {
                break;
            }
        }
        Ok(done)
    }

    /// MIG_DATA_READ of up to `max` bytes; a shorter result is the end of
    /// the stream (see [`Client::mig_read_into`]).
    pub fn mig_read(&self, max: usize) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; max];
        let n = self.mig_read_into(&mut buf)?;
        buf.truncate(n);
        Ok(buf)
    }

    /// MIG_DATA_WRITE of `data` (RESUMING only), in as many messages as it
    /// takes. The device validates the stream on RESUMING → STOP.
    pub fn mig_write(&self, data: &[u8]) -> Result<()> {
        for piece in data.chunks(self.chunk()) {
            let req = Request::MigDataWrite(MigDataWrite::new(piece));
            self.call(&req, &[], |r, _| match r {
                Reply::MigDataWrite => Ok(()),
                _ => Self::unexpected(Command::MigDataWrite),
            })?;
        }
        Ok(())
    }

    /// DMA_LOGGING_START: the server logs the pages its device writes, at
    /// `page_size` (a power of two ≥ 4096) for `ranges` (none: all of the
    /// IOVA space). Returns the page size in force (the reply's).
    pub fn start_dirty_logging(&self, page_size: u64, ranges: &[DmaLoggingRange]) -> Result<u64> {
        let argsz = usize::try_from(HDR + 16)
            .unwrap_or(usize::MAX)
            .saturating_add(ranges.len().saturating_mul(16));
        let req = DeviceFeature {
            argsz: u32::try_from(argsz).map_err(|_| ClientError::Local {
                what: "too many dirty logging ranges",
                errno: Errno::TOOBIG,
            })?,
            feature: proto::VFIO_DEVICE_FEATURE_DMA_LOGGING_START,
            op: FeatureOp::Set,
            data: FeatureData::DmaLogging(DmaLoggingControl {
                page_size,
                ranges: ranges.to_vec(),
            }),
        };
        self.feature(req, |d| match d.data {
            FeatureData::DmaLogging(c) if c.page_size.is_power_of_two() => Ok(c.page_size),
            _ => mismatch("dma_logging data"),
        })
    }

    /// DMA_LOGGING_STOP.
    pub fn stop_dirty_logging(&self) -> Result<()> {
        let req = DeviceFeature {
            argsz: HDR,
            feature: proto::VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP,
            op: FeatureOp::Set,
            data: FeatureData::Empty,
        };
        self.feature(req, |_| Ok(()))
    }

    /// DMA_LOGGING_REPORT of `iova..iova+length` at `page_size` (the
    /// logging page size): one bit per page, LSB first, in u64 words; the
    /// server clears what it reports. Split into several reports when the
    /// bitmap would not fit one message.
    pub fn report_dirty(&self, iova: u64, length: u64, page_size: u64) -> Result<Vec<u64>> {
        let local = |what| ClientError::Local {
            what,
            errno: Errno::INVAL,
        };
        if !page_size.is_power_of_two() {
            return Err(local("page size is not a power of two"));
        }
        let pages = length.div_ceil(page_size);
        let mut words = Vec::with_capacity(usize::try_from(pages.div_ceil(64)).unwrap_or(0));
        // Whole words per message.
        let words_per_msg = (self.chunk() / 8).max(1) as u64;
        let span_per_msg = words_per_msg.saturating_mul(64).saturating_mul(page_size);
        let mut at = iova;
        let mut left = length;
        while left > 0 {
            let len = left.min(span_per_msg);
            let want = DmaLoggingReport {
                iova: at,
                length: len,
                page_size,
                bitmap: &[],
            };
            let bitmap_len = want.bitmap_len().ok_or(local("bad report range"))?;
            let argsz = u64::from(HDR) + 24 + bitmap_len;
            let req = DeviceFeature {
                argsz: u32::try_from(argsz).map_err(|_| local("report too large"))?,
                feature: proto::VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT,
                op: FeatureOp::Get,
                data: FeatureData::DmaLoggingReport(want),
            };
            self.feature(req, |d| match d.data {
                FeatureData::DmaLoggingReport(r)
                    if r.iova == at
                        && r.length == len
                        && r.page_size == page_size
                        && r.bitmap.len() as u64 == bitmap_len =>
                {
                    words.extend(
                        r.bitmap
                            .chunks_exact(8)
                            .map(|w| u64::from_le_bytes(w.try_into().unwrap_or([0; 8]))),
                    );
                    Ok(())
                }
                _ => mismatch("dma_logging_report echo or bitmap"),
            })?;
            left -= len;
            if left > 0 {
                at = at.checked_add(len).ok_or(local("report range overflows"))?;
            }
        }
        Ok(words)
    }
}
