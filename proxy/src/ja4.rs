//! JA4, FoxIO's TLS client fingerprint (`technical_details/JA4.md` in FoxIO-LLC/ja4; the JA4
//! client fingerprint is BSD-3-Clause), written from that spec.
//!
//! The ClientHello parser feeds a [`Builder`] the fields JA4 reads while it walks the hello
//! (the version, the cipher suites, each extension), so fingerprinting costs no pass of its own;
//! [`Builder::finish`] sorts and hashes once. What comes out is a compact [`Ja4`] (22 bytes)
//! that prints as the 36-character fingerprint. Connections here are TLS over TCP, so the
//! protocol mark is always `t`.
//!
//! JA4 is for logs, never for routing: an extension whose contents JA4 reads but that is
//! malformed (ALPN, supported_versions, signature_algorithms) fingerprints as if it carried no
//! value, and never refuses a hello the router would take; the backend's TLS stack judges it.

use std::fmt;

use sha2::{Digest, Sha256};
use smallvec::SmallVec;

/// ExtensionType server_name (RFC 6066 3).
const EXTENSION_SERVER_NAME: u16 = 0x0000;
/// ExtensionType signature_algorithms (RFC 8446 4.2.3).
const EXTENSION_SIGNATURE_ALGORITHMS: u16 = 0x000d;
/// ExtensionType application_layer_protocol_negotiation (RFC 7301 3.1).
const EXTENSION_ALPN: u16 = 0x0010;
/// ExtensionType supported_versions (RFC 8446 4.2.1).
const EXTENSION_SUPPORTED_VERSIONS: u16 = 0x002b;
/// Counts print as two digits; the spec caps them here.
const MAX_COUNT: usize = 99;
/// Bytes of SHA-256 kept per hash: the spec keeps the first 12 hex characters.
const HASH_LEN: usize = 6;
/// Extension types kept inline while walking a hello: real clients send 10 to 20, so only a
/// hostile hello spills to the heap.
const INLINE_EXTENSIONS: usize = 32;
/// Cipher suites sorted inline: browsers offer about 16, OpenSSL about 30, Java about 45.
const INLINE_CIPHERS: usize = 64;
/// Bytes of hashed text ("1301,1302,...", five per value) buffered between SHA-256 updates.
const LINE_BUFFER: usize = 320;

/// A JA4 fingerprint: prints as `t13d1516h2_8daaf6152771_e5627efa2ab1`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ja4 {
    /// JA4_a: protocol, version, SNI mark, cipher and extension counts, ALPN; ASCII.
    a: [u8; 10],
    /// JA4_b: truncated SHA-256 of the sorted cipher suites, all zero when there are none.
    b: [u8; HASH_LEN],
    /// JA4_c: truncated SHA-256 of the sorted extensions and the signature algorithms.
    c: [u8; HASH_LEN],
}

/// The JA4 inputs of one ClientHello, gathered as the parser walks it.
#[derive(Debug)]
pub(crate) struct Builder<'a> {
    legacy_version: u16,
    cipher_suites: &'a [u8],
    /// Extension types in the order sent, GREASE left out.
    extensions: SmallVec<[u16; INLINE_EXTENSIONS]>,
    server_name: bool,
    /// Highest non-GREASE entry of supported_versions; `Some(None)` when the extension is there
    /// without one.
    supported_version: Option<Option<u16>>,
    /// The first protocol name of the first ALPN extension.
    alpn: Option<&'a [u8]>,
    /// The SignatureSchemeList's entries, two bytes each, as sent.
    signature_algorithms: &'a [u8],
}

// === impl Ja4 ===

impl fmt::Display for Ja4 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = [0u8; 36];
        out[..10].copy_from_slice(&self.a);
        out[10] = b'_';
        hex_into(&self.b, &mut out[11..23]);
        out[23] = b'_';
        hex_into(&self.c, &mut out[24..]);
        // Every byte written above is ASCII.
        f.write_str(std::str::from_utf8(&out).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for Ja4 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Ja4({self})")
    }
}

// === impl Builder ===

impl<'a> Builder<'a> {
    /// Starts on a hello's legacy_version and its cipher_suites vector (two bytes a suite).
    pub(crate) fn new(legacy_version: u16, cipher_suites: &'a [u8]) -> Self {
        Self {
            legacy_version,
            cipher_suites,
            extensions: SmallVec::new(),
            server_name: false,
            supported_version: None,
            alpn: None,
            signature_algorithms: &[],
        }
    }

    /// Takes one extension, in the order the hello carries them.
    pub(crate) fn extension(&mut self, ty: u16, data: &'a [u8]) {
        if is_grease(ty) {
            return;
        }
        self.extensions.push(ty);
        match ty {
            EXTENSION_SERVER_NAME => self.server_name = true,
            EXTENSION_ALPN if self.alpn.is_none() => self.alpn = Some(first_protocol(data)),
            EXTENSION_SUPPORTED_VERSIONS if self.supported_version.is_none() => {
                self.supported_version = Some(highest_version(data));
            }
            EXTENSION_SIGNATURE_ALGORITHMS if self.signature_algorithms.is_empty() => {
                self.signature_algorithms = signature_schemes(data);
            }
            _ => {}
        }
    }

    /// Sorts, hashes and packs the fingerprint.
    pub(crate) fn finish(self) -> Ja4 {
        let version = match self.supported_version {
            Some(highest) => highest.unwrap_or(0),
            None => self.legacy_version,
        };
        let mut ciphers: SmallVec<[u16; INLINE_CIPHERS]> = u16s(self.cipher_suites)
            .filter(|&suite| !is_grease(suite))
            .collect();
        let [v0, v1] = version_mark(version);
        let [c0, c1] = count(ciphers.len());
        let [e0, e1] = count(self.extensions.len());
        let [l0, l1] = alpn_mark(self.alpn.unwrap_or_default());
        let sni = if self.server_name { b'd' } else { b'i' };
        let a = [b't', v0, v1, sni, c0, c1, e0, e1, l0, l1];

        ciphers.sort_unstable();
        let mut extensions = self.extensions;
        extensions.retain(|ty| *ty != EXTENSION_SERVER_NAME && *ty != EXTENSION_ALPN);
        extensions.sort_unstable();
        let b = hash(&ciphers, &mut std::iter::empty());
        let mut signatures = u16s(self.signature_algorithms).filter(|&s| !is_grease(s));
        let c = hash(&extensions, &mut signatures);
        Ja4 { a, b, c }
    }
}

/// GREASE values (RFC 8701 2): 0x0a0a, 0x1a1a, ... 0xfafa; JA4 ignores them everywhere.
fn is_grease(value: u16) -> bool {
    let [hi, lo] = value.to_be_bytes();
    hi == lo && lo & 0x0f == 0x0a
}

/// Two-byte values in order; a trailing odd byte is not a value.
fn u16s(bytes: &[u8]) -> impl Iterator<Item = u16> + '_ {
    bytes
        .chunks_exact(2)
        .map(|pair| u16::from_be_bytes([pair[0], pair[1]]))
}

/// The first ProtocolName of an ALPN extension (RFC 7301 3.1); empty when there is none.
fn first_protocol(data: &[u8]) -> &[u8] {
    let Some((&[hi, lo], list)) = data.split_first_chunk::<2>() else {
        return &[];
    };
    let list = list
        .get(..usize::from(u16::from_be_bytes([hi, lo])))
        .unwrap_or_default();
    let Some((&len, rest)) = list.split_first() else {
        return &[];
    };
    rest.get(..usize::from(len)).unwrap_or_default()
}

/// The highest non-GREASE version a supported_versions extension lists (RFC 8446 4.2.1).
fn highest_version(data: &[u8]) -> Option<u16> {
    let (&len, list) = data.split_first()?;
    let list = list.get(..usize::from(len))?;
    u16s(list).filter(|&v| !is_grease(v)).max()
}

/// The entries of a signature_algorithms extension (RFC 8446 4.2.3); none when it is malformed.
fn signature_schemes(data: &[u8]) -> &[u8] {
    let Some((&[hi, lo], list)) = data.split_first_chunk::<2>() else {
        return &[];
    };
    list.get(..usize::from(u16::from_be_bytes([hi, lo])))
        .unwrap_or_default()
}

/// The two characters for a version (the spec's table; unknown is "00").
fn version_mark(version: u16) -> [u8; 2] {
    match version {
        0x0304 => *b"13",
        0x0303 => *b"12",
        0x0302 => *b"11",
        0x0301 => *b"10",
        0x0300 => *b"s3",
        0x0002 => *b"s2",
        0xfeff => *b"d1",
        0xfefd => *b"d2",
        0xfefc => *b"d3",
        _ => *b"00",
    }
}

/// A count as two decimal digits, at most 99.
fn count(n: usize) -> [u8; 2] {
    let n = n.min(MAX_COUNT);
    // n < 100, so both digits fit in a byte.
    [b'0' + (n / 10) as u8, b'0' + (n % 10) as u8]
}

/// The first and last characters of the first ALPN value: as they are when both are ASCII
/// alphanumerics, else the first and last hex digits of the value; "00" when it is empty.
fn alpn_mark(protocol: &[u8]) -> [u8; 2] {
    let (Some(&first), Some(&last)) = (protocol.first(), protocol.last()) else {
        return *b"00";
    };
    if first.is_ascii_alphanumeric() && last.is_ascii_alphanumeric() {
        [first, last]
    } else {
        [HEX[usize::from(first >> 4)], HEX[usize::from(last & 0x0f)]]
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Every byte's two lowercase hex digits, so a value costs two loads rather than four shifts.
const HEX_PAIRS: [[u8; 2]; 256] = {
    let mut pairs = [[0; 2]; 256];
    let mut b = 0;
    while b < 256 {
        pairs[b] = [HEX[b >> 4], HEX[b & 0x0f]];
        b += 1;
    }
    pairs
};

/// Truncated SHA-256 of `values` as lowercase four-digit hex joined by commas, then, if
/// `then` yields any, an underscore and those joined the same way. No values hash to zeros.
fn hash(values: &[u16], then: &mut dyn Iterator<Item = u16>) -> [u8; HASH_LEN] {
    if values.is_empty() {
        return [0; HASH_LEN];
    }
    let mut line = HexLine::default();
    for (i, &value) in values.iter().enumerate() {
        line.push((i > 0).then_some(b','), value);
    }
    for (i, value) in then.enumerate() {
        line.push(Some(if i == 0 { b'_' } else { b',' }), value);
    }
    line.finish()
}

/// The text JA4 hashes ("002f,0035,..."), written into a stack buffer that is fed to SHA-256
/// whenever it fills, so no list of any length allocates.
struct HexLine {
    hasher: Sha256,
    buf: [u8; LINE_BUFFER],
    len: usize,
}

impl Default for HexLine {
    fn default() -> Self {
        Self {
            hasher: Sha256::new(),
            buf: [0; LINE_BUFFER],
            len: 0,
        }
    }
}

impl HexLine {
    /// Appends `separator`, if any, and `value` as four hex digits.
    fn push(&mut self, separator: Option<u8>, value: u16) {
        if self.len + 5 > LINE_BUFFER {
            self.hasher.update(&self.buf[..self.len]);
            self.len = 0;
        }
        let [hi, lo] = value.to_be_bytes();
        let [h0, h1] = HEX_PAIRS[usize::from(hi)];
        let [l0, l1] = HEX_PAIRS[usize::from(lo)];
        let (entry, skip) = match separator {
            Some(separator) => ([separator, h0, h1, l0, l1], 0),
            None => ([0, h0, h1, l0, l1], 1),
        };
        let n = 5 - skip;
        self.buf[self.len..self.len + n].copy_from_slice(&entry[skip..]);
        self.len += n;
    }

    fn finish(mut self) -> [u8; HASH_LEN] {
        self.hasher.update(&self.buf[..self.len]);
        let digest = self.hasher.finalize();
        let mut out = [0; HASH_LEN];
        out.copy_from_slice(&digest[..HASH_LEN]);
        out
    }
}

/// Writes `bytes` as lowercase hex into `out`, which holds exactly twice as many bytes.
fn hex_into(bytes: &[u8], out: &mut [u8]) {
    for (pair, byte) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX[usize::from(byte >> 4)];
        pair[1] = HEX[usize::from(byte & 0x0f)];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example in the spec (JA4.md, "Cipher hash" to "Example").
    const SPEC_CIPHERS: [u16; 15] = [
        0x1301, 0x1302, 0x1303, 0xc02b, 0xc02f, 0xc02c, 0xc030, 0xcca9, 0xcca8, 0xc013, 0xc014,
        0x009c, 0x009d, 0x002f, 0x0035,
    ];
    const SPEC_EXTENSIONS: [u16; 16] = [
        0x001b, 0x0000, 0x0033, 0x0010, 0x4469, 0x0017, 0x002d, 0x000d, 0x0005, 0x0023, 0x0012,
        0x002b, 0xff01, 0x000b, 0x000a, 0x0015,
    ];
    const SPEC_SIGNATURES: [u16; 8] = [
        0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601,
    ];

    fn bytes(values: &[u16]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_be_bytes()).collect()
    }

    fn vec8(data: &[u8]) -> Vec<u8> {
        [&[u8::try_from(data.len()).unwrap()][..], data].concat()
    }

    fn vec16(data: &[u8]) -> Vec<u8> {
        [&u16::try_from(data.len()).unwrap().to_be_bytes()[..], data].concat()
    }

    fn alpn(protocols: &[&[u8]]) -> Vec<u8> {
        vec16(&protocols.iter().flat_map(|p| vec8(p)).collect::<Vec<_>>())
    }

    /// Extension data as a client sends it, for the types JA4 reads into.
    fn data_for(ty: u16, signatures: &[u16]) -> Vec<u8> {
        match ty {
            EXTENSION_ALPN => alpn(&[b"h2", b"http/1.1"]),
            EXTENSION_SUPPORTED_VERSIONS => vec8(&bytes(&[0x0a0a, 0x0304, 0x0303])),
            EXTENSION_SIGNATURE_ALGORITHMS => vec16(&bytes(signatures)),
            _ => Vec::new(),
        }
    }

    /// The fingerprint of a hello with these fields, extensions carrying `data_for` contents.
    fn fingerprint(
        legacy_version: u16,
        ciphers: &[u16],
        extensions: &[u16],
        signatures: &[u16],
    ) -> String {
        let suites = bytes(ciphers);
        let data: Vec<Vec<u8>> = extensions
            .iter()
            .map(|&ty| data_for(ty, signatures))
            .collect();
        let mut builder = Builder::new(legacy_version, &suites);
        for (&ty, data) in extensions.iter().zip(&data) {
            builder.extension(ty, data);
        }
        builder.finish().to_string()
    }

    fn with_extension(ty: u16, data: &[u8]) -> String {
        let suites = bytes(&[0x1301]);
        let mut builder = Builder::new(0x0303, &suites);
        builder.extension(ty, data);
        builder.finish().to_string()
    }

    #[test]
    fn the_spec_example() {
        assert_eq!(
            fingerprint(0x0303, &SPEC_CIPHERS, &SPEC_EXTENSIONS, &SPEC_SIGNATURES),
            "t13d1516h2_8daaf6152771_e5627efa2ab1"
        );
    }

    #[test]
    fn the_spec_example_without_signature_algorithms() {
        // "If there are no signature algorithms in the hello packet, then the string ends
        // without an underscore": the spec's 6d807ffa2a79. An empty list counts as none.
        let ja4 = fingerprint(0x0303, &SPEC_CIPHERS, &SPEC_EXTENSIONS, &[]);
        assert_eq!(ja4, "t13d1516h2_8daaf6152771_6d807ffa2a79");
    }

    #[test]
    fn grease_is_ignored_everywhere() {
        let mut ciphers = vec![0x0a0a];
        ciphers.extend(SPEC_CIPHERS);
        ciphers.push(0xfafa);
        let mut extensions = vec![0x2a2a];
        extensions.extend(SPEC_EXTENSIONS);
        extensions.push(0xdada);
        let mut signatures = vec![0x1a1a];
        signatures.extend(SPEC_SIGNATURES);
        assert_eq!(
            fingerprint(0x0303, &ciphers, &extensions, &signatures),
            "t13d1516h2_8daaf6152771_e5627efa2ab1"
        );
        for grease in (0..16).map(|n| n << 12 | 0x0a00 | n << 4 | 0x0a) {
            assert!(is_grease(grease), "{grease:04x}");
        }
        for not in [
            0x0a0b, 0x0b0b, 0x1a0a, 0x0000, 0xffff, 0x5600, 0x00ff, 0xfe0d,
        ] {
            assert!(!is_grease(not), "{not:04x}");
        }
    }

    #[test]
    fn scsv_and_reserved_values_count() {
        let ciphers = [0x1301, 0x00ff, 0x5600, 0xfe00];
        let ja4 = fingerprint(0x0303, &ciphers, &[], &[]);
        assert!(ja4.starts_with("t12i0400"), "{ja4}");
    }

    #[test]
    fn version_from_supported_versions_else_the_hello() {
        let ja4 = |legacy, extensions: &[u16]| fingerprint(legacy, &[0x1301], extensions, &[]);
        assert!(ja4(0x0303, &[EXTENSION_SUPPORTED_VERSIONS]).starts_with("t13"));
        // supported_versions wins even over a newer-looking legacy_version.
        assert!(ja4(0x0301, &[EXTENSION_SUPPORTED_VERSIONS]).starts_with("t13"));
        for (version, mark) in [
            (0x0303, "12"),
            (0x0302, "11"),
            (0x0301, "10"),
            (0x0300, "s3"),
            (0x0002, "s2"),
            (0xfeff, "d1"),
            (0xfefd, "d2"),
            (0xfefc, "d3"),
            (0x0304, "13"),
            (0x7f1c, "00"),
            (0x0305, "00"),
        ] {
            assert_eq!(&ja4(version, &[])[1..3], mark, "{version:04x}");
        }
        // The highest listed, in any order; only GREASE, or malformed, is unknown.
        let versions = |data: &[u8]| with_extension(EXTENSION_SUPPORTED_VERSIONS, data);
        assert!(versions(&vec8(&bytes(&[0x0302, 0x0304, 0x0303]))).starts_with("t13"));
        assert!(versions(&vec8(&bytes(&[0x0302]))).starts_with("t11"));
        assert!(versions(&vec8(&bytes(&[0x3a3a]))).starts_with("t00"));
        assert!(versions(b"").starts_with("t00"));
        assert!(versions(&[4, 3, 4]).starts_with("t00"));
    }

    #[test]
    fn sni_mark_follows_the_extension() {
        assert_eq!(&fingerprint(0x0303, &[0x1301], &[0], &[])[3..4], "d");
        assert_eq!(&fingerprint(0x0303, &[0x1301], &[0x0017], &[])[3..4], "i");
    }

    #[test]
    fn counts_are_capped_at_99() {
        let ciphers: Vec<u16> = (1..=150).collect();
        let extensions: Vec<u16> = (0x0100..0x0100 + 120).collect();
        let ja4 = fingerprint(0x0303, &ciphers, &extensions, &[]);
        assert!(ja4.starts_with("t12i999900_"), "{ja4}");
        // Every value is hashed, not just the first 99.
        let fewer = fingerprint(0x0303, &ciphers[..99], &extensions[..99], &[]);
        assert_ne!(ja4[11..], fewer[11..]);
        assert!(fingerprint(0x0303, &[1; 7], &[0x0017; 3], &[]).starts_with("t12i0703"));
    }

    #[test]
    fn empty_lists_hash_to_zeros() {
        // No extensions besides SNI and ALPN: JA4_c is zeros, as with none at all.
        assert_eq!(
            fingerprint(0x0303, &[0x0a0a], &[0, EXTENSION_ALPN], &[]),
            "t12d0002h2_000000000000_000000000000"
        );
        assert_eq!(
            fingerprint(0x0301, &[], &[], &[]),
            "t10i000000_000000000000_000000000000"
        );
    }

    #[test]
    fn alpn_marks_from_the_spec() {
        for (value, mark) in [
            (&b"h2"[..], "h2"),
            (b"http/1.1", "h1"),
            (b"h3", "h3"),
            (b"a", "aa"),
            (b"\xab", "ab"),
            (b"\x20", "20"),
            (b"\xab\xcd", "ad"),
            (b"\x20\x61", "21"),
            (b"\x30\xab", "3b"),
            (b"\x61\x20", "60"),
            (b"\x30\x31\xab\xcd", "3d"),
            (b"\x30\xab\xcd\x31", "01"),
        ] {
            let ja4 = with_extension(EXTENSION_ALPN, &alpn(&[value, b"h2"]));
            assert_eq!(&ja4[8..10], mark, "{value:?}");
        }
        // No ALPN, an empty first value, an empty or malformed list: "00".
        for data in [
            &alpn(&[b"", b"h2"])[..],
            &alpn(&[]),
            b"",
            b"\x00",
            b"\x00\x05\x02h2",
        ] {
            let ja4 = with_extension(EXTENSION_ALPN, data);
            assert_eq!(&ja4[8..10], "00", "{data:?}");
        }
        assert_eq!(&with_extension(0x0017, b"")[8..10], "00");
    }

    #[test]
    fn the_first_of_repeated_extensions_is_read() {
        let suites = bytes(&[0x1301]);
        let first = alpn(&[b"h2"]);
        let second = alpn(&[b"http/1.1"]);
        let mut builder = Builder::new(0x0303, &suites);
        builder.extension(EXTENSION_ALPN, &first);
        builder.extension(EXTENSION_ALPN, &second);
        let ja4 = builder.finish().to_string();
        // Both count; the first one's value is the mark.
        assert!(ja4.starts_with("t12i0102h2_"), "{ja4}");
    }

    #[test]
    fn malformed_signature_algorithms_count_as_none() {
        let none = with_extension(EXTENSION_SIGNATURE_ALGORITHMS, b"");
        for data in [&b"\x00"[..], b"\x00\x00", b"\x00\x04\x04\x03"] {
            assert_eq!(with_extension(EXTENSION_SIGNATURE_ALGORITHMS, data), none);
        }
        let some = with_extension(EXTENSION_SIGNATURE_ALGORITHMS, b"\x00\x02\x04\x03");
        assert_ne!(some, none);
    }

    #[test]
    fn prints_and_debugs_the_fingerprint() {
        let ja4 = fingerprint(0x0303, &SPEC_CIPHERS, &SPEC_EXTENSIONS, &SPEC_SIGNATURES);
        assert_eq!(ja4.len(), 36);
        let suites = bytes(&SPEC_CIPHERS);
        let value = Builder::new(0x0304, &suites).finish();
        assert_eq!(
            format!("{value:?}"),
            format!("Ja4({value})"),
            "Debug shows the fingerprint"
        );
        assert_eq!(std::mem::size_of::<Ja4>(), 22);
    }
}
