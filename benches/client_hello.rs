//! ClientHello parsing: the hand-written cursor in `proxy::internals::client_hello` against a baseline
//! that parses the hello body with `tls-parser` (same record handling: borrowed when one record
//! carries the hello, copied otherwise), on captured hellos in one record and split over several.
//! The hand-written parser also computes the hello's JA4 (the baseline does not); `ja4_display`
//! is what printing that fingerprint on a log line adds.
//!
//! Then the cost of a hello that arrives one byte-sized record per read, parsed after each
//! read: with the record layer's [`client_hello::Progress`] carried between reads (what the
//! proxy does) and from scratch each time (quadratic in the records).
//!
//! `cargo bench --bench client_hello` (add `-- --quick` for a rough run).

use std::borrow::Cow;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use proxy::internals::client_hello::{self, ClientHello, Parsed, Progress};
use proxy::ServerName;
use tls_parser::{SNIType, TlsExtension, TlsMessage, TlsMessageHandshake};

/// The limit the proxy runs with by default; every case fits.
const MAX_LEN: usize = 16_384;
/// TLS record header length (RFC 8446 5.1).
const RECORD_HEADER_LEN: usize = 5;
/// The fragment size `openssl s_client -max_send_frag 512` uses, applied to chromium's hello.
const SPLIT_FRAGMENT_LEN: usize = 512;

const OPENSSL: &[u8] = include_bytes!("../tests/fixtures/clienthellos/openssl-3.0.bin");
const CURL: &[u8] = include_bytes!("../tests/fixtures/clienthellos/curl-7.88.bin");
const CHROMIUM: &[u8] = include_bytes!("../tests/fixtures/clienthellos/chromium-156-pq.bin");
const OPENSSL_4_RECORDS: &[u8] =
    include_bytes!("../tests/fixtures/clienthellos/openssl-3.0-4-records.bin");
/// The largest `max_client_hello` the per-read cases need: 16,384 one-byte records are 96 KiB.
const PER_READ_MAX_LEN: usize = 128 * 1024;

#[path = "../tests/common/hellos.rs"]
mod hellos;

/// The fragments of the records in `wire`, in order.
fn fragments(wire: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = wire;
    std::iter::from_fn(move || {
        let (header, after) = rest.split_first_chunk::<RECORD_HEADER_LEN>()?;
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        let (fragment, after) = after.split_at_checked(len)?;
        rest = after;
        Some(fragment)
    })
}

/// `handshake` framed into handshake records of at most `size` bytes.
fn reframe(handshake: &[u8], size: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for chunk in handshake.chunks(size) {
        out.extend_from_slice(&[22, 3, 1]);
        out.extend_from_slice(&u16::try_from(chunk.len()).unwrap().to_be_bytes());
        out.extend_from_slice(chunk);
    }
    out
}

/// The baseline: records as `client_hello` handles them, the body through tls-parser.
fn tls_parser_sni(wire: &[u8]) -> Option<ServerName> {
    let first = fragments(wire).next()?;
    let body_len = usize::from(first[1]) << 16 | usize::from(first[2]) << 8 | usize::from(first[3]);
    let hs_len = 4 + body_len;
    let message: Cow<[u8]> = if first.len() >= hs_len {
        Cow::Borrowed(first)
    } else {
        let mut out = Vec::with_capacity(hs_len);
        for fragment in fragments(wire) {
            out.extend_from_slice(fragment);
            if out.len() >= hs_len {
                break;
            }
        }
        Cow::Owned(out)
    };
    let (_, TlsMessage::Handshake(TlsMessageHandshake::ClientHello(hello))) =
        tls_parser::parse_tls_message_handshake(&message).ok()?
    else {
        return None;
    };
    let (rest, extensions) = tls_parser::parse_tls_client_hello_extensions(hello.ext?).ok()?;
    if !rest.is_empty() {
        return None;
    }
    extensions.iter().find_map(|ext| match ext {
        TlsExtension::SNI(names) => names
            .iter()
            .find(|(ty, _)| *ty == SNIType::HostName)
            .and_then(|(_, name)| ServerName::parse(name).ok()),
        _ => None,
    })
}

fn bench(c: &mut Criterion) {
    let split = |wire: &[u8], size| {
        reframe(
            &fragments(wire).flatten().copied().collect::<Vec<_>>(),
            size,
        )
    };
    let chromium_split = split(CHROMIUM, SPLIT_FRAGMENT_LEN);
    // The small hellos split as a middlebox or a tiny-MTU client might: records of 100 bytes.
    let openssl_split = split(OPENSSL, 100);
    let curl_split = split(CURL, 100);
    let cases: [(&str, &[u8]); 7] = [
        ("openssl-3.0 322B 1rec", OPENSSL),
        ("openssl-3.0 337B 4rec", &openssl_split),
        ("curl-7.88 517B 1rec", CURL),
        ("curl-7.88 542B 6rec", &curl_split),
        ("chromium-pq 2020B 1rec", CHROMIUM),
        ("chromium-pq 2035B 4rec", &chromium_split),
        ("openssl-3.0 1903B 4rec", OPENSSL_4_RECORDS),
    ];

    let mut group = c.benchmark_group("client_hello");
    for (name, wire) in cases {
        // Both must read the same name before their speed means anything.
        let Parsed::Hello(ClientHello {
            server_name: Some(sni),
            len,
            ..
        }) = client_hello::parse(wire, MAX_LEN)
        else {
            panic!("{name}: no hello");
        };
        assert_eq!(len, wire.len(), "{name}");
        assert_eq!(tls_parser_sni(wire).as_ref(), Some(&sni), "{name}");

        group.throughput(Throughput::Bytes(wire.len() as u64));
        group.bench_with_input(BenchmarkId::new("hand_written", name), wire, |b, wire| {
            b.iter(|| client_hello::parse(black_box(wire), MAX_LEN))
        });
        group.bench_with_input(BenchmarkId::new("tls_parser", name), wire, |b, wire| {
            b.iter(|| tls_parser_sni(black_box(wire)))
        });
    }
    group.finish();

    let Parsed::Hello(hello) = client_hello::parse(CHROMIUM, MAX_LEN) else {
        panic!("chromium: no hello");
    };
    c.bench_function("ja4_display", |b| {
        b.iter(|| black_box(hello.ja4).to_string())
    });
}

/// Parses the hello in `records` once per record, as each arrives; returns the final answer.
fn parse_per_read(records: &[Vec<u8>], wire: &mut Vec<u8>, incremental: bool) -> Parsed {
    wire.clear();
    let mut progress = Progress::default();
    let mut parsed = Parsed::NeedMore;
    for record in records {
        wire.extend_from_slice(record);
        parsed = if incremental {
            client_hello::parse_more(&mut progress, wire, PER_READ_MAX_LEN)
        } else {
            client_hello::parse(wire, PER_READ_MAX_LEN)
        };
    }
    parsed
}

fn bench_per_read(c: &mut Criterion) {
    let mut group = c.benchmark_group("client_hello_per_read");
    // The from-scratch case at 16,384 records takes a second an iteration.
    group.sample_size(10);
    for count in [4096, 16_384] {
        let records = hellos::records(&hellos::padded_handshake(OPENSSL, count), 1);
        let mut wire = Vec::with_capacity(PER_READ_MAX_LEN);
        assert!(
            matches!(parse_per_read(&records, &mut wire, true), Parsed::Hello(h) if h.len == wire.len()),
            "{count} records: no hello"
        );
        group.throughput(Throughput::Elements(count as u64));
        for (name, incremental) in [("progress", true), ("from_scratch", false)] {
            group.bench_with_input(BenchmarkId::new(name, count), &records, |b, records| {
                b.iter(|| parse_per_read(black_box(records), &mut wire, incremental))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench, bench_per_read);
criterion_main!(benches);
