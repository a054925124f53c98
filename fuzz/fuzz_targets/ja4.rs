//! Raw bytes into `client_hello::parse`, which fingerprints every hello it reads: it must not
//! panic, every fingerprint must have JA4's shape, and the same hello framed in small records
//! (so the parser walks a copy rather than the buffer) must give the same one.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proxy::internals::client_hello::{parse, Parsed};

/// The proxy's default limit: one maximum-size record's worth of hello.
const MAX_LEN: usize = 16_384;
/// TLS record header length (RFC 8446 5.1).
const RECORD_HEADER_LEN: usize = 5;

fuzz_target!(|data: &[u8]| {
    let Parsed::Hello(hello) = parse(data, MAX_LEN) else {
        return;
    };
    let fingerprint = hello.ja4;
    let ja4 = fingerprint.to_string();
    assert!(is_ja4(&ja4), "not a JA4: {ja4:?}");

    let handshake = handshake_bytes(&data[..hello.len]);
    // A record size from the input, so the fuzzer steers the split too.
    let size = usize::from(data[data.len() - 1] % 64) + 1;
    let reframed = records(&handshake, size);
    if reframed.len() > MAX_LEN {
        return;
    }
    match parse(&reframed, MAX_LEN) {
        Parsed::Hello(again) => assert_eq!(again.ja4, fingerprint, "in records of {size}"),
        other => panic!("in records of {size}: {other:?}"),
    }
});

/// `t`, a version, `d` or `i`, two two-digit counts, two ALPN characters, then two 12-digit
/// lowercase hex hashes, joined by underscores.
fn is_ja4(s: &str) -> bool {
    let b = s.as_bytes();
    let hex = |part: &[u8]| part.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
    b.len() == 36
        && b[0] == b't'
        && ["13", "12", "11", "10", "s3", "s2", "d1", "d2", "d3", "00"]
            .iter()
            .any(|v| v.as_bytes() == &b[1..3])
        && matches!(b[3], b'd' | b'i')
        && b[4..8].iter().all(u8::is_ascii_digit)
        && b[8..10].iter().all(u8::is_ascii_alphanumeric)
        && b[10] == b'_'
        && hex(&b[11..23])
        && b[23] == b'_'
        && hex(&b[24..])
}

/// The handshake bytes the records of `wire` carry, in order (`wire` is whole records).
fn handshake_bytes(wire: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = wire;
    while let Some((header, after)) = rest.split_first_chunk::<RECORD_HEADER_LEN>() {
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        let Some((fragment, after)) = after.split_at_checked(len) else {
            break;
        };
        out.extend_from_slice(fragment);
        rest = after;
    }
    out
}

/// `handshake` framed into handshake records of at most `size` bytes.
fn records(handshake: &[u8], size: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in handshake.chunks(size) {
        out.extend_from_slice(&[22, 3, 1]);
        out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
        out.extend_from_slice(chunk);
    }
    out
}
