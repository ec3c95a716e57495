//! The measurement payload every publisher sends: a magic, the publisher id,
//! a per-publisher sequence number and the send time, then filler up to the
//! requested size. Little-endian, fixed offsets, no allocation.

/// Marks a harness payload (and its layout version).
pub const MAGIC: [u8; 4] = *b"MLT1";
/// Bytes of the stamp; the smallest payload the harness sends.
pub const STAMP_LEN: usize = 24;

/// What a payload says about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// Global publisher id.
    pub publisher: u32,
    /// Sequence number, from 0, per publisher.
    pub seq: u64,
    /// Send time on the process clock ([`crate::clock::now_ns`]).
    pub sent_ns: u64,
}

/// A payload buffer of `size` bytes (at least [`STAMP_LEN`]) with filler.
pub fn new_buffer(size: usize) -> Vec<u8> {
    vec![b'.'; size.max(STAMP_LEN)]
}

/// Writes the stamp into the first [`STAMP_LEN`] bytes of `buf`.
#[inline]
pub fn write(buf: &mut [u8], stamp: Stamp) {
    buf[..4].copy_from_slice(&MAGIC);
    buf[4..8].copy_from_slice(&stamp.publisher.to_le_bytes());
    buf[8..16].copy_from_slice(&stamp.seq.to_le_bytes());
    buf[16..24].copy_from_slice(&stamp.sent_ns.to_le_bytes());
}

/// Reads a stamp; `None` when the bytes are not a harness payload.
#[inline]
pub fn read(buf: &[u8]) -> Option<Stamp> {
    if buf.len() < STAMP_LEN || buf[..4] != MAGIC {
        return None;
    }
    Some(Stamp {
        publisher: u32::from_le_bytes(buf[4..8].try_into().expect("4 bytes")),
        seq: u64::from_le_bytes(buf[8..16].try_into().expect("8 bytes")),
        sent_ns: u64::from_le_bytes(buf[16..24].try_into().expect("8 bytes")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejects_foreign() {
        let mut b = new_buffer(64);
        let s = Stamp {
            publisher: 7,
            seq: 1 << 40,
            sent_ns: 123,
        };
        write(&mut b, s);
        assert_eq!(b.len(), 64);
        assert_eq!(read(&b), Some(s));
        assert_eq!(read(&b[..23]), None);
        assert_eq!(read(b"{\"uid\":\"a\",\"channel\":\"b\"}"), None);
        assert_eq!(new_buffer(3).len(), STAMP_LEN);
    }
}
