//! The PROXY protocol (HAProxy's v1 text and v2 binary headers), a pure layer over `ppp`.
//!
//! Inbound, a header from a trusted load balancer names the real client; on the ClusterID
//! listener, its TLV 0x20 names the hosted cluster. Outbound, a route can send one to its
//! backend so the hosted kube-apiserver sees who connects.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::Utf8Error;

use ppp::v2;
use ppp::PartialResult;

/// The v2 signature: 12 bytes no text protocol starts with.
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
/// The v1 signature.
const V1_SIGNATURE: &[u8] = b"PROXY ";
/// The longest v1 header, CRLF included (the spec's 107 bytes).
const V1_MAX_LEN: usize = 107;
/// The TLV type HyperShift's node-side proxies put the HostedCluster's `spec.clusterID` in.
pub const CLUSTER_ID_TLV: u8 = 0x20;
/// PP2_TYPE_CRC32C: the header's checksum, which a receiver must verify (spec 2.2.5).
pub const CRC32C_TLV: u8 = 0x03;
/// A TLV's type byte and two length bytes.
const TLV_HEADER_LEN: usize = 3;
/// CRC-32C (Castagnoli, the iSCSI polynomial), the checksum the spec names.
const CRC32C: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

/// A PROXY protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Version {
    /// The text header.
    V1,
    /// The binary header.
    V2,
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::V1 => "v1",
            Self::V2 => "v2",
        })
    }
}

/// Which inbound headers a listener takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Exactly this version, always.
    Required(Version),
    /// Either version, or none (the connection starts with TLS).
    Optional,
}

/// What the bytes read so far hold at the start of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// Too few bytes to tell.
    NeedMore,
    /// No header: the connection starts with its payload (only with [`Expect::Optional`]).
    Absent,
    /// A complete header of `len` bytes.
    Header(Header),
    /// Not a header this listener takes; never becomes one with more bytes.
    Invalid(&'static str),
}

/// What an inbound header says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Bytes the header takes at the start of the stream; the payload follows.
    pub len: usize,
    /// The original client, for PROXY commands over TCP; `None` for v2 LOCAL or UNSPEC and
    /// v1 UNKNOWN, where the load balancer speaks for itself (a health check, unless a
    /// payload follows) and the peer address stands.
    pub source: Option<SocketAddr>,
    /// The address the original client connected to (the load balancer's frontend), where
    /// `source` is given.
    pub destination: Option<SocketAddr>,
    /// The ClusterID TLV (type 0x20), when present, or why its value is not a ClusterID.
    pub cluster_id: Option<Result<Box<str>, Utf8Error>>,
}

/// Reads a PROXY header at the start of `buf`.
pub fn parse(buf: &[u8], expect: Expect) -> Start {
    let v2 = could_be(buf, V2_SIGNATURE);
    let v1 = could_be(buf, V1_SIGNATURE);
    match (expect, v1, v2) {
        (_, Signature::Prefix, _) | (_, _, Signature::Prefix) => Start::NeedMore,
        (Expect::Required(Version::V2) | Expect::Optional, _, Signature::Full) => parse_v2(buf),
        (Expect::Required(Version::V1) | Expect::Optional, Signature::Full, _) => parse_v1(buf),
        (Expect::Optional, Signature::No, Signature::No) => Start::Absent,
        (Expect::Required(Version::V1), _, Signature::Full) => {
            Start::Invalid("a v2 header where v1 is required")
        }
        (Expect::Required(Version::V2), Signature::Full, _) => {
            Start::Invalid("a v1 header where v2 is required")
        }
        (Expect::Required(_), Signature::No, Signature::No) => Start::Invalid("no PROXY header"),
    }
}

enum Signature {
    No,
    Prefix,
    Full,
}

fn could_be(buf: &[u8], signature: &[u8]) -> Signature {
    let n = buf.len().min(signature.len());
    if buf[..n] != signature[..n] {
        Signature::No
    } else if n < signature.len() {
        Signature::Prefix
    } else {
        Signature::Full
    }
}

fn parse_v2(buf: &[u8]) -> Start {
    let header = match v2::Header::try_from(buf) {
        Ok(header) => header,
        Err(e) if e.is_incomplete() => return Start::NeedMore,
        Err(_) => return Start::Invalid("malformed v2 header"),
    };
    let local = header.command == v2::Command::Local;
    // A TCP proxy's client came over a stream; a DGRAM (UDP) header names a client that
    // never connected here, so its addresses must not reach allow lists (HAProxy agrees).
    if !local && header.protocol == v2::Protocol::Datagram {
        return Start::Invalid("a DGRAM (UDP) header on a TCP listener");
    }
    let addresses = match (header.command, header.addresses) {
        (v2::Command::Local, _) => None,
        (_, v2::Addresses::IPv4(a)) => Some((
            SocketAddr::new(IpAddr::V4(a.source_address), a.source_port),
            SocketAddr::new(IpAddr::V4(a.destination_address), a.destination_port),
        )),
        (_, v2::Addresses::IPv6(a)) => Some((
            SocketAddr::new(IpAddr::V6(a.source_address), a.source_port),
            SocketAddr::new(IpAddr::V6(a.destination_address), a.destination_port),
        )),
        (_, v2::Addresses::Unspecified | v2::Addresses::Unix(_)) => None,
    };
    let mut cluster_id = None;
    let mut checksum_at = None;
    // Where the TLV being read starts in the header.
    let mut at = header.len() - header.tlv_bytes().len();
    for tlv in header.tlvs() {
        let Ok(tlv) = tlv else {
            return Start::Invalid("malformed v2 TLV");
        };
        match tlv.kind {
            CLUSTER_ID_TLV => cluster_id = Some(std::str::from_utf8(&tlv.value).map(Box::from)),
            CRC32C_TLV if tlv.value.len() != 4 => {
                return Start::Invalid("v2 CRC32C TLV is not 4 bytes");
            }
            CRC32C_TLV if checksum_at.is_some() => {
                return Start::Invalid("v2 header with two CRC32C TLVs");
            }
            CRC32C_TLV => checksum_at = Some(at + TLV_HEADER_LEN),
            _ => {}
        }
        at += TLV_HEADER_LEN + tlv.value.len();
    }
    if let Some(value_at) = checksum_at {
        if !checksum_holds(header.as_bytes(), value_at) {
            return Start::Invalid("v2 CRC32C checksum does not match the header");
        }
    }
    Start::Header(Header {
        len: header.len(),
        source: addresses.map(|(source, _)| source),
        destination: addresses.map(|(_, destination)| destination),
        cluster_id,
    })
}

/// Whether the CRC32C TLV whose 4-byte value starts at `value_at` in `header` holds the
/// header's checksum: CRC32C (Castagnoli) over the whole header, that value taken as zero
/// (spec section 2.2.5, which says a receiver must verify it).
fn checksum_holds(header: &[u8], value_at: usize) -> bool {
    let (before, rest) = header.split_at(value_at);
    let Some((value, after)) = rest.split_first_chunk::<4>() else {
        return false;
    };
    let mut digest = CRC32C.digest();
    digest.update(before);
    digest.update(&[0; 4]);
    digest.update(after);
    digest.finalize() == u32::from_be_bytes(*value)
}

fn parse_v1(buf: &[u8]) -> Start {
    // Only a whole line is judged: a line cut short can look malformed to the parser.
    let Some(end) = buf
        .windows(2)
        .take(V1_MAX_LEN - 1)
        .position(|w| w == b"\r\n")
    else {
        return if buf.len() >= V1_MAX_LEN {
            Start::Invalid("v1 header longer than 107 bytes")
        } else {
            Start::NeedMore
        };
    };
    // The whole line is here, so an error the parser calls incomplete is final too.
    let Ok(header) = ppp::v1::Header::try_from(&buf[..end + 2]) else {
        return Start::Invalid("malformed v1 header");
    };
    let addresses = match header.addresses {
        ppp::v1::Addresses::Tcp4(a) => Some((
            SocketAddr::new(IpAddr::V4(a.source_address), a.source_port),
            SocketAddr::new(IpAddr::V4(a.destination_address), a.destination_port),
        )),
        ppp::v1::Addresses::Tcp6(a) => Some((
            SocketAddr::new(IpAddr::V6(a.source_address), a.source_port),
            SocketAddr::new(IpAddr::V6(a.destination_address), a.destination_port),
        )),
        ppp::v1::Addresses::Unknown => None,
    };
    Start::Header(Header {
        // The line ends at the first CRLF, whatever the parser read: for UNKNOWN it stops at
        // the first CR (`PROXY UNKNOWN x \n\r\r\n`: 19 bytes to it, the line is 20), and the
        // payload starts after the line.
        len: end + 2,
        source: addresses.map(|(source, _)| source),
        destination: addresses.map(|(_, destination)| destination),
        cluster_id: None,
    })
}

/// The header a route sends its backend: `client` connected to `destination` (what HAProxy's
/// `send-proxy` sends: the addresses a trusted incoming header named, else the connection's
/// own). Mixed families are sent as IPv6, with the IPv4 side mapped.
pub fn encode(version: Version, client: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let (client, destination) = same_family(client, destination);
    match version {
        Version::V1 => {
            let family = if client.is_ipv4() { "TCP4" } else { "TCP6" };
            format!(
                "PROXY {family} {} {} {} {}\r\n",
                client.ip(),
                destination.ip(),
                client.port(),
                destination.port()
            )
            .into_bytes()
        }
        Version::V2 => {
            let header = v2::Builder::with_addresses(
                v2::Version::Two | v2::Command::Proxy,
                v2::Protocol::Stream,
                (client, destination),
            );
            // Building into a Vec cannot fail: the only errors are from io::Write on it.
            header.build().unwrap_or_default()
        }
    }
}

fn same_family(a: SocketAddr, b: SocketAddr) -> (SocketAddr, SocketAddr) {
    match (a, b) {
        (SocketAddr::V4(_), SocketAddr::V4(_)) | (SocketAddr::V6(_), SocketAddr::V6(_)) => (a, b),
        _ => (to_v6(a), to_v6(b)),
    }
}

fn to_v6(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port()),
        v6 => v6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELLO_START: &[u8] = &[0x16, 0x03, 0x01, 0x02, 0x00];

    fn v2_with_cluster_id(id: &str) -> Vec<u8> {
        v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Proxy,
            v2::Protocol::Stream,
            (
                "10.1.2.3:5555".parse::<SocketAddr>().unwrap(),
                "10.9.9.9:6443".parse::<SocketAddr>().unwrap(),
            ),
        )
        .write_tlv(CLUSTER_ID_TLV, id.as_bytes())
        .unwrap()
        .build()
        .unwrap()
    }

    #[test]
    fn v2_header_yields_source_cluster_id_and_length_at_every_split() {
        let mut bytes = v2_with_cluster_id("0b1c2d3e-0000-4000-8000-000000000001");
        let len = bytes.len();
        bytes.extend_from_slice(HELLO_START);
        for cut in 0..len {
            assert_eq!(
                parse(&bytes[..cut], Expect::Required(Version::V2)),
                Start::NeedMore,
                "cut {cut}"
            );
        }
        let want = Start::Header(Header {
            len,
            source: Some("10.1.2.3:5555".parse().unwrap()),
            destination: Some("10.9.9.9:6443".parse().unwrap()),
            cluster_id: Some(Ok("0b1c2d3e-0000-4000-8000-000000000001".into())),
        });
        assert_eq!(parse(&bytes, Expect::Required(Version::V2)), want);
        assert_eq!(parse(&bytes, Expect::Optional), want);
    }

    #[test]
    fn v1_header_yields_source_at_every_split() {
        let mut bytes = b"PROXY TCP6 2001:db8::1 2001:db8::2 40000 443\r\n".to_vec();
        let len = bytes.len();
        bytes.extend_from_slice(HELLO_START);
        for cut in 0..len {
            assert_eq!(
                parse(&bytes[..cut], Expect::Required(Version::V1)),
                Start::NeedMore,
                "cut {cut}"
            );
        }
        assert_eq!(
            parse(&bytes, Expect::Optional),
            Start::Header(Header {
                len,
                source: Some("[2001:db8::1]:40000".parse().unwrap()),
                destination: Some("[2001:db8::2]:443".parse().unwrap()),
                cluster_id: None
            })
        );
    }

    #[test]
    fn optional_passes_tls_through_and_required_refuses_it() {
        assert_eq!(parse(HELLO_START, Expect::Optional), Start::Absent);
        assert_eq!(
            parse(&HELLO_START[..1], Expect::Optional),
            Start::Absent,
            "decided on one byte"
        );
        assert!(matches!(
            parse(HELLO_START, Expect::Required(Version::V2)),
            Start::Invalid(_)
        ));
        assert!(matches!(
            parse(
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
                Expect::Required(Version::V2)
            ),
            Start::Invalid(_)
        ));
        assert!(matches!(
            parse(&v2_with_cluster_id("x"), Expect::Required(Version::V1)),
            Start::Invalid(_)
        ));
    }

    fn v2(command: v2::Command, protocol: v2::Protocol) -> v2::Builder {
        v2::Builder::with_addresses(
            v2::Version::Two | command,
            protocol,
            (
                "10.1.2.3:5555".parse::<SocketAddr>().unwrap(),
                "10.9.9.9:6443".parse::<SocketAddr>().unwrap(),
            ),
        )
    }

    #[test]
    fn local_is_a_header_of_its_own_without_a_client() {
        let bytes = v2(v2::Command::Local, v2::Protocol::Unspecified)
            .build()
            .unwrap();
        let Start::Header(header) = parse(&bytes, Expect::Optional) else {
            panic!("{:?}", parse(&bytes, Expect::Optional));
        };
        assert_eq!(
            (header.source, header.destination),
            (None, None),
            "LOCAL names no client"
        );
    }

    #[test]
    fn a_dgram_family_is_refused_from_a_proxy_command() {
        let dgram = v2(v2::Command::Proxy, v2::Protocol::Datagram)
            .build()
            .unwrap();
        assert_eq!(
            parse(&dgram, Expect::Required(Version::V2)),
            Start::Invalid("a DGRAM (UDP) header on a TCP listener")
        );
        let stream = v2(v2::Command::Proxy, v2::Protocol::Stream)
            .build()
            .unwrap();
        assert!(matches!(
            parse(&stream, Expect::Required(Version::V2)),
            Start::Header(_)
        ));
    }

    #[test]
    fn a_cluster_id_that_is_not_utf8_says_so() {
        let bytes = v2(v2::Command::Proxy, v2::Protocol::Stream)
            .write_tlv(CLUSTER_ID_TLV, &[0xff, 0xfe])
            .unwrap()
            .build()
            .unwrap();
        let Start::Header(header) = parse(&bytes, Expect::Required(Version::V2)) else {
            panic!("not a header");
        };
        assert!(matches!(header.cluster_id, Some(Err(_))));
    }

    /// `header` with a CRC32C TLV holding its checksum (`fix` applied to the value first).
    fn with_checksum(builder: v2::Builder, fix: impl Fn(&mut [u8; 4])) -> Vec<u8> {
        let mut bytes = builder
            .write_tlv(CRC32C_TLV, &[0; 4])
            .unwrap()
            .build()
            .unwrap();
        let value_at = bytes.len() - 4;
        let mut value = CRC32C.checksum(&bytes).to_be_bytes();
        fix(&mut value);
        bytes[value_at..].copy_from_slice(&value);
        bytes
    }

    #[test]
    fn a_crc32c_tlv_is_verified() {
        let v2_id = || {
            v2(v2::Command::Proxy, v2::Protocol::Stream)
                .write_tlv(CLUSTER_ID_TLV, b"id")
                .unwrap()
        };
        let good = with_checksum(v2_id(), |_| {});
        let Start::Header(header) = parse(&good, Expect::Required(Version::V2)) else {
            panic!(
                "a correct checksum refused: {:?}",
                parse(&good, Expect::Optional)
            );
        };
        assert_eq!(header.len, good.len());
        assert_eq!(header.cluster_id, Some(Ok("id".into())));
        // The spec's own check value for CRC-32C ("123456789" -> 0xe3069283).
        assert_eq!(CRC32C.checksum(b"123456789"), 0xe306_9283);

        let bad = with_checksum(v2_id(), |value| value[3] ^= 1);
        assert_eq!(
            parse(&bad, Expect::Required(Version::V2)),
            Start::Invalid("v2 CRC32C checksum does not match the header")
        );
        // Any byte of the header changed after the checksum was made is caught too.
        let mut changed = good.clone();
        changed[20] ^= 0x40;
        assert!(matches!(
            parse(&changed, Expect::Optional),
            Start::Invalid(_)
        ));
        let short = v2_id()
            .write_tlv(CRC32C_TLV, &[0; 2])
            .unwrap()
            .build()
            .unwrap();
        assert_eq!(
            parse(&short, Expect::Optional),
            Start::Invalid("v2 CRC32C TLV is not 4 bytes")
        );
    }

    #[test]
    fn a_v1_header_ends_at_its_crlf() {
        // Found by the proxy_protocol fuzz target: UNKNOWN with a stray CR before the CRLF.
        let bytes = b"PROXY UNKNOWN x \n\r\r\npayload";
        let Start::Header(header) = parse(bytes, Expect::Optional) else {
            panic!("{:?}", parse(bytes, Expect::Optional));
        };
        assert_eq!(&bytes[header.len..], b"payload");
        assert_eq!(
            parse(&bytes[..header.len], Expect::Optional),
            Start::Header(header)
        );
    }

    #[test]
    fn malformed_headers_are_invalid_not_pending() {
        assert!(matches!(
            parse(b"PROXY TCP4 nonsense here\r\n", Expect::Optional),
            Start::Invalid(_)
        ));
        let mut bad = v2_with_cluster_id("x");
        bad[12] = 0x11; // version 1 in the binary header
        let got = parse(&bad, Expect::Optional);
        assert!(matches!(got, Start::Invalid(_)), "{got:?}");
    }

    #[test]
    fn encodes_what_it_parses() {
        let client: SocketAddr = "192.0.2.10:40001".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:8443".parse().unwrap();
        for version in [Version::V1, Version::V2] {
            let bytes = encode(version, client, local);
            let Start::Header(header) = parse(&bytes, Expect::Required(version)) else {
                panic!("{version} did not parse");
            };
            assert_eq!((header.len, header.source), (bytes.len(), Some(client)));
        }
        assert_eq!(
            encode(Version::V1, client, local),
            b"PROXY TCP4 192.0.2.10 127.0.0.1 40001 8443\r\n"
        );
        let mixed = encode(Version::V1, client, "[::1]:8443".parse().unwrap());
        assert_eq!(mixed, b"PROXY TCP6 ::ffff:192.0.2.10 ::1 40001 8443\r\n");
    }
}
