//! Valid ClientHellos built from the fuzz input, framed into records of arbitrary sizes and fed
//! in arbitrary segments: `client_hello::parse_more`, carrying its `Progress` from segment to
//! segment as the proxy does, must ask for more until the last record is in, then find exactly
//! the name that was put in, as `parse` does on the whole (or refuse it as an IP literal when its
//! last label is all digits, as RFC 6066 and `ServerName` require).
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use proxy::internals::client_hello::{parse, parse_more, Parsed, Progress, Refusal};
use proxy::NameError;

/// Largest record fragment (RFC 8446 5.1).
const MAX_RECORD_LEN: usize = 16_384;
/// Vectors with a two-byte length hold at most this much.
const MAX_VEC16: usize = u16::MAX as usize;
/// Longest label and name a hostname may have (RFC 1035 2.3.4).
const MAX_LABEL_LEN: usize = 63;
const MAX_NAME_LEN: usize = 253;
/// Segments tried per input: with the progress carried, each costs only its own bytes.
const MAX_SEGMENTS: usize = 256;
/// The bytes a label is drawn from: all valid in a `ServerName`, upper case included to
/// exercise normalisation.
const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_";

#[derive(Arbitrary, Debug)]
struct Input {
    /// Label bytes, mapped into ALPHABET; no labels means no server_name extension.
    labels: Vec<Vec<u8>>,
    trailing_dot: bool,
    legacy_version: u16,
    random: [u8; 32],
    session_id: Vec<u8>,
    suites: Vec<u16>,
    compression: Vec<u8>,
    /// Present even when empty, unless `omit_extensions` and there is nothing to put in it.
    omit_extensions: bool,
    /// Other extensions, before and after the server_name one.
    before: Vec<Extension>,
    after: Vec<Extension>,
    /// Fragment sizes, used in turn.
    fragments: Vec<u16>,
    /// Record minor versions, used in turn.
    minors: Vec<u8>,
    /// Bytes after the hello's last record.
    trailing: Vec<u8>,
    /// Lengths of the segments the bytes arrive in.
    segments: Vec<u16>,
    /// Slack between the hello's length and the limit it is parsed under.
    slack: u16,
}

#[derive(Arbitrary, Debug)]
struct Extension {
    ty: u16,
    data: Data,
}

#[derive(Arbitrary, Debug)]
enum Data {
    Bytes(Vec<u8>),
    /// Large extensions without large inputs.
    Filled {
        len: u16,
        byte: u8,
    },
}

/// `data` with a big-endian length prefix of `width` bytes.
fn put_vec(out: &mut Vec<u8>, width: usize, data: &[u8]) {
    out.extend_from_slice(&data.len().to_be_bytes()[std::mem::size_of::<usize>() - width..]);
    out.extend_from_slice(data);
}

/// The name as sent and as `ServerName` should report it, or `None` without labels.
fn name(input: &Input) -> Option<(Vec<u8>, String)> {
    let mut sent = Vec::new();
    for label in &input.labels {
        let label: Vec<u8> = label
            .iter()
            .take(MAX_LABEL_LEN)
            .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()])
            .collect();
        let label = if label.is_empty() {
            b"x".to_vec()
        } else {
            label
        };
        let extra = label.len() + usize::from(!sent.is_empty());
        if sent.len() + extra > MAX_NAME_LEN {
            break;
        }
        if !sent.is_empty() {
            sent.push(b'.');
        }
        sent.extend_from_slice(&label);
    }
    if sent.is_empty() {
        return None;
    }
    let expected = String::from_utf8(sent.to_ascii_lowercase()).ok()?;
    if input.trailing_dot {
        sent.push(b'.');
    }
    Some((sent, expected))
}

/// Appends each extension whole while the block stays within a two-byte length.
fn put_extensions(block: &mut Vec<u8>, extensions: &[Extension]) {
    for ext in extensions {
        let data = match &ext.data {
            Data::Bytes(bytes) => bytes.clone(),
            Data::Filled { len, byte } => vec![*byte; usize::from(*len)],
        };
        let data = &data[..data.len().min(MAX_VEC16)];
        if block.len() + 4 + data.len() > MAX_VEC16 {
            continue;
        }
        // Any type but server_name (0): a second one would rightly be refused.
        block.extend_from_slice(&ext.ty.max(1).to_be_bytes());
        put_vec(block, 2, data);
    }
}

fn client_hello_body(input: &Input, name: Option<&[u8]>) -> Vec<u8> {
    let mut body = input.legacy_version.to_be_bytes().to_vec();
    body.extend_from_slice(&input.random);
    put_vec(
        &mut body,
        1,
        &input.session_id[..input.session_id.len().min(32)],
    );
    let mut suites: Vec<u8> = input.suites.iter().flat_map(|s| s.to_be_bytes()).collect();
    suites.truncate(MAX_VEC16 - 1);
    if suites.is_empty() {
        suites.extend_from_slice(&[0x13, 0x01]);
    }
    put_vec(&mut body, 2, &suites);
    let compression = match input.compression.as_slice() {
        [] => &[0][..],
        c => &c[..c.len().min(255)],
    };
    put_vec(&mut body, 1, compression);

    let mut block = Vec::new();
    put_extensions(&mut block, &input.before);
    if let Some(name) = name {
        let mut entry = vec![0]; // host_name
        put_vec(&mut entry, 2, name);
        let mut list = Vec::new();
        put_vec(&mut list, 2, &entry);
        let mut ext = vec![0, 0]; // server_name
        put_vec(&mut ext, 2, &list);
        // The name must go in even if the other extensions have to make room.
        while block.len() + ext.len() > MAX_VEC16 {
            block.clear();
        }
        block.extend_from_slice(&ext);
    }
    put_extensions(&mut block, &input.after);
    if !(block.is_empty() && input.omit_extensions) {
        put_vec(&mut body, 2, &block);
    }
    body
}

fn records(input: &Input, handshake: &[u8]) -> Vec<u8> {
    let mut wire = Vec::new();
    let mut rest = handshake;
    let mut i = 0;
    while !rest.is_empty() {
        let size = match input.fragments.get(i % input.fragments.len().max(1)) {
            Some(&s) => 1 + usize::from(s) % MAX_RECORD_LEN,
            None => MAX_RECORD_LEN,
        };
        let minor = input
            .minors
            .get(i % input.minors.len().max(1))
            .map_or(1, |m| m % 5);
        let (fragment, after) = rest.split_at(size.min(rest.len()));
        wire.extend_from_slice(&[22, 3, minor]);
        put_vec(&mut wire, 2, fragment);
        rest = after;
        i += 1;
    }
    wire
}

fuzz_target!(|input: Input| {
    let name = name(&input);
    let body = client_hello_body(&input, name.as_ref().map(|(sent, _)| sent.as_slice()));
    let mut handshake = vec![1];
    put_vec(&mut handshake, 3, &body);
    let wire = records(&input, &handshake);
    let max_len = wire.len() + usize::from(input.slack);
    let buf = [wire.as_slice(), &input.trailing].concat();

    let mut progress = Progress::default();
    let mut cut = 0;
    for segment in input.segments.iter().take(MAX_SEGMENTS) {
        cut = (cut + usize::from(*segment)).min(buf.len());
        if cut >= wire.len() {
            break;
        }
        assert_eq!(
            parse_more(&mut progress, &buf[..cut], max_len),
            Parsed::NeedMore,
            "{cut} of {}",
            wire.len()
        );
    }
    let whole = parse(&buf, max_len);
    assert_eq!(parse_more(&mut progress, &buf, max_len), whole);
    let ip_literal = name.as_ref().is_some_and(|(_, expected)| {
        expected
            .rsplit('.')
            .next()
            .is_some_and(|last| last.bytes().all(|b| b.is_ascii_digit()))
    });
    match whole {
        Parsed::Refused(Refusal::BadServerName(NameError::IpLiteral)) if ip_literal => {}
        Parsed::Hello(hello) if !ip_literal => {
            assert_eq!(hello.len, wire.len());
            assert_eq!(
                hello.server_name.as_ref().map(|n| n.as_str()),
                name.as_ref().map(|(_, expected)| expected.as_str())
            );
        }
        other => panic!("valid hello of {} bytes gave {other:?}", wire.len()),
    }
});
