//! Caps applied while decoding, so no peer value sizes an allocation or a
//! loop without a bound.

/// Default `max_data_xfer_size` (spec default, 1 MiB).
pub const DEFAULT_MAX_DATA_XFER_SIZE: u32 = 1 << 20;
/// Default cap on `msg_size`: 1 MiB of data plus 4 KiB of headroom for the
/// header, the fixed part of the payload and small trailers (libvfio-user
/// uses 1 MiB + 32; the extra room admits e.g. a 1 MiB dirty bitmap).
pub const DEFAULT_MAX_MSG_SIZE: u32 = DEFAULT_MAX_DATA_XFER_SIZE + 4096;
/// Default cap on fds with one message (our advertised `max_msg_fds`).
pub const DEFAULT_MAX_MSG_FDS: u32 = 16;
/// Largest `max_msg_fds` either side may advertise (libvfio-user's bound).
pub const MAX_MSG_FDS_LIMIT: u32 = 1024;

/// Bounds for the decoder. Start from [`DecodeLimits::default`] and, after
/// negotiation, use [`Negotiated::decode_limits`](super::Negotiated::decode_limits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest `msg_size` accepted (header included).
    pub max_msg_size: u32,
    /// Largest data transfer (`count`/`size`) accepted in REGION_READ/WRITE,
    /// DMA_READ/WRITE and MIG_DATA_READ/WRITE: the `max_data_xfer_size` we
    /// advertised.
    pub max_data_xfer_size: u32,
    /// Most fds accepted with one message: the `max_msg_fds` we advertised.
    pub max_fds: usize,
    /// Most capabilities in one region-info chain.
    pub max_region_caps: usize,
    /// Most areas in one SPARSE_MMAP capability.
    pub max_sparse_areas: u32,
    /// Most entries in a GET_REGION_IO_FDS reply.
    pub max_io_fd_entries: u32,
    /// Most entries in one REGION_WRITE_MULTI.
    pub max_write_multi_entries: u64,
    /// Most ranges in one DMA_LOGGING_START/STOP.
    pub max_dma_logging_ranges: u32,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_msg_size: DEFAULT_MAX_MSG_SIZE,
            max_data_xfer_size: DEFAULT_MAX_DATA_XFER_SIZE,
            max_fds: super::reader::usize_from(DEFAULT_MAX_MSG_FDS),
            max_region_caps: 16,
            max_sparse_areas: 1024,
            max_io_fd_entries: 1024,
            max_write_multi_entries: 1024,
            max_dma_logging_ranges: 4096,
        }
    }
}
