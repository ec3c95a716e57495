//! RFC 6455 framing for the client side, sans-IO.
//!
//! Owns header parsing of server frames, masked encoding of client frames and
//! [`FrameBuf`], the read buffer that many frames are parsed from per read
//! syscall without allocating. It does no I/O and knows nothing of Mles.

use std::fmt;
use std::ops::Range;

/// Continuation frame.
pub const OP_CONT: u8 = 0x0;
/// Text data frame.
pub const OP_TEXT: u8 = 0x1;
/// Binary data frame.
pub const OP_BINARY: u8 = 0x2;
/// Close control frame.
pub const OP_CLOSE: u8 = 0x8;
/// Ping control frame.
pub const OP_PING: u8 = 0x9;
/// Pong control frame.
pub const OP_PONG: u8 = 0xA;

/// Largest frame the harness accepts (the Mles default cap is 1 MiB; this
/// leaves room for servers configured higher while bounding the buffer).
pub const MAX_FRAME: usize = 64 << 20;

/// A framing violation by the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// RSV1..3 set although no extension was negotiated.
    ReservedBits,
    /// An opcode RFC 6455 does not define.
    UnknownOpcode(u8),
    /// A control frame with FIN unset.
    FragmentedControl,
    /// A control frame with more than 125 bytes of payload.
    ControlTooLong,
    /// A 64-bit length with the most significant bit set.
    BadLength,
    /// A frame larger than [`MAX_FRAME`].
    TooLarge(u64),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ReservedBits => write!(f, "reserved bits set"),
            Self::UnknownOpcode(op) => write!(f, "unknown opcode {op:#x}"),
            Self::FragmentedControl => write!(f, "fragmented control frame"),
            Self::ControlTooLong => write!(f, "control frame over 125 bytes"),
            Self::BadLength => write!(f, "64-bit length with the top bit set"),
            Self::TooLarge(n) => write!(f, "frame of {n} bytes over the harness limit"),
        }
    }
}

impl std::error::Error for FrameError {}

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// FIN bit.
    pub fin: bool,
    /// Opcode (low four bits of the first byte).
    pub opcode: u8,
    /// Masking key, when the MASK bit is set.
    pub mask: Option<[u8; 4]>,
    /// Bytes of header before the payload.
    pub header_len: usize,
    /// Bytes of payload.
    pub payload_len: usize,
}

/// Parses one frame header from the start of `buf`. `Ok(None)`: need more bytes.
pub fn parse_header(buf: &[u8]) -> Result<Option<Header>, FrameError> {
    let [b0, b1, ..] = *buf else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 {
        return Err(FrameError::ReservedBits);
    }
    let fin = b0 & 0x80 != 0;
    let opcode = b0 & 0x0f;
    match opcode {
        OP_CONT | OP_TEXT | OP_BINARY => {}
        OP_CLOSE | OP_PING | OP_PONG => {
            if !fin {
                return Err(FrameError::FragmentedControl);
            }
        }
        other => return Err(FrameError::UnknownOpcode(other)),
    }
    let (len, mut pos) = match b1 & 0x7f {
        126 => {
            let Some(b) = buf.get(2..4) else {
                return Ok(None);
            };
            (u64::from(u16::from_be_bytes([b[0], b[1]])), 4)
        }
        127 => {
            let Some(b) = buf.get(2..10) else {
                return Ok(None);
            };
            let len = u64::from_be_bytes(b.try_into().expect("slice of 8"));
            if len >> 63 != 0 {
                return Err(FrameError::BadLength);
            }
            (len, 10)
        }
        n => (u64::from(n), 2),
    };
    if opcode >= OP_CLOSE && len > 125 {
        return Err(FrameError::ControlTooLong);
    }
    if len > MAX_FRAME as u64 {
        return Err(FrameError::TooLarge(len));
    }
    let mask = if b1 & 0x80 != 0 {
        let Some(m) = buf.get(pos..pos + 4) else {
            return Ok(None);
        };
        pos += 4;
        Some([m[0], m[1], m[2], m[3]])
    } else {
        None
    };
    Ok(Some(Header {
        fin,
        opcode,
        mask,
        header_len: pos,
        payload_len: len as usize,
    }))
}

/// XORs `data` with the repeating 4-byte `mask`, eight bytes at a time.
#[inline]
pub fn apply_mask(data: &mut [u8], mask: [u8; 4]) {
    let wide = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = data.chunks_exact_mut(8);
    for c in &mut chunks {
        let v = u64::from_ne_bytes((&*c).try_into().expect("chunk of 8")) ^ wide;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    // A chunk of 8 keeps the mask phase, so the remainder starts at phase 0.
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// Appends one complete (FIN) client frame, masked with `mask`, to `out`.
#[inline]
pub fn encode(out: &mut Vec<u8>, opcode: u8, payload: &[u8], mask: [u8; 4]) {
    let len = payload.len();
    out.push(0x80 | opcode);
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= 0xffff {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    let start = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[start..], mask);
}

/// A complete frame inside a [`FrameBuf`]; the payload is a range into it,
/// valid until the buffer is next written to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// FIN bit.
    pub fin: bool,
    /// Opcode.
    pub opcode: u8,
    /// Masking key, when the peer masked (servers must not).
    pub mask: Option<[u8; 4]>,
    /// Where the payload lies in the buffer.
    pub payload: Range<usize>,
}

/// A read buffer: read into [`FrameBuf::space`], then take frames with
/// [`FrameBuf::next_frame`] until it says it needs more bytes.
///
/// It grows only when one frame is larger than the buffer, and compacts
/// (moves the unparsed tail to the front) when the free tail gets short.
#[derive(Debug)]
pub struct FrameBuf {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Total bytes the pending (partial) frame needs, 0 when unknown.
    need: usize,
}

impl FrameBuf {
    /// A buffer of `capacity` bytes (at least 256).
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            buf: vec![0; capacity.max(256)],
            start: 0,
            end: 0,
            need: 0,
        }
    }

    /// Current size of the backing buffer.
    pub fn capacity(&self) -> usize {
        self.buf.len()
    }

    /// Unparsed bytes.
    pub fn data(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Drops `n` unparsed bytes from the front (used after the HTTP response).
    pub fn consume(&mut self, n: usize) {
        assert!(n <= self.end - self.start, "consume past the data");
        self.start += n;
    }

    /// Free space to read into; never empty.
    pub fn space(&mut self) -> &mut [u8] {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        let len = self.buf.len();
        let pending = self.end - self.start;
        // Compact when the free tail is under a quarter of the buffer: the
        // moved tail is at most one partial frame, so this is cheap.
        if self.start > 0 && len - self.end < len / 4 {
            self.buf.copy_within(self.start..self.end, 0);
            self.start = 0;
            self.end = pending;
        }
        let want = self.need.max(pending + 1);
        if want > len - self.start {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.start = 0;
                self.end = pending;
            }
            if want > len {
                self.buf.resize(want.max(len * 2).min(MAX_FRAME + 14), 0);
            }
        }
        &mut self.buf[self.end..]
    }

    /// Marks `n` bytes of [`FrameBuf::space`] as read.
    pub fn filled(&mut self, n: usize) {
        assert!(self.end + n <= self.buf.len(), "filled past the buffer");
        self.end += n;
    }

    /// The next complete frame, or `Ok(None)` when more bytes are needed.
    #[inline]
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        let avail = &self.buf[self.start..self.end];
        let Some(h) = parse_header(avail)? else {
            self.need = 0;
            return Ok(None);
        };
        let total = h.header_len + h.payload_len;
        if avail.len() < total {
            self.need = total;
            return Ok(None);
        }
        self.need = 0;
        let p0 = self.start + h.header_len;
        self.start += total;
        Ok(Some(Frame {
            fin: h.fin,
            opcode: h.opcode,
            mask: h.mask,
            payload: p0..p0 + h.payload_len,
        }))
    }

    /// The payload bytes of a frame returned by the last calls to `next_frame`.
    #[inline]
    pub fn payload(&self, frame: &Frame) -> &[u8] {
        &self.buf[frame.payload.clone()]
    }

    /// The payload bytes, mutable (to unmask a masked frame in place).
    pub fn payload_mut(&mut self, frame: &Frame) -> &mut [u8] {
        &mut self.buf[frame.payload.clone()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An unmasked server frame.
    fn server_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![(if fin { 0x80 } else { 0 }) | opcode];
        let len = payload.len();
        if len < 126 {
            out.push(len as u8);
        } else if len <= 0xffff {
            out.push(126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        out.extend_from_slice(payload);
        out
    }

    fn collect(fb: &mut FrameBuf) -> Vec<(bool, u8, Vec<u8>)> {
        let mut out = Vec::new();
        while let Some(f) = fb.next_frame().unwrap() {
            out.push((f.fin, f.opcode, fb.payload(&f).to_vec()));
        }
        out
    }

    /// Feeds `bytes` in chunks of `chunk` through a buffer of `cap`.
    fn feed(bytes: &[u8], chunk: usize, cap: usize) -> Vec<(bool, u8, Vec<u8>)> {
        let mut fb = FrameBuf::with_capacity(cap);
        let mut out = Vec::new();
        let mut rest = bytes;
        while !rest.is_empty() {
            let space = fb.space();
            let n = space.len().min(chunk).min(rest.len());
            space[..n].copy_from_slice(&rest[..n]);
            fb.filled(n);
            rest = &rest[n..];
            out.extend(collect(&mut fb));
        }
        assert!(fb.data().is_empty(), "bytes left over");
        out
    }

    #[test]
    fn lengths_7_16_and_64_bit() {
        for len in [0, 1, 125, 126, 127, 65535, 65536, 70000] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let bytes = server_frame(true, OP_BINARY, &payload);
            let h = parse_header(&bytes).unwrap().unwrap();
            let expect_hdr = if len < 126 {
                2
            } else if len <= 0xffff {
                4
            } else {
                10
            };
            assert_eq!(h.header_len, expect_hdr, "len {len}");
            assert_eq!(h.payload_len, len);
            let frames = feed(&bytes, usize::MAX, 256);
            assert_eq!(frames, vec![(true, OP_BINARY, payload)]);
        }
    }

    #[test]
    fn partial_header_needs_more() {
        let bytes = server_frame(true, OP_BINARY, &[7; 70000]);
        for cut in 0..10 {
            assert_eq!(parse_header(&bytes[..cut]).unwrap(), None, "cut {cut}");
        }
        assert!(parse_header(&bytes[..10]).unwrap().is_some());
    }

    #[test]
    fn frames_split_across_reads_in_every_chunk_size() {
        let mut stream = Vec::new();
        let mut expect = Vec::new();
        for i in 0..40usize {
            let len = [0, 5, 64, 125, 126, 300, 70000][i % 7];
            let payload: Vec<u8> = (0..len).map(|j| (i + j) as u8).collect();
            let op = if i % 3 == 0 { OP_TEXT } else { OP_BINARY };
            stream.extend(server_frame(true, op, &payload));
            expect.push((true, op, payload));
            if i % 5 == 0 {
                stream.extend(server_frame(true, OP_PING, b"hi"));
                expect.push((true, OP_PING, b"hi".to_vec()));
            }
        }
        for chunk in [1, 2, 3, 7, 100, 4096, 65536, usize::MAX] {
            for cap in [256, 1024, 65536] {
                assert_eq!(feed(&stream, chunk, cap), expect, "chunk {chunk} cap {cap}");
            }
        }
    }

    #[test]
    fn control_frames_and_fragments() {
        let mut stream = server_frame(false, OP_TEXT, b"he");
        stream.extend(server_frame(true, OP_PING, b""));
        stream.extend(server_frame(true, OP_CONT, b"llo"));
        stream.extend(server_frame(true, OP_PONG, b"x"));
        stream.extend(server_frame(
            true,
            OP_CLOSE,
            &[0x03, 0xe8, b'b', b'y', b'e'],
        ));
        let frames = feed(&stream, 3, 256);
        assert_eq!(
            frames,
            vec![
                (false, OP_TEXT, b"he".to_vec()),
                (true, OP_PING, vec![]),
                (true, OP_CONT, b"llo".to_vec()),
                (true, OP_PONG, b"x".to_vec()),
                (true, OP_CLOSE, vec![0x03, 0xe8, b'b', b'y', b'e']),
            ]
        );
    }

    #[test]
    fn violations_are_errors() {
        assert_eq!(
            parse_header(&[0x82 | 0x40, 0]),
            Err(FrameError::ReservedBits)
        );
        assert_eq!(parse_header(&[0x83, 0]), Err(FrameError::UnknownOpcode(3)));
        assert_eq!(parse_header(&[0x09, 0]), Err(FrameError::FragmentedControl));
        assert_eq!(
            parse_header(&[0x89, 126, 0, 126]),
            Err(FrameError::ControlTooLong)
        );
        let mut big = vec![0x82, 127];
        big.extend_from_slice(&(1u64 << 63).to_be_bytes());
        assert_eq!(parse_header(&big), Err(FrameError::BadLength));
        let mut huge = vec![0x82, 127];
        huge.extend_from_slice(&(1u64 << 40).to_be_bytes());
        assert_eq!(parse_header(&huge), Err(FrameError::TooLarge(1 << 40)));
    }

    #[test]
    fn encode_masks_and_round_trips() {
        for len in [0, 3, 8, 13, 125, 126, 65535, 65536] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let mask = [0x12, 0x34, 0x56, 0x78];
            let mut out = Vec::new();
            encode(&mut out, OP_BINARY, &payload, mask);
            let h = parse_header(&out).unwrap().unwrap();
            assert!(h.fin);
            assert_eq!(h.opcode, OP_BINARY);
            assert_eq!(h.mask, Some(mask));
            assert_eq!(h.payload_len, len);
            assert_eq!(out.len(), h.header_len + len);
            let body = &mut out[h.header_len..];
            if len >= 4 {
                assert_ne!(&body[..4], &payload[..4], "payload is masked");
            }
            // Byte-wise reference unmasking.
            for (i, b) in body.iter_mut().enumerate() {
                *b ^= mask[i % 4];
            }
            assert_eq!(body, &payload[..]);
        }
    }

    #[test]
    fn buffer_grows_for_a_frame_larger_than_itself() {
        let payload = vec![9u8; 10_000];
        let bytes = server_frame(true, OP_BINARY, &payload);
        let mut fb = FrameBuf::with_capacity(256);
        let frames = {
            let mut out = Vec::new();
            let mut rest = &bytes[..];
            while !rest.is_empty() {
                let space = fb.space();
                let n = space.len().min(rest.len());
                space[..n].copy_from_slice(&rest[..n]);
                fb.filled(n);
                rest = &rest[n..];
                out.extend(collect(&mut fb));
            }
            out
        };
        assert_eq!(frames.len(), 1);
        assert!(fb.capacity() >= bytes.len());
    }
}
