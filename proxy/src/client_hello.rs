//! Reading the SNI out of a client's first bytes: a pure function over a buffer.
//!
//! The caller peeks or reads the connection's first bytes and calls [`parse`] again each time
//! more arrive (or [`parse_more`], carrying a [`Progress`] so the records already walked are
//! not walked again: then a hello costs time linear in its bytes, however many reads it takes).
//! [`Parsed::NeedMore`] means read again; the other answers are final. Framing
//! verdicts (not TLS, too large, broken records) come at the earliest byte that settles them,
//! so a client is never waited on for bytes that could not change the answer; the hello's
//! contents are judged once its last record is in. The record layer is ours (a hello may span
//! any number of records); the hello itself is walked with a small cursor that borrows from the
//! buffer, so the common single-record hello is never copied.

use std::borrow::Cow;
use std::fmt;

use crate::error::NameError;
use crate::ja4::{self, Ja4};
use crate::name::ServerName;

/// Record header: content type (1), legacy record version (2), fragment length (2); RFC 8446 5.1.
const RECORD_HEADER_LEN: usize = 5;
/// Largest plaintext fragment, 2^14 (RFC 8446 5.1); a peer sending more is broken or hostile.
const MAX_RECORD_LEN: usize = 16_384;
/// ContentType handshake (RFC 8446 B.1): the only records allowed before the hello is complete.
const CONTENT_TYPE_HANDSHAKE: u8 = 22;
/// Every SSL 3.0 and TLS record version has major version 3.
const RECORD_VERSION_MAJOR: u8 = 3;
/// Highest record minor version accepted (0x0304): clients send 0x0301..=0x0303 today, and RFC
/// 8446 5.1 tells receivers to ignore the field, so tolerate one step past what is seen.
const MAX_RECORD_VERSION_MINOR: u8 = 4;
/// Handshake header: msg_type (1), length (3); RFC 8446 4.
const HANDSHAKE_HEADER_LEN: usize = 4;
/// HandshakeType client_hello (RFC 8446 4).
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
/// ClientHello.random is 32 bytes (RFC 8446 4.1.2).
const RANDOM_LEN: usize = 32;
/// legacy_session_id is opaque <0..32> (RFC 8446 4.1.2).
const MAX_SESSION_ID_LEN: usize = 32;
/// A cipher suite is two bytes, and a hello offers at least one (RFC 8446 4.1.2).
const CIPHER_SUITE_LEN: usize = 2;
/// ExtensionType server_name (RFC 6066 3).
const EXTENSION_SERVER_NAME: u16 = 0;
/// NameType host_name (RFC 6066 3), the only name type ever defined.
const NAME_TYPE_HOST_NAME: u8 = 0;

/// What the bytes read so far say.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Not enough bytes yet to decide; read more (the caller enforces the size limit by passing max_len).
    NeedMore,
    /// A complete ClientHello.
    Hello(ClientHello),
    /// Not a ClientHello we can route; never becomes one with more bytes.
    Refused(Refusal),
}

/// A complete ClientHello, as far as routing cares.
#[derive(Debug, PartialEq, Eq)]
pub struct ClientHello {
    /// The SNI host_name, normalised via crate::name::ServerName::parse; None when the extension is absent.
    pub server_name: Option<ServerName>,
    /// Bytes from the start of the buffer to the end of the last TLS record that carries the hello.
    pub len: usize,
    /// The hello's JA4 fingerprint, for logs.
    pub ja4: Ja4,
}

/// Why the first bytes are not a ClientHello we can route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The first bytes are not a TLS handshake record (HTTP, SSH, garbage).
    NotTls,
    /// TLS framing or hello structure is broken; names the field, as rustls does.
    Malformed(&'static str),
    /// The records carrying the hello would exceed the caller's max_len.
    TooLarge,
    /// A server_name is present but is not a valid hostname.
    BadServerName(NameError),
}

// === impl Refusal ===

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotTls => f.write_str("not a TLS handshake"),
            Self::Malformed(field) => write!(f, "malformed ClientHello: {field}"),
            Self::TooLarge => f.write_str("ClientHello too large"),
            Self::BadServerName(e) => write!(f, "bad server_name: {e}"),
        }
    }
}

/// Reads the ClientHello at the start of `buf`, never looking past `max_len` bytes.
///
/// Bytes after the last record of the hello are ignored (the caller forwards them).
pub fn parse(buf: &[u8], max_len: usize) -> Parsed {
    parse_more(&mut Progress::default(), buf, max_len)
}

/// [`parse`] for a buffer that grows between calls: `progress` (start from its default)
/// remembers the complete records already walked, so each call only frames the new bytes.
/// `buf` must start with the bytes every earlier call with this `progress` was given, and
/// `max_len` must stay the same; then the answer is always [`parse`]'s on the same bytes.
pub fn parse_more(progress: &mut Progress, buf: &[u8], max_len: usize) -> Parsed {
    match parse_hello(progress, buf, max_len) {
        Ok(hello) => Parsed::Hello(hello),
        Err(Stop::NeedMore) => Parsed::NeedMore,
        Err(Stop::Refused(why)) => Parsed::Refused(why),
    }
}

/// Why parsing stopped short of a hello.
enum Stop {
    NeedMore,
    Refused(Refusal),
}

impl From<Refusal> for Stop {
    fn from(why: Refusal) -> Self {
        Self::Refused(why)
    }
}

fn parse_hello(progress: &mut Progress, buf: &[u8], max_len: usize) -> Result<ClientHello, Stop> {
    // Bytes past the limit can never be part of a hello we accept, so they are never read.
    let buf = buf.get(..max_len).unwrap_or(buf);
    let framing = frame(progress, buf, max_len)?;
    let message = message(buf, &framing);
    let body = message
        .get(HANDSHAKE_HEADER_LEN..)
        .ok_or(Refusal::Malformed("handshake length"))?;
    let (server_name, ja4) = client_hello_body(body)?;
    Ok(ClientHello {
        server_name,
        len: framing.end,
        ja4,
    })
}

// === record layer ===

/// Where the hello sits once every record carrying it has arrived.
struct Framing {
    /// End of the last record carrying the hello.
    end: usize,
    /// Length of the first record's fragment.
    first_fragment_len: usize,
    /// Length of the handshake message, header included.
    message_len: usize,
}

/// The record layer's state between calls to [`parse_more`]: where the first record not yet
/// complete starts, and what the complete ones before it carried. Only complete records are
/// ever recorded here, so the record in progress is judged afresh on each call.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    /// Start of the record being read.
    pos: usize,
    /// Length of the first record's fragment, once that record is complete.
    first_fragment_len: usize,
    /// Handshake bytes carried by the complete records before `pos`.
    carried: usize,
    /// The handshake header, as far as those records carried it.
    header: [u8; HANDSHAKE_HEADER_LEN],
    /// Length of the handshake message, header included, once its header is in.
    message_len: Option<usize>,
}

/// Walks the records from where `progress` left off until they carry the whole handshake
/// message, deciding as early as the bytes allow: each header byte is checked as it arrives,
/// and a size that could never fit in `max_len` is refused from the header that announces it.
fn frame(progress: &mut Progress, buf: &[u8], max_len: usize) -> Result<Framing, Stop> {
    let Progress {
        mut pos,
        mut first_fragment_len,
        mut carried,
        mut header,
        mut message_len,
    } = *progress;
    loop {
        let record = buf.get(pos..).unwrap_or_default();
        let Some(fragment_len) = record_header(record, pos == 0)? else {
            return Err(short(buf, max_len));
        };
        if pos == 0 {
            first_fragment_len = fragment_len;
        }
        let start = pos + RECORD_HEADER_LEN;
        let end = start + fragment_len;
        if end > max_len {
            return Err(Refusal::TooLarge.into());
        }
        let fragment = buf.get(start..end.min(buf.len())).unwrap_or_default();

        if message_len.is_none() {
            // The handshake header may itself be split across records.
            let have = carried + fragment.len();
            for (slot, &b) in header.iter_mut().skip(carried).zip(fragment) {
                *slot = b;
            }
            if have >= 1 && header[0] != HANDSHAKE_CLIENT_HELLO {
                return Err(Refusal::Malformed("handshake type").into());
            }
            if have >= HANDSHAKE_HEADER_LEN {
                let [_, a, b, c] = header;
                let body_len = usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c);
                message_len = Some(HANDSHAKE_HEADER_LEN + body_len);
            }
        }
        if let Some(total) = message_len {
            // The hello cannot end before this record does, and what this record does not carry
            // needs further records of at most MAX_RECORD_LEN each: if even that cannot fit,
            // refuse now rather than wait for bytes that could never be accepted.
            let missing = total.saturating_sub(carried + fragment_len);
            let min_end = end + missing + RECORD_HEADER_LEN * missing.div_ceil(MAX_RECORD_LEN);
            if min_end > max_len {
                return Err(Refusal::TooLarge.into());
            }
        }

        if end > buf.len() {
            return Err(short(buf, max_len));
        }
        carried += fragment_len;
        match message_len {
            Some(total) if carried >= total => {
                return Ok(Framing {
                    end,
                    first_fragment_len,
                    message_len: total,
                })
            }
            _ => {
                pos = end;
                // This record is complete and settled nothing: it is never walked again.
                *progress = Progress {
                    pos,
                    first_fragment_len,
                    carried,
                    header,
                    message_len,
                };
            }
        }
    }
}

/// Checks the record header at the start of `record` byte by byte, so a bad byte is refused
/// before the rest arrives; `None` while the header is incomplete.
fn record_header(record: &[u8], first: bool) -> Result<Option<usize>, Refusal> {
    // In the first record these bytes say whether the peer speaks TLS at all; later, a wrong
    // byte is a TLS client breaking its own framing.
    let refuse = |field| {
        if first {
            Refusal::NotTls
        } else {
            Refusal::Malformed(field)
        }
    };
    if record.first().is_some_and(|&t| t != CONTENT_TYPE_HANDSHAKE) {
        return Err(refuse("record type"));
    }
    if record.get(1).is_some_and(|&v| v != RECORD_VERSION_MAJOR) {
        return Err(refuse("record version"));
    }
    if record.get(2).is_some_and(|&v| v > MAX_RECORD_VERSION_MINOR) {
        return Err(refuse("record version"));
    }
    let Some(&[hi, lo]) = record.get(3..RECORD_HEADER_LEN) else {
        return Ok(None);
    };
    let len = usize::from(u16::from_be_bytes([hi, lo]));
    // Empty handshake fragments are forbidden (RFC 8446 5.1), and would let a peer send
    // headers forever without progress.
    if len == 0 || len > MAX_RECORD_LEN {
        return Err(Refusal::Malformed("record length"));
    }
    Ok(Some(len))
}

/// Out of bytes: read more, unless the caller's limit is already buffered.
fn short(buf: &[u8], max_len: usize) -> Stop {
    if buf.len() >= max_len {
        Stop::Refused(Refusal::TooLarge)
    } else {
        Stop::NeedMore
    }
}

/// The handshake message: borrowed when one record carries it, else copied out of the records.
fn message<'a>(buf: &'a [u8], framing: &Framing) -> Cow<'a, [u8]> {
    if framing.first_fragment_len >= framing.message_len {
        let end = RECORD_HEADER_LEN + framing.message_len;
        return Cow::Borrowed(buf.get(RECORD_HEADER_LEN..end).unwrap_or_default());
    }
    let mut out = Vec::with_capacity(framing.message_len);
    let mut rest = buf.get(..framing.end).unwrap_or_default();
    // `frame` has checked every header up to `end`; a short result cannot happen, and would
    // only make the body parse refuse.
    while let Some((header, after)) = rest.split_first_chunk::<RECORD_HEADER_LEN>() {
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        let Some((fragment, after)) = after.split_at_checked(len) else {
            break;
        };
        out.extend_from_slice(fragment);
        rest = after;
    }
    out.truncate(framing.message_len);
    Cow::Owned(out)
}

// === hello body ===

/// Walks a ClientHello body (RFC 8446 4.1.2) once: its host_name, if any, and its JA4.
fn client_hello_body(body: &[u8]) -> Result<(Option<ServerName>, Ja4), Refusal> {
    let mut r = Reader(body);
    // The backend judges legacy_version; JA4 reads it when supported_versions is absent.
    let legacy_version = r.u16("legacy_version")?;
    r.take(RANDOM_LEN, "random")?;
    if r.vec8("session_id")?.len() > MAX_SESSION_ID_LEN {
        return Err(Refusal::Malformed("session_id"));
    }
    let suites = r.vec16("cipher_suites")?;
    if suites.len() < CIPHER_SUITE_LEN || suites.len() % CIPHER_SUITE_LEN != 0 {
        return Err(Refusal::Malformed("cipher_suites"));
    }
    if r.vec8("compression_methods")?.is_empty() {
        return Err(Refusal::Malformed("compression_methods"));
    }
    let mut ja4 = ja4::Builder::new(legacy_version, suites);
    // Hellos from before extensions (RFC 5246 7.4.1.2) may end here: no SNI to route on.
    if r.is_empty() {
        return Ok((None, ja4.finish()));
    }
    let extensions = r.vec16("extensions")?;
    if !r.is_empty() {
        return Err(Refusal::Malformed("client_hello"));
    }
    let host_name = find_host_name(extensions, &mut ja4)?;
    let ja4 = ja4.finish();
    match host_name {
        Some(raw) => ServerName::parse(raw)
            .map(|name| (Some(name), ja4))
            .map_err(Refusal::BadServerName),
        None => Ok((None, ja4)),
    }
}

/// Finds the server_name extension's host_name, handing every extension to `ja4` on the way;
/// the parser itself skips the others unread.
fn find_host_name<'a>(
    extensions: &'a [u8],
    ja4: &mut ja4::Builder<'a>,
) -> Result<Option<&'a [u8]>, Refusal> {
    let mut r = Reader(extensions);
    let mut found = None;
    while !r.is_empty() {
        let ty = r.u16("extensions")?;
        let data = r.vec16("extensions")?;
        ja4.extension(ty, data);
        if ty == EXTENSION_SERVER_NAME {
            // At most one extension per type (RFC 8446 4.2): two could route one way while
            // the backend serves the other.
            if found.is_some() {
                return Err(Refusal::Malformed("server_name"));
            }
            found = Some(host_name(data)?);
        }
    }
    Ok(found.flatten())
}

/// Reads a ServerNameList (RFC 6066 3) and returns its host_name entry, if any.
fn host_name(data: &[u8]) -> Result<Option<&[u8]>, Refusal> {
    let mut ext = Reader(data);
    let list = ext.vec16("server_name")?;
    if list.is_empty() || !ext.is_empty() {
        return Err(Refusal::Malformed("server_name"));
    }
    let mut list = Reader(list);
    let mut host = None;
    while !list.is_empty() {
        let name_type = list.u8("server_name")?;
        let name = list.vec16("server_name")?;
        if name_type == NAME_TYPE_HOST_NAME {
            // At most one name per type (RFC 6066 3), for the same reason as above.
            if host.is_some() {
                return Err(Refusal::Malformed("server_name"));
            }
            host = Some(name);
        }
    }
    Ok(host)
}

/// A cursor over a structure the framing delivered whole: running past its end is a malformed
/// message, never a short read.
struct Reader<'a>(&'a [u8]);

// === impl Reader ===

impl<'a> Reader<'a> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], Refusal> {
        let (head, rest) = self
            .0
            .split_at_checked(n)
            .ok_or(Refusal::Malformed(field))?;
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, Refusal> {
        let (&b, rest) = self.0.split_first().ok_or(Refusal::Malformed(field))?;
        self.0 = rest;
        Ok(b)
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, Refusal> {
        let (b, rest) = self
            .0
            .split_first_chunk::<2>()
            .ok_or(Refusal::Malformed(field))?;
        self.0 = rest;
        Ok(u16::from_be_bytes(*b))
    }

    /// An opaque vector with a one-byte length.
    fn vec8(&mut self, field: &'static str) -> Result<&'a [u8], Refusal> {
        let n = self.u8(field)?;
        self.take(n.into(), field)
    }

    /// An opaque vector with a two-byte length.
    fn vec16(&mut self, field: &'static str) -> Result<&'a [u8], Refusal> {
        let n = self.u16(field)?;
        self.take(n.into(), field)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Room for every fixture, so only the bytes decide.
    const MAX: usize = 16_384;
    const SNI: &str = "api.example.test";

    macro_rules! fixture {
        ($file:literal, $sni:expr) => {
            (
                $file,
                include_bytes!(concat!("../../tests/fixtures/clienthellos/", $file)).as_slice(),
                $sni,
            )
        };
    }

    /// (file, bytes, expected SNI): see tests/fixtures/clienthellos/README.md.
    const FIXTURES: &[(&str, &[u8], Option<&str>)] = &[
        fixture!("chromium-156-pq.bin", Some(SNI)),
        fixture!("curl-7.88.bin", Some(SNI)),
        fixture!("gnutls.bin", Some(SNI)),
        fixture!("java-17.bin", Some(SNI)),
        fixture!("kubectl-go.bin", Some(SNI)),
        fixture!("node-20.bin", Some(SNI)),
        fixture!("openssl-3.0-4-records.bin", Some(SNI)),
        fixture!("openssl-3.0.bin", Some(SNI)),
        fixture!("openssl-noservername.bin", None),
        fixture!("python-3.11.bin", Some(SNI)),
    ];

    fn fixture(file: &str) -> &'static [u8] {
        FIXTURES.iter().find(|f| f.0 == file).unwrap().1
    }

    fn hello(sni: Option<&str>, len: usize) -> Parsed {
        Parsed::Hello(ClientHello {
            server_name: sni.map(|s| ServerName::parse(s.as_bytes()).unwrap()),
            len,
            ja4: blank(),
        })
    }

    /// The parser with the fingerprint blanked: the routing and framing tests compare whole
    /// hellos, and the fingerprint has tests of its own (the `ja4_` ones, and in ja4.rs).
    fn parse(buf: &[u8], max_len: usize) -> Parsed {
        match super::parse(buf, max_len) {
            Parsed::Hello(hello) => Parsed::Hello(ClientHello {
                ja4: blank(),
                ..hello
            }),
            more_or_refused => more_or_refused,
        }
    }

    fn blank() -> Ja4 {
        ja4::Builder::new(0, &[]).finish()
    }

    /// The JA4 of the hello `wire` carries.
    fn fingerprint(wire: &[u8]) -> String {
        match super::parse(wire, MAX) {
            Parsed::Hello(hello) => hello.ja4.to_string(),
            other => panic!("no hello: {other:?}"),
        }
    }

    /// A row of tests/fixtures/ja4/expected.tsv, with the hello it names.
    struct Ja4Fixture {
        file: String,
        wire: Vec<u8>,
        ja4: String,
        reference: String,
        note: String,
    }

    fn ja4_fixtures() -> Vec<Ja4Fixture> {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/");
        let table = std::fs::read_to_string(format!("{dir}ja4/expected.tsv")).unwrap();
        table
            .lines()
            .filter(|line| !line.starts_with('#'))
            .map(|line| {
                let fields: Vec<&str> = line.split('\t').collect();
                let [file, ja4, reference, _pcap, _stream, note] = fields[..] else {
                    panic!("bad row: {line}");
                };
                Ja4Fixture {
                    file: file.to_owned(),
                    wire: std::fs::read(format!("{dir}{file}")).unwrap(),
                    ja4: ja4.to_owned(),
                    reference: reference.to_owned(),
                    note: note.to_owned(),
                }
            })
            .collect()
    }

    fn malformed(field: &'static str) -> Parsed {
        Parsed::Refused(Refusal::Malformed(field))
    }

    /// The handshake bytes the records of `wire` carry, in order.
    fn handshake_bytes(wire: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut rest = wire;
        while rest.len() >= RECORD_HEADER_LEN {
            let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
            out.extend_from_slice(&rest[RECORD_HEADER_LEN..RECORD_HEADER_LEN + len]);
            rest = &rest[RECORD_HEADER_LEN + len..];
        }
        out
    }

    /// Frames `handshake` into handshake records carrying `size` bytes each (the last one less).
    fn records(handshake: &[u8], size: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for chunk in handshake.chunks(size) {
            out.extend_from_slice(&[CONTENT_TYPE_HANDSHAKE, 3, 1]);
            out.extend_from_slice(&u16::try_from(chunk.len()).unwrap().to_be_bytes());
            out.extend_from_slice(chunk);
        }
        out
    }

    fn vec8(data: &[u8]) -> Vec<u8> {
        let mut out = vec![u8::try_from(data.len()).unwrap()];
        out.extend_from_slice(data);
        out
    }

    fn vec16(data: &[u8]) -> Vec<u8> {
        let mut out = u16::try_from(data.len()).unwrap().to_be_bytes().to_vec();
        out.extend_from_slice(data);
        out
    }

    fn extension(ty: u16, data: &[u8]) -> Vec<u8> {
        let mut out = ty.to_be_bytes().to_vec();
        out.extend(vec16(data));
        out
    }

    fn sni_extension(name: &[u8]) -> Vec<u8> {
        let mut entry = vec![NAME_TYPE_HOST_NAME];
        entry.extend(vec16(name));
        extension(EXTENSION_SERVER_NAME, &vec16(&entry))
    }

    /// A synthetic hello, valid until a test breaks one field.
    struct Builder {
        session_id: Vec<u8>,
        suites: Vec<u8>,
        compression: Vec<u8>,
        /// The extensions block's contents; `None` for a hello without one.
        extensions: Option<Vec<u8>>,
        /// Bytes after the extensions block, inside the handshake message.
        trailing: Vec<u8>,
    }

    impl Default for Builder {
        fn default() -> Self {
            Self {
                session_id: vec![0x5e; 32],
                suites: vec![0x13, 0x01, 0x13, 0x02],
                compression: vec![0],
                extensions: Some(sni_extension(SNI.as_bytes())),
                trailing: Vec::new(),
            }
        }
    }

    impl Builder {
        fn sni(name: &[u8]) -> Self {
            Self {
                extensions: Some(sni_extension(name)),
                ..Self::default()
            }
        }

        fn extensions(extensions: Vec<u8>) -> Self {
            Self {
                extensions: Some(extensions),
                ..Self::default()
            }
        }

        fn body(&self) -> Vec<u8> {
            let mut body = vec![3, 3];
            body.extend_from_slice(&[0xaa; RANDOM_LEN]);
            body.extend(vec8(&self.session_id));
            body.extend(vec16(&self.suites));
            body.extend(vec8(&self.compression));
            if let Some(extensions) = &self.extensions {
                body.extend(vec16(extensions));
            }
            body.extend_from_slice(&self.trailing);
            body
        }

        fn handshake(&self) -> Vec<u8> {
            let body = self.body();
            let mut out = vec![HANDSHAKE_CLIENT_HELLO];
            out.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes()[1..]);
            out.extend(body);
            out
        }

        fn wire(&self) -> Vec<u8> {
            records(&self.handshake(), MAX_RECORD_LEN)
        }
    }

    /// Every strict prefix of `wire` must ask for more, and `wire` itself must give `expected`.
    fn check_all_prefixes(wire: &[u8], expected: &Parsed) {
        for n in 0..wire.len() {
            assert_eq!(
                parse(&wire[..n], MAX),
                Parsed::NeedMore,
                "prefix of {n} bytes"
            );
        }
        assert_eq!(&parse(wire, MAX), expected);
    }

    /// Feeding `wire` in growing prefixes of `step` bytes through one [`Progress`] must give,
    /// at every prefix, what [`parse`] gives on it alone, until the answer is final.
    fn check_incremental(wire: &[u8], max: usize, step: usize) {
        let mut progress = Progress::default();
        let mut n = 0;
        loop {
            // The fingerprint included: the incremental path must give it too.
            let once = super::parse(&wire[..n], max);
            assert_eq!(
                parse_more(&mut progress, &wire[..n], max),
                once,
                "prefix of {n} bytes in steps of {step}"
            );
            if once != Parsed::NeedMore || n == wire.len() {
                return;
            }
            n = (n + step).min(wire.len());
        }
    }

    #[test]
    fn parsing_as_bytes_arrive_agrees_with_parsing_at_once() {
        let openssl = handshake_bytes(fixture("openssl-3.0.bin"));
        let mut server_hello = fixture("openssl-3.0.bin").to_vec();
        server_hello[5] = 2;
        let mut cases: Vec<(Vec<u8>, usize)> =
            FIXTURES.iter().map(|f| (f.1.to_vec(), MAX)).collect();
        for size in [1, 3, 4, 5, 317] {
            cases.push((records(&openssl, size), MAX));
            // Too large, decided from a header or from the bytes buffered.
            cases.push((records(&openssl, size), 400));
        }
        cases.push((records(&handshake_bytes(&server_hello), 1), MAX));
        let mut broken = records(&openssl, 2);
        broken[7 * 20] = 23;
        cases.push((broken, MAX));
        for (wire, max) in &cases {
            for step in [1, 2, 5, 6, 7, 100] {
                check_incremental(wire, *max, step);
            }
        }
    }

    #[test]
    fn fixtures_give_their_sni_and_length() {
        for &(file, wire, sni) in FIXTURES {
            assert_eq!(parse(wire, MAX), hello(sni, wire.len()), "{file}");
            // The limit is inclusive: a hello of exactly max_len bytes is accepted.
            assert_eq!(parse(wire, wire.len()), hello(sni, wire.len()), "{file}");
        }
    }

    #[test]
    fn every_strict_prefix_of_a_fixture_needs_more() {
        for &(_, wire, sni) in FIXTURES {
            check_all_prefixes(wire, &hello(sni, wire.len()));
        }
    }

    #[test]
    fn bytes_after_the_hello_are_ignored() {
        let next_record = [20, 3, 3, 0, 1, 1]; // change_cipher_spec, as TLS 1.3 clients send
        let junk = b"\xff\x00 GET / HTTP/1.1\r\n";
        for &(file, wire, sni) in FIXTURES {
            for tail in [&next_record[..], junk, fixture("curl-7.88.bin")] {
                let buf = [wire, tail].concat();
                assert_eq!(parse(&buf, MAX), hello(sni, wire.len()), "{file}");
            }
        }
    }

    #[test]
    fn a_hello_reframed_into_records_of_any_size_gives_the_same_sni() {
        for file in ["openssl-3.0.bin", "chromium-156-pq.bin"] {
            let handshake = handshake_bytes(fixture(file));
            let sizes = (1..=64).chain([100, 255, 511, 512, 1000, handshake.len(), MAX_RECORD_LEN]);
            for size in sizes {
                let wire = records(&handshake, size);
                assert_eq!(
                    parse(&wire, MAX),
                    hello(Some(SNI), wire.len()),
                    "{file} in {size}"
                );
            }
        }
        let handshake = handshake_bytes(fixture("openssl-3.0.bin"));
        for size in [1, 3, 4, 5, 317] {
            let wire = records(&handshake, size);
            check_all_prefixes(&wire, &hello(Some(SNI), wire.len()));
        }
    }

    #[test]
    fn reassembled_records_match_the_fixture_split() {
        let four = fixture("openssl-3.0-4-records.bin");
        let handshake = handshake_bytes(four);
        assert_eq!(records(&handshake, 512), four);
        let one = records(&handshake, MAX_RECORD_LEN);
        assert_eq!(parse(&one, MAX), hello(Some(SNI), one.len()));
    }

    #[test]
    fn server_name_is_normalised() {
        let wire = Builder::sni(b"API.Example.TEST.").wire();
        assert_eq!(parse(&wire, MAX), hello(Some(SNI), wire.len()));
    }

    #[test]
    fn hellos_without_server_name() {
        let cases = [
            Builder {
                extensions: None,
                ..Builder::default()
            },
            Builder::extensions(Vec::new()),
            Builder::extensions(
                [
                    extension(16, b"\x00\x03\x02h2"),
                    extension(0xfe0d, &[7; 200]),
                ]
                .concat(),
            ),
            // A ServerNameList whose only entry is of an unknown name type.
            Builder::extensions(extension(
                EXTENSION_SERVER_NAME,
                &vec16(&[&[1][..], &vec16(b"x")].concat()),
            )),
        ];
        for case in cases {
            let wire = case.wire();
            check_all_prefixes(&wire, &hello(None, wire.len()));
        }
    }

    #[test]
    fn server_name_among_other_extensions() {
        let extensions = [
            extension(0x0a0a, b""),
            extension(21, &[0; 300]),
            sni_extension(b"kube.example.test"),
            extension(43, b"\x04\x03\x04\x03\x03"),
        ];
        let wire = Builder::extensions(extensions.concat()).wire();
        assert_eq!(
            parse(&wire, MAX),
            hello(Some("kube.example.test"), wire.len())
        );
    }

    #[test]
    fn not_tls() {
        let cases: [&[u8]; 8] = [
            b"GET / HTTP/1.1\r\n",
            b"SSH-2.0-OpenSSH_9.6\r\n",
            b"G",
            b"\x00",
            // SSLv2-compatible hello: not routable.
            b"\x80\x2e\x01\x03\x01",
            b"\x16\x02",
            b"\x16\x03\x05",
            b"\x17\x03\x03\x00\x10",
        ];
        for case in cases {
            assert_eq!(
                parse(case, MAX),
                Parsed::Refused(Refusal::NotTls),
                "{case:?}"
            );
        }
        assert_eq!(parse(b"", MAX), Parsed::NeedMore);
        assert_eq!(parse(b"\x16\x03", MAX), Parsed::NeedMore);
    }

    #[test]
    fn too_large() {
        let too_large = Parsed::Refused(Refusal::TooLarge);
        let chromium = fixture("chromium-156-pq.bin");
        assert_eq!(parse(chromium, chromium.len() - 1), too_large);
        // Decided from the record header alone: its record ends past the limit.
        assert_eq!(parse(&chromium[..5], 1024), too_large);
        assert_eq!(parse(&chromium[..4], 1024), Parsed::NeedMore);

        // Decided from the handshake header: the other three records cannot fit in 1000 bytes.
        let four = fixture("openssl-3.0-4-records.bin");
        assert_eq!(parse(&four[..9], 1000), too_large);
        assert_eq!(parse(&four[..8], 1000), Parsed::NeedMore);
        assert_eq!(parse(four, four.len() - 1), too_large);

        // A handshake claiming 16 MiB in a small first record.
        let huge = [22, 3, 1, 0, 4, 1, 0xff, 0xff, 0xff];
        assert_eq!(parse(&huge, MAX), too_large);
        assert_eq!(parse(&huge[..8], MAX), Parsed::NeedMore);

        // No header says too much, but max_len bytes are buffered and the hello is incomplete.
        let tiny = [22, 3, 1, 0, 1, 1, 22, 3, 1, 0, 1];
        assert_eq!(parse(&tiny, 10), too_large);
        assert_eq!(parse(&tiny[..9], 10), Parsed::NeedMore);
        assert_eq!(parse(b"", 0), too_large);
    }

    #[test]
    fn malformed_framing() {
        let openssl = fixture("openssl-3.0.bin");
        let four = fixture("openssl-3.0-4-records.bin");
        assert_eq!(parse(&[22, 3, 1, 0, 0], MAX), malformed("record length"));
        assert_eq!(
            parse(&[22, 3, 1, 0x40, 0x01], MAX),
            malformed("record length")
        );

        let second = 5 + 512;
        for (offset, byte, field) in [
            (0, 23, "record type"),
            (0, 21, "record type"),
            (1, 2, "record version"),
            (2, 9, "record version"),
        ] {
            let mut wire = four.to_vec();
            wire[second + offset] = byte;
            assert_eq!(parse(&wire, MAX), malformed(field));
            // Refused as soon as that byte arrives.
            assert_eq!(parse(&wire[..second + offset + 1], MAX), malformed(field));
        }

        let mut server_hello = openssl.to_vec();
        server_hello[5] = 2;
        assert_eq!(parse(&server_hello[..6], MAX), malformed("handshake type"));
        // The handshake header split over records is still checked byte by byte.
        let split = records(&handshake_bytes(&server_hello), 1);
        assert_eq!(parse(&split[..6], MAX), malformed("handshake type"));

        // A handshake length too short for the body it should frame.
        let mut short = openssl.to_vec();
        short[6..9].copy_from_slice(&[0, 0, 10]);
        assert_eq!(parse(&short, MAX), malformed("random"));
    }

    #[test]
    fn malformed_hello() {
        let cases = [
            (
                Builder {
                    session_id: vec![0; 33],
                    ..Builder::default()
                },
                "session_id",
            ),
            (
                Builder {
                    suites: vec![0x13, 0x01, 0x13],
                    ..Builder::default()
                },
                "cipher_suites",
            ),
            (
                Builder {
                    suites: Vec::new(),
                    ..Builder::default()
                },
                "cipher_suites",
            ),
            (
                Builder {
                    compression: Vec::new(),
                    ..Builder::default()
                },
                "compression_methods",
            ),
            (
                Builder {
                    trailing: vec![0],
                    ..Builder::default()
                },
                "client_hello",
            ),
            (Builder::extensions(vec![0, 16, 0, 9, 1, 2]), "extensions"),
            (Builder::extensions(vec![0, 16, 0]), "extensions"),
            (
                Builder::extensions([sni_extension(b"a.test"), sni_extension(b"a.test")].concat()),
                "server_name",
            ),
            (
                Builder::extensions(extension(EXTENSION_SERVER_NAME, b"")),
                "server_name",
            ),
            (
                Builder::extensions(extension(EXTENSION_SERVER_NAME, &vec16(b""))),
                "server_name",
            ),
            (
                Builder::extensions(extension(
                    EXTENSION_SERVER_NAME,
                    &[vec16(b"\x00\x00\x01a"), vec![0]].concat(),
                )),
                "server_name",
            ),
            (
                Builder::extensions(extension(EXTENSION_SERVER_NAME, &vec16(b"\x00\x00\x09a"))),
                "server_name",
            ),
            (
                Builder::extensions(extension(
                    EXTENSION_SERVER_NAME,
                    &vec16(b"\x00\x00\x01a\x00\x00\x01b"),
                )),
                "server_name",
            ),
        ];
        for (case, field) in cases {
            let wire = case.wire();
            check_all_prefixes(&wire, &malformed(field));
            // The same across records.
            assert_eq!(parse(&records(&case.handshake(), 7), MAX), malformed(field));
        }

        // The extensions block claims more than the message holds.
        let mut wire = Builder::default().wire();
        let at = 5 + 4 + 2 + RANDOM_LEN + 1 + 32 + 2 + 4 + 1 + 1;
        wire[at] += 1;
        assert_eq!(parse(&wire, MAX), malformed("extensions"));
    }

    #[test]
    fn bad_server_name() {
        for (name, why) in [
            (&b"api example.test"[..], NameError::BadByte(b' ')),
            (b"api\0.example.test", NameError::BadByte(0)),
            (b"", NameError::Empty),
            (b"a..test", NameError::EmptyLabel),
        ] {
            let wire = Builder::sni(name).wire();
            check_all_prefixes(&wire, &Parsed::Refused(Refusal::BadServerName(why)));
        }
    }

    #[test]
    fn ja4_of_the_reference_pcaps_and_the_captured_hellos() {
        let fixtures = ja4_fixtures();
        assert_eq!(fixtures.len(), 24);
        for f in fixtures {
            assert_eq!(fingerprint(&f.wire), f.ja4, "{}", f.file);
            // Where the spec and FoxIO's tools part, the table says why.
            assert!(f.ja4 == f.reference || !f.note.is_empty(), "{}", f.file);
        }
    }

    #[test]
    fn ja4_is_the_same_however_the_hello_is_framed() {
        for f in ja4_fixtures() {
            let handshake = handshake_bytes(&f.wire);
            for size in [1, 4, 7, 100, 512, MAX_RECORD_LEN] {
                assert_eq!(
                    fingerprint(&records(&handshake, size)),
                    f.ja4,
                    "{} in {size}",
                    f.file
                );
            }
        }
    }

    #[test]
    fn ja4_of_synthetic_hellos() {
        let no_extensions = Builder {
            extensions: None,
            ..Builder::default()
        };
        // TLS 1.2 from legacy_version, no SNI, 1301 and 1302, nothing else.
        assert_eq!(
            fingerprint(&no_extensions.wire()),
            "t12i020000_62ed6f6ca7ad_000000000000"
        );
        // A server_name extension with no host_name still marks the hello "d".
        let unknown_name_type = Builder::extensions(extension(
            EXTENSION_SERVER_NAME,
            &vec16(&[&[1][..], &vec16(b"x")].concat()),
        ));
        let wire = unknown_name_type.wire();
        assert_eq!(parse(&wire, MAX), hello(None, wire.len()));
        assert_eq!(fingerprint(&wire), "t12d020100_62ed6f6ca7ad_000000000000");
    }

    #[test]
    fn refusals_name_the_field() {
        assert_eq!(
            Refusal::Malformed("session_id").to_string(),
            "malformed ClientHello: session_id"
        );
    }
}
