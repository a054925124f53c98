//! The PROXY protocol reader: never panics, a verdict on a prefix holds for more bytes, a
//! header's length is exact, and what `encode` writes parses back to the same addresses.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use proxy::internals::proxy_protocol::{encode, parse, Expect, Start, Version};

const EXPECTS: [Expect; 3] = [
    Expect::Optional,
    Expect::Required(Version::V1),
    Expect::Required(Version::V2),
];

fuzz_target!(|data: &[u8]| {
    for expect in EXPECTS {
        check_raw(data, expect);
    }
    if let Ok(pair) = Addresses::arbitrary(&mut Unstructured::new(data)) {
        check_round_trip(pair);
    }
});

fn check_raw(data: &[u8], expect: Expect) {
    let verdict = parse(data, expect);
    if let Start::Header(header) = &verdict {
        assert!(header.len <= data.len(), "header longer than the input");
        assert_eq!(
            parse(&data[..header.len], expect),
            verdict,
            "length is not exact"
        );
    }
    // A decision made on a prefix is never taken back by more bytes.
    for cut in [data.len() / 2, data.len().saturating_sub(1)] {
        match parse(&data[..cut], expect) {
            Start::NeedMore => {}
            earlier => assert_eq!(earlier, verdict, "verdict at {cut} bytes changed"),
        }
    }
}

#[derive(Debug, Arbitrary)]
struct Addresses {
    v2: bool,
    client: ([u8; 16], bool, u16),
    local: ([u8; 16], bool, u16),
}

fn addr((bytes, v4, port): ([u8; 16], bool, u16)) -> SocketAddr {
    let ip = if v4 {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(bytes))
    };
    SocketAddr::new(ip, port)
}

fn check_round_trip(pair: Addresses) {
    let version = if pair.v2 { Version::V2 } else { Version::V1 };
    let (client, local) = (addr(pair.client), addr(pair.local));
    let bytes = encode(version, client, local);
    let Start::Header(header) = parse(&bytes, Expect::Required(version)) else {
        panic!("{version} header for {client} -> {local} does not parse");
    };
    assert_eq!(header.len, bytes.len());
    let source = header.source.expect("a PROXY command carries its source");
    // Mixed families travel as IPv6 with the IPv4 side mapped.
    let unmapped = match source.ip() {
        IpAddr::V6(v6) if client.is_ipv4() => v6.to_ipv4_mapped().map_or(source.ip(), IpAddr::V4),
        ip => ip,
    };
    assert_eq!((unmapped, source.port()), (client.ip(), client.port()));
}
