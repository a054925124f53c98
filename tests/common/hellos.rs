//! ClientHellos shaped for framing tests: padded to a size, cut into records.

/// The handshake message of the single-record hello `hello`, grown to exactly `len` bytes by
/// a padding extension (RFC 7685) appended to its extensions.
pub fn padded_handshake(hello: &[u8], len: usize) -> Vec<u8> {
    assert_eq!(hello[0], 0x16, "not a handshake record");
    let record_len = u16::from_be_bytes([hello[3], hello[4]]) as usize;
    assert_eq!(record_len + 5, hello.len(), "single-record hellos only");
    let message = &hello[5..];
    let body = &message[4..];
    let (at, extensions) = extensions_of(body);
    let padding = len
        .checked_sub(message.len() + 4)
        .expect("the hello is already longer");
    let mut out = vec![0x01];
    out.extend_from_slice(&((len - 4) as u32).to_be_bytes()[1..]);
    out.extend_from_slice(&body[..at]);
    out.extend_from_slice(&((extensions + 4 + padding) as u16).to_be_bytes());
    out.extend_from_slice(&body[at + 2..]);
    out.extend_from_slice(&21u16.to_be_bytes());
    out.extend_from_slice(&(padding as u16).to_be_bytes());
    out.resize(len, 0);
    out
}

/// Where the extensions block of the ClientHello `body` (the message after its 4-byte header)
/// starts, at its two-byte length, and that length. Panics on bytes after the block.
pub fn extensions_of(body: &[u8]) -> (usize, usize) {
    // version (2) + random (32), then session id, cipher suites, compression methods.
    let mut at = 34;
    at += 1 + body[at] as usize;
    at += 2 + u16::from_be_bytes([body[at], body[at + 1]]) as usize;
    at += 1 + body[at] as usize;
    let len = u16::from_be_bytes([body[at], body[at + 1]]) as usize;
    assert_eq!(at + 2 + len, body.len(), "bytes after the extensions");
    (at, len)
}

/// `handshake` framed as handshake records of `size` bytes each (the last one less).
pub fn records(handshake: &[u8], size: usize) -> Vec<Vec<u8>> {
    handshake
        .chunks(size)
        .map(|chunk| {
            let mut record = vec![0x16, 0x03, 0x01];
            record.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
            record.extend_from_slice(chunk);
            record
        })
        .collect()
}
