//! Client frame heads and unmasking: any bytes either decode to a head that
//! obeys RFC 6455 (as the server enforces it) or are refused with 1002, and
//! unmasking at any offset matches the byte-by-byte definition.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mles::protocol::frame::{
    self, OP_BINARY, OP_CLOSE, OP_CONTINUATION, OP_PING, OP_PONG, OP_TEXT,
};

fuzz_target!(|data: &[u8]| {
    let head = match frame::parse_head(data) {
        Err(c) => {
            assert_eq!(c.code, 1002, "{c:?}");
            return;
        }
        Ok(None) => {
            // A head is at most 14 bytes: with those, the answer is never "more".
            assert!(data.len() < 14, "needs more after {} bytes", data.len());
            return;
        }
        Ok(Some(h)) => h,
    };
    assert!(head.head_len <= data.len());
    assert_eq!(data[0] & 0x70, 0, "reserved bits");
    assert!(matches!(
        head.opcode,
        OP_CONTINUATION | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG
    ));
    assert_eq!(head.fin, data[0] & 0x80 != 0);
    // The length is in its shortest form.
    match head.head_len {
        6 => assert!(head.len <= 125),
        8 => assert!((126..=0xFFFF).contains(&head.len)),
        14 => assert!(head.len > 0xFFFF && head.len >> 63 == 0),
        n => panic!("head of {n} bytes"),
    }
    if head.is_control() {
        assert!(head.fin && head.len <= 125);
    }
    assert_eq!(&data[head.head_len - 4..head.head_len], &head.mask);

    let end = data.len().min(head.head_len + head.len.min(1 << 20) as usize);
    let masked = &data[head.head_len..end];
    let expect: Vec<u8> = masked
        .iter()
        .enumerate()
        .map(|(i, b)| b ^ head.mask[i % 4])
        .collect();
    let out = frame::encode_unmasking(head.opcode, masked, head.mask);
    assert_eq!(frame::payload_of(&out), &expect[..]);
    assert_eq!(out.len(), frame::head_len(masked.len()) + masked.len());
    assert_eq!(out, frame::encode(head.opcode, &expect));
    // Unmasking in two pieces, the second at its offset, is the same.
    let cut = data[0] as usize % (masked.len() + 1);
    let mut pieces = masked.to_vec();
    let (a, b) = pieces.split_at_mut(cut);
    frame::unmask(a, head.mask, 0);
    frame::unmask(b, head.mask, cut);
    assert_eq!(pieces, expect);
    // A server frame re-masked as a client's decodes to the same head.
    let mut again = vec![0x80 | head.opcode];
    let n = expect.len();
    match n {
        0..=125 => again.push(0x80 | n as u8),
        126..=0xFFFF => {
            again.push(0x80 | 126);
            again.extend_from_slice(&(n as u16).to_be_bytes());
        }
        _ => {
            again.push(0x80 | 127);
            again.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    again.extend_from_slice(&head.mask);
    let h2 = frame::parse_head(&again)
        .expect("a well-formed head")
        .expect("a whole head");
    assert_eq!((h2.opcode, h2.len, h2.mask), (head.opcode, n as u64, head.mask));
});
