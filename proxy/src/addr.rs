//! Client addresses and networks as allow lists, client limits and trusted proxies compare
//! them: an IPv4-mapped IPv6 address is the IPv4 address it carries.

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net};

/// A client address as networks are checked against it: IPv4-mapped IPv6 addresses (from
/// dual-stack sockets) are the IPv4 address they carry.
pub(crate) fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// A network as client addresses are checked against it: an IPv4-mapped IPv6 network
/// (`::ffff:127.0.0.0/104`) is the IPv4 network it maps (`127.0.0.0/8`), as HAProxy reads it,
/// since [`canonical`] makes every IPv4-mapped client the IPv4 address it carries; without
/// this it would hold no client at all. Other networks stay as written (`::/0` holds IPv6
/// clients only).
pub fn canonical_net(net: IpNet) -> IpNet {
    let IpNet::V6(v6) = net else {
        return net;
    };
    match (v6.addr().to_ipv4_mapped(), v6.prefix_len().checked_sub(96)) {
        (Some(v4), Some(len)) => Ipv4Net::new(v4, len).map_or(net, IpNet::V4),
        _ => net,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_mapped_networks_are_the_ipv4_networks_they_map() {
        let net = |s: &str| s.parse::<IpNet>().unwrap();
        for (written, read) in [
            ("::ffff:127.0.0.0/104", "127.0.0.0/8"),
            ("::ffff:127.0.0.6/128", "127.0.0.6/32"),
            ("::ffff:0:0/96", "0.0.0.0/0"),
            ("::ffff:0:0/95", "::ffff:0:0/95"),
            ("::/0", "::/0"),
            ("2001:db8::/32", "2001:db8::/32"),
            ("10.0.0.0/8", "10.0.0.0/8"),
        ] {
            assert_eq!(canonical_net(net(written)), net(read), "{written}");
        }
        let mapped = canonical_net(net("::ffff:127.0.0.0/104"));
        for client in ["127.0.0.1", "::ffff:127.0.0.1"] {
            let client = canonical(client.parse().unwrap());
            assert!(mapped.contains(&client), "{client}");
        }
    }
}
