//! RFC 6455 framing, server side: decode masked client frame heads, encode
//! unmasked server frames once so every receiver shares the same bytes.

use bytes::{BufMut, Bytes, BytesMut};

use super::close::{self, Close};

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// The fixed part of a client frame: everything before the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub fin: bool,
    pub opcode: u8,
    pub mask: [u8; 4],
    /// Payload length.
    pub len: u64,
    /// Bytes taken by the head itself (2..=14).
    pub head_len: usize,
}

impl Head {
    pub fn is_control(&self) -> bool {
        self.opcode & 0x8 != 0
    }
}

/// Decodes a client frame head. `Ok(None)` means more bytes are needed.
///
/// A length not in its shortest form (RFC 6455 §5.2: "the minimal number of
/// bytes MUST be used") is refused with 1002 rather than tolerated: no
/// conforming client sends one, and accepting several spellings of one frame
/// only helps traffic that wants to look different to a filter than to us.
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>, Close> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    if b0 & 0x70 != 0 {
        return Err(close::RESERVED_BITS);
    }
    let opcode = b0 & 0x0F;
    if !matches!(
        opcode,
        OP_CONTINUATION | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG
    ) {
        return Err(close::BAD_OPCODE);
    }
    let fin = b0 & 0x80 != 0;
    if b1 & 0x80 == 0 {
        return Err(close::UNMASKED);
    }
    let (len, at) = match b1 & 0x7F {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            let l = u16::from_be_bytes([buf[2], buf[3]]) as u64;
            if l < 126 {
                return Err(close::NON_MINIMAL_LENGTH);
            }
            (l, 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let l = u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes"));
            if l >> 63 != 0 {
                return Err(close::BAD_LENGTH);
            }
            if l <= 0xFFFF {
                return Err(close::NON_MINIMAL_LENGTH);
            }
            (l, 10)
        }
        l => (l as u64, 2),
    };
    if opcode & 0x8 != 0 && (len > 125 || !fin) {
        return Err(close::BAD_CONTROL);
    }
    if buf.len() < at + 4 {
        return Ok(None);
    }
    let mask = buf[at..at + 4].try_into().expect("4 bytes");
    Ok(Some(Head {
        fin,
        opcode,
        mask,
        len,
        head_len: at + 4,
    }))
}

/// XORs `data` in place with `mask`, where `data` starts `offset` bytes into the payload.
pub fn unmask(data: &mut [u8], mask: [u8; 4], offset: usize) {
    let mut m = mask;
    m.rotate_left(offset % 4);
    let m64 = u64::from_ne_bytes([m[0], m[1], m[2], m[3], m[0], m[1], m[2], m[3]]);
    let mut chunks = data.chunks_exact_mut(8);
    for c in &mut chunks {
        let v = u64::from_ne_bytes((&*c).try_into().expect("8 bytes")) ^ m64;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= m[i % 4];
    }
}

/// Length of an unmasked server frame head for a payload of `len` bytes.
pub fn head_len(len: usize) -> usize {
    match len {
        0..=125 => 2,
        126..=65535 => 4,
        _ => 10,
    }
}

fn put_head(out: &mut BytesMut, opcode: u8, len: usize) {
    out.put_u8(0x80 | opcode);
    match len {
        0..=125 => out.put_u8(len as u8),
        126..=65535 => {
            out.put_u8(126);
            out.put_u16(len as u16);
        }
        _ => {
            out.put_u8(127);
            out.put_u64(len as u64);
        }
    }
}

/// Encodes a complete server frame (FIN set, unmasked) around `payload`.
pub fn encode(opcode: u8, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(head_len(payload.len()) + payload.len());
    put_head(&mut out, opcode, payload.len());
    out.put_slice(payload);
    out.freeze()
}

/// Encodes a server frame from a client's still-masked payload, unmasking it
/// while copying: one right-sized allocation, the only copy a relayed frame gets.
pub fn encode_unmasking(opcode: u8, masked: &[u8], mask: [u8; 4]) -> Bytes {
    let mut out = BytesMut::with_capacity(head_len(masked.len()) + masked.len());
    put_head(&mut out, opcode, masked.len());
    let start = out.len();
    out.put_slice(masked);
    unmask(&mut out[start..], mask, 0);
    out.freeze()
}

/// Encodes a Close frame with `code` and `reason`.
pub fn encode_close(c: Close) -> Bytes {
    let mut p = Vec::with_capacity(2 + c.reason.len());
    p.extend_from_slice(&c.code.to_be_bytes());
    p.extend_from_slice(c.reason.as_bytes());
    encode(OP_CLOSE, &p)
}

/// Where the payload of an encoded server frame starts.
pub fn payload_of(frame: &[u8]) -> &[u8] {
    let at = match frame.get(1).map(|b| b & 0x7F) {
        Some(126) => 4,
        Some(127) => 10,
        _ => 2,
    };
    &frame[at.min(frame.len())..]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_frame(b0: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut v = vec![b0];
        match payload.len() {
            0..=125 => v.push(0x80 | payload.len() as u8),
            126..=65535 => {
                v.push(0x80 | 126);
                v.extend_from_slice(&(payload.len() as u16).to_be_bytes());
            }
            _ => {
                v.push(0x80 | 127);
                v.extend_from_slice(&(payload.len() as u64).to_be_bytes());
            }
        }
        v.extend_from_slice(&mask);
        v.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        v
    }

    #[test]
    fn decode_then_reencode_roundtrips_all_length_forms() {
        for len in [0usize, 5, 125, 126, 65535, 65536, 70000] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let mask = [0x12, 0x34, 0x56, 0x78];
            let f = client_frame(0x82, &payload, mask);
            for cut in [0, 1, 2, 3, 5, 9, 13] {
                if cut < f.len() && cut < 6 {
                    assert_eq!(parse_head(&f[..cut]), Ok(None), "len {len} cut {cut}");
                }
            }
            let h = parse_head(&f).unwrap().unwrap();
            assert_eq!((h.fin, h.opcode, h.len), (true, OP_BINARY, len as u64));
            let out = encode_unmasking(h.opcode, &f[h.head_len..], h.mask);
            assert_eq!(payload_of(&out), &payload[..]);
            assert_eq!(out, encode(OP_BINARY, &payload));
        }
    }

    #[test]
    fn unmask_at_any_offset_matches_bytewise() {
        let mask = [1, 2, 3, 4];
        let orig: Vec<u8> = (0..37u8).collect();
        for off in 0..4 {
            let mut a = orig.clone();
            unmask(&mut a, mask, off);
            let b: Vec<u8> = orig
                .iter()
                .enumerate()
                .map(|(i, x)| x ^ mask[(i + off) % 4])
                .collect();
            assert_eq!(a, b);
        }
    }

    #[test]
    fn framing_violations() {
        assert_eq!(parse_head(&[0x81, 0x05]), Err(close::UNMASKED));
        assert_eq!(parse_head(&[0xC1, 0x80]), Err(close::RESERVED_BITS));
        assert_eq!(parse_head(&[0x83, 0x80]), Err(close::BAD_OPCODE));
        assert_eq!(
            parse_head(&[0x89, 0x80 | 126, 0, 200]),
            Err(close::BAD_CONTROL)
        );
        assert_eq!(parse_head(&[0x09, 0x80]), Err(close::BAD_CONTROL));
        let mut big = vec![0x82, 0xFF];
        big.extend_from_slice(&u64::MAX.to_be_bytes());
        assert_eq!(parse_head(&big), Err(close::BAD_LENGTH));
    }

    #[test]
    fn lengths_must_use_the_shortest_form() {
        // 5 bytes spelt with the 16-bit and the 64-bit form.
        assert_eq!(
            parse_head(&[0x82, 0x80 | 126, 0, 5, 1, 2, 3, 4]),
            Err(close::NON_MINIMAL_LENGTH)
        );
        let mut f = vec![0x82, 0x80 | 127];
        f.extend_from_slice(&5u64.to_be_bytes());
        assert_eq!(parse_head(&f), Err(close::NON_MINIMAL_LENGTH));
        // 65535 fits 16 bits, so the 64-bit form is refused too ...
        let mut f = vec![0x82, 0x80 | 127];
        f.extend_from_slice(&65535u64.to_be_bytes());
        assert_eq!(parse_head(&f), Err(close::NON_MINIMAL_LENGTH));
        // ... while the boundaries in their own forms are fine.
        let h = parse_head(&[0x82, 0x80 | 126, 0, 126, 1, 2, 3, 4]).unwrap();
        assert_eq!(h.map(|h| h.len), Some(126));
        let mut f = vec![0x82, 0x80 | 127];
        f.extend_from_slice(&65536u64.to_be_bytes());
        f.extend_from_slice(&[1, 2, 3, 4]);
        assert_eq!(parse_head(&f).unwrap().map(|h| h.len), Some(65536));
    }

    #[test]
    fn close_frame_encoding() {
        let f = encode_close(close::SLOW_CONSUMER);
        assert_eq!(f[0], 0x88);
        assert_eq!(&payload_of(&f)[..2], &1013u16.to_be_bytes());
    }
}
