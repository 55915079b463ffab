//! One 16550-style port of the mtty sample, as a pure state machine.
//!
//! Register behaviour follows `samples/vfio-mdev/mtty.c` (see the module
//! doc of [`super`]); every access returns how many times the device
//! interrupt must fire, so the caller raises it outside the port's lock.
//!
//! Deliberate differences from the C sample, both fixing undefined or
//! broken corners rather than behaviour a guest relies on:
//! - emptiness is tracked by a count, so a full 16-byte FIFO reads as
//!   full (the sample's `head == tail` test makes it look empty);
//! - the FIFO starts enabled (depth 16, trigger level 1) and RX on an
//!   empty FIFO reads 0, where the sample starts zeroed and returns
//!   uninitialised stack.

/// RX (read) / TX (write); divisor low byte with DLAB.
pub const UART_RX: u8 = 0;
/// TX (write).
pub const UART_TX: u8 = 0;
/// Interrupt enable; divisor high byte with DLAB.
pub const UART_IER: u8 = 1;
/// Interrupt identification (read).
pub const UART_IIR: u8 = 2;
/// FIFO control (write).
pub const UART_FCR: u8 = 2;
/// Line control.
pub const UART_LCR: u8 = 3;
/// Modem control.
pub const UART_MCR: u8 = 4;
/// Line status.
pub const UART_LSR: u8 = 5;
/// Modem status.
pub const UART_MSR: u8 = 6;
/// Scratch.
pub const UART_SCR: u8 = 7;

/// IER: received data available.
pub const UART_IER_RDI: u8 = 0x01;
/// IER: transmitter holding register empty.
pub const UART_IER_THRI: u8 = 0x02;
/// IER: receiver line status.
pub const UART_IER_RLSI: u8 = 0x04;
/// IER: modem status.
pub const UART_IER_MSI: u8 = 0x08;

/// IIR: no interrupt pending.
pub const UART_IIR_NO_INT: u8 = 0x01;
/// IIR: modem status (0: ORing it changes nothing, as in the sample).
pub const UART_IIR_MSI: u8 = 0x00;
/// IIR: transmitter holding register empty.
pub const UART_IIR_THRI: u8 = 0x02;
/// IIR: received data available.
pub const UART_IIR_RDI: u8 = 0x04;
/// IIR: receiver line status.
pub const UART_IIR_RLSI: u8 = 0x06;

/// FCR: enable FIFO.
pub const UART_FCR_ENABLE_FIFO: u8 = 0x01;
/// FCR: clear receive FIFO.
pub const UART_FCR_CLEAR_RCVR: u8 = 0x02;
/// FCR: clear transmit FIFO.
pub const UART_FCR_CLEAR_XMIT: u8 = 0x04;
/// FCR: trigger level bits.
pub const UART_FCR_TRIGGER_MASK: u8 = 0xc0;

/// LCR: divisor latch access.
pub const UART_LCR_DLAB: u8 = 0x80;

/// MCR: DTR.
pub const UART_MCR_DTR: u8 = 0x01;
/// MCR: RTS.
pub const UART_MCR_RTS: u8 = 0x02;
/// MCR: OUT2.
pub const UART_MCR_OUT2: u8 = 0x08;
/// MCR: auto flow control.
pub const UART_MCR_AFE: u8 = 0x20;

/// LSR: data ready.
pub const UART_LSR_DR: u8 = 0x01;
/// LSR: overrun error.
pub const UART_LSR_OE: u8 = 0x02;
/// LSR: transmit holding register empty.
pub const UART_LSR_THRE: u8 = 0x20;
/// LSR: transmitter empty.
pub const UART_LSR_TEMT: u8 = 0x40;

/// MSR: delta CTS.
pub const UART_MSR_DCTS: u8 = 0x01;
/// MSR: delta DSR.
pub const UART_MSR_DDSR: u8 = 0x02;
/// MSR: CTS.
pub const UART_MSR_CTS: u8 = 0x10;
/// MSR: DSR.
pub const UART_MSR_DSR: u8 = 0x20;
/// MSR: DCD.
pub const UART_MSR_DCD: u8 = 0x80;

/// Depth of the loopback FIFO.
pub const MAX_FIFO_SIZE: usize = 16;

/// Bytes of one port's migration record ([`Uart::to_bytes`]):
///
/// ```text
///  0  regs[8]      IER, LCR, MCR, SCR as stored (others unused)
///  8  fifo[16]     the ring
/// 24  head         u8, < 16
/// 25  count        u8, ≤ 16
/// 26  fifo depth   u8, 1 or 16
/// 27  trigger      u8, 1..=16
/// 28  overrun      u8 bool
/// 29  dlab         u8 bool, must match LCR bit 7
/// 30  fcr          u8, last FCR write
/// 31  0
/// 32  divisor      u16
/// 34  0, 0
/// ```
pub const UART_STATE_LEN: usize = 36;

/// One UART port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uart {
    regs: [u8; 8],
    fifo: [u8; MAX_FIFO_SIZE],
    head: usize,
    count: usize,
    max_fifo_size: usize,
    trigger_level: usize,
    overrun: bool,
    dlab: bool,
    divisor: u16,
    fcr: u8,
}

impl Default for Uart {
    fn default() -> Self {
        Uart {
            regs: [0; 8],
            fifo: [0; MAX_FIFO_SIZE],
            head: 0,
            count: 0,
            max_fifo_size: MAX_FIFO_SIZE,
            trigger_level: 1,
            overrun: false,
            dlab: false,
            divisor: 0,
            fcr: 0,
        }
    }
}

impl Uart {
    fn ier(&self) -> u8 {
        self.regs[usize::from(UART_IER)]
    }

    fn empty(&self) -> bool {
        self.count == 0
    }

    fn clear_fifo(&mut self) {
        self.head = 0;
        self.count = 0;
    }

    /// Bytes waiting in the FIFO.
    pub fn fifo_len(&self) -> usize {
        self.count
    }

    /// The divisor latch.
    pub fn divisor(&self) -> u16 {
        self.divisor
    }

    /// The port's complete state, for migration (layout at
    /// [`UART_STATE_LEN`]).
    pub fn to_bytes(&self) -> [u8; UART_STATE_LEN] {
        let mut b = [0u8; UART_STATE_LEN];
        b[..8].copy_from_slice(&self.regs);
        b[8..24].copy_from_slice(&self.fifo);
        // All four are at most MAX_FIFO_SIZE (16).
        b[24] = self.head as u8;
        b[25] = self.count as u8;
        b[26] = self.max_fifo_size as u8;
        b[27] = self.trigger_level as u8;
        b[28] = u8::from(self.overrun);
        b[29] = u8::from(self.dlab);
        b[30] = self.fcr;
        b[32..34].copy_from_slice(&self.divisor.to_le_bytes());
        b
    }

    /// A port from [`Uart::to_bytes`]; `None` if the record is not one a
    /// port can be in (wrong length, indexes out of range, bad bools,
    /// DLAB disagreeing with LCR, reserved bytes set).
    pub fn from_bytes(b: &[u8]) -> Option<Uart> {
        let b: &[u8; UART_STATE_LEN] = b.try_into().ok()?;
        let bool_at = |i: usize| match b[i] {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        };
        let (head, count) = (usize::from(b[24]), usize::from(b[25]));
        let (max_fifo_size, trigger_level) = (usize::from(b[26]), usize::from(b[27]));
        let mut regs = [0u8; 8];
        regs.copy_from_slice(&b[..8]);
        let mut fifo = [0u8; MAX_FIFO_SIZE];
        fifo.copy_from_slice(&b[8..24]);
        let u = Uart {
            regs,
            fifo,
            head,
            count,
            max_fifo_size,
            trigger_level,
            overrun: bool_at(28)?,
            dlab: bool_at(29)?,
            divisor: u16::from_le_bytes([b[32], b[33]]),
            fcr: b[30],
        };
        let ok = head < MAX_FIFO_SIZE
            && count <= MAX_FIFO_SIZE
            && matches!(max_fifo_size, 1 | MAX_FIFO_SIZE)
            && (1..=MAX_FIFO_SIZE).contains(&trigger_level)
            && u.dlab == (regs[usize::from(UART_LCR)] & UART_LCR_DLAB != 0)
            && b[31] == 0
            && b[34..] == [0, 0];
        ok.then_some(u)
    }

    /// A guest write of `data` to register `reg` (0–7); returns the
    /// number of interrupts to fire.
    pub fn write(&mut self, reg: u8, data: u8) -> u32 {
        match reg {
            UART_TX => {
                if self.dlab {
                    self.divisor |= u16::from(data);
                    return 0;
                }
                if self.count < self.max_fifo_size {
                    let tail = (self.head + self.count) % MAX_FIFO_SIZE;
                    self.fifo[tail] = data;
                    self.count += 1;
                    self.overrun = false;
                    u32::from(self.ier() & UART_IER_RDI != 0 && self.count == self.trigger_level)
                } else {
                    self.overrun = true;
                    u32::from(self.ier() & UART_IER_RLSI != 0)
                }
            }
            UART_IER => {
                if self.dlab {
                    self.divisor |= u16::from(data) << 8;
                    return 0;
                }
                self.regs[usize::from(UART_IER)] = data;
                u32::from(data & UART_IER_THRI != 0 && self.empty())
            }
            UART_FCR => {
                self.fcr = data;
                if data & (UART_FCR_CLEAR_RCVR | UART_FCR_CLEAR_XMIT) != 0 {
                    self.clear_fifo();
                }
                // The sample parses the level (1/4/8/14), then forces 1: it
                // has no character timeout to flush a partial level.
                let parsed = match data & UART_FCR_TRIGGER_MASK {
                    0x00 => 1,
                    0x40 => 4,
                    0x80 => 8,
                    _ => 14,
                };
                tracing::trace!(parsed, "FCR trigger level forced to 1");
                self.trigger_level = 1;
                self.max_fifo_size = if data & UART_FCR_ENABLE_FIFO != 0 {
                    MAX_FIFO_SIZE
                } else {
                    1
                };
                0
            }
            UART_LCR => {
                self.dlab = data & UART_LCR_DLAB != 0;
                if self.dlab {
                    self.divisor = 0;
                }
                self.regs[usize::from(UART_LCR)] = data;
                0
            }
            UART_MCR => {
                self.regs[usize::from(UART_MCR)] = data;
                let msi = self.ier() & UART_IER_MSI != 0;
                u32::from(msi && data & UART_MCR_OUT2 != 0)
                    + u32::from(msi && data & (UART_MCR_RTS | UART_MCR_DTR) != 0)
            }
            UART_SCR => {
                self.regs[usize::from(UART_SCR)] = data;
                0
            }
            // LSR and MSR writes are ignored.
            _ => 0,
        }
    }

    /// A guest read of register `reg` (0–7); returns the value and the
    /// number of interrupts to fire.
    pub fn read(&mut self, reg: u8) -> (u8, u32) {
        match reg {
            UART_RX => {
                if self.dlab {
                    return (self.divisor as u8, 0);
                }
                let mut v = 0;
                if !self.empty() {
                    v = self.fifo[self.head];
                    self.head = (self.head + 1) % MAX_FIFO_SIZE;
                    self.count -= 1;
                }
                let fire = self.empty() && self.ier() & UART_IER_THRI != 0;
                (v, u32::from(fire))
            }
            UART_IER => {
                if self.dlab {
                    return ((self.divisor >> 8) as u8, 0);
                }
                (self.ier() & 0x0f, 0)
            }
            UART_IIR => {
                let ier = self.ier();
                let mut v = 0;
                if ier & UART_IER_RLSI != 0 && self.overrun {
                    v |= UART_IIR_RLSI;
                }
                if ier & UART_IER_RDI != 0 && self.count >= self.trigger_level {
                    v |= UART_IIR_RDI;
                }
                if ier & UART_IER_THRI != 0 && self.empty() {
                    v |= UART_IIR_THRI;
                }
                if ier & UART_IER_MSI != 0
                    && self.regs[usize::from(UART_MCR)] & (UART_MCR_RTS | UART_MCR_DTR) != 0
                {
                    v |= UART_IIR_MSI;
                }
                if v == 0 {
                    v = UART_IIR_NO_INT;
                }
                (v | 0xc0, 0)
            }
            UART_LCR | UART_MCR | UART_SCR => (self.regs[usize::from(reg)], 0),
            UART_LSR => {
                let mut lsr = 0;
                if !self.empty() {
                    lsr |= UART_LSR_DR;
                }
                if self.overrun {
                    lsr |= UART_LSR_OE;
                }
                if self.empty() {
                    lsr |= UART_LSR_TEMT | UART_LSR_THRE;
                }
                (lsr, 0)
            }
            UART_MSR => {
                let mut msr = UART_MSR_DSR | UART_MSR_DDSR | UART_MSR_DCD;
                let afe = self.regs[usize::from(UART_MCR)] & UART_MCR_AFE != 0;
                if !afe || self.count < self.max_fifo_size {
                    msr |= UART_MSR_CTS | UART_MSR_DCTS;
                }
                (msr, 0)
            }
            _ => (0, 0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_bad_records_are_refused() {
        let mut u = Uart::default();
        u.write(UART_LCR, UART_LCR_DLAB | 3);
        u.write(UART_TX, 0x0c);
        u.write(UART_LCR, 3);
        u.write(UART_IER, UART_IER_RDI | UART_IER_RLSI);
        for i in 0..18 {
            u.write(UART_TX, i);
        }
        u.read(UART_RX);
        let b = u.to_bytes();
        assert_eq!(Uart::from_bytes(&b), Some(u.clone()));
        assert_eq!(Uart::from_bytes(&b[..35]), None);
        for (at, v) in [
            (24, 16),
            (25, 17),
            (26, 8),
            (27, 0),
            (28, 2),
            (29, 1),
            (31, 1),
        ] {
            let mut bad = b;
            bad[at] = v;
            assert_eq!(Uart::from_bytes(&bad), None, "byte {at} = {v}");
        }
    }

    #[test]
    fn tx_then_rx_loops_bytes_back_in_order() {
        let mut u = Uart::default();
        for b in b"hi" {
            u.write(UART_TX, *b);
        }
        assert_eq!(u.read(UART_RX).0, b'h');
        assert_eq!(u.read(UART_RX).0, b'i');
        assert_eq!(u.read(UART_RX).0, 0);
    }

    #[test]
    fn tx_at_trigger_level_with_rdi_fires_once() {
        let mut u = Uart::default();
        u.write(UART_IER, UART_IER_RDI);
        assert_eq!(u.write(UART_TX, 1), 1);
        assert_eq!(u.write(UART_TX, 2), 0);
    }

    #[test]
    fn tx_into_full_fifo_sets_overrun_and_fires_rlsi() {
        let mut u = Uart::default();
        u.write(UART_IER, UART_IER_RLSI);
        for i in 0..16 {
            assert_eq!(u.write(UART_TX, i), 0);
        }
        assert_eq!(u.write(UART_TX, 99), 1);
        assert_eq!(u.read(UART_LSR).0, UART_LSR_DR | UART_LSR_OE);
        assert_eq!(u.read(UART_IIR).0, 0xc0 | UART_IIR_RLSI);
        assert_eq!(u.fifo_len(), 16);
    }

    #[test]
    fn fifo_disabled_depth_is_one() {
        let mut u = Uart::default();
        u.write(UART_FCR, 0);
        u.write(UART_TX, 1);
        u.write(UART_TX, 2);
        assert_eq!(u.read(UART_LSR).0 & UART_LSR_OE, UART_LSR_OE);
        assert_eq!(u.fifo_len(), 1);
    }

    #[test]
    fn fcr_trigger_14_is_forced_to_1() {
        let mut u = Uart::default();
        u.write(UART_FCR, UART_FCR_ENABLE_FIFO | 0xc0);
        u.write(UART_IER, UART_IER_RDI);
        assert_eq!(u.write(UART_TX, 1), 1);
        assert_eq!(u.read(UART_IIR).0, 0xc0 | UART_IIR_RDI);
    }

    #[test]
    fn fcr_clear_empties_fifo() {
        let mut u = Uart::default();
        u.write(UART_TX, 1);
        u.write(UART_FCR, UART_FCR_ENABLE_FIFO | UART_FCR_CLEAR_RCVR);
        assert_eq!(u.read(UART_LSR).0, UART_LSR_THRE | UART_LSR_TEMT);
    }

    #[test]
    fn rx_emptying_fifo_with_thri_fires() {
        let mut u = Uart::default();
        u.write(UART_TX, 7);
        u.write(UART_IER, UART_IER_THRI);
        assert_eq!(u.read(UART_RX), (7, 1));
    }

    #[test]
    fn ier_write_thri_on_empty_fifo_fires_and_reads_low_nibble() {
        let mut u = Uart::default();
        assert_eq!(u.write(UART_IER, 0xf2), 1);
        assert_eq!(u.read(UART_IER).0, 0x02);
    }

    #[test]
    fn dlab_redirects_rx_and_ier_to_divisor() {
        let mut u = Uart::default();
        u.write(UART_LCR, UART_LCR_DLAB | 0x03);
        u.write(UART_TX, 0x0c);
        u.write(UART_IER, 0x01);
        assert_eq!(u.divisor(), 0x010c);
        assert_eq!(u.read(UART_RX).0, 0x0c);
        assert_eq!(u.read(UART_IER).0, 0x01);
        assert_eq!(u.fifo_len(), 0);
        u.write(UART_LCR, 0x03);
        assert_eq!(u.read(UART_LCR).0, 0x03);
    }

    #[test]
    fn dlab_set_clears_divisor() {
        let mut u = Uart::default();
        u.write(UART_LCR, UART_LCR_DLAB);
        u.write(UART_TX, 0x55);
        u.write(UART_LCR, UART_LCR_DLAB);
        assert_eq!(u.divisor(), 0);
    }

    #[test]
    fn mcr_out2_and_rts_with_msi_fires_twice() {
        let mut u = Uart::default();
        u.write(UART_IER, UART_IER_MSI);
        assert_eq!(u.write(UART_MCR, UART_MCR_OUT2 | UART_MCR_RTS), 2);
        assert_eq!(u.read(UART_MCR).0, UART_MCR_OUT2 | UART_MCR_RTS);
    }

    #[test]
    fn iir_nothing_pending_reads_no_int_with_fifo_bits() {
        let mut u = Uart::default();
        assert_eq!(u.read(UART_IIR).0, 0xc1);
        u.write(UART_IER, UART_IER_MSI);
        u.write(UART_MCR, UART_MCR_DTR);
        assert_eq!(u.read(UART_IIR).0, 0xc1, "IIR_MSI is 0 in the sample");
    }

    #[test]
    fn msr_afe_with_full_fifo_drops_cts() {
        let mut u = Uart::default();
        assert_eq!(u.read(UART_MSR).0, 0xb3);
        u.write(UART_MCR, UART_MCR_AFE);
        for i in 0..16 {
            u.write(UART_TX, i);
        }
        assert_eq!(u.read(UART_MSR).0, 0xa2);
    }

    #[test]
    fn lsr_msr_writes_ignored_scr_stored() {
        let mut u = Uart::default();
        u.write(UART_LSR, 0xff);
        u.write(UART_SCR, 0x5a);
        assert_eq!(u.read(UART_LSR).0, UART_LSR_THRE | UART_LSR_TEMT);
        assert_eq!(u.read(UART_SCR).0, 0x5a);
    }
}
