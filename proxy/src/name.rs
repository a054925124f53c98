//! Hostnames as the router compares them: normalised once, compared as plain strings.

use std::fmt;

use crate::error::NameError;

/// Longest DNS name in presentation form (RFC 1035 section 2.3.4).
const MAX_NAME_LEN: usize = 253;
/// Longest DNS label (RFC 1035 section 2.3.4).
const MAX_LABEL_LEN: usize = 63;

/// A hostname lowercased, without a trailing dot, made only of LDH labels (and `_`).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServerName(Box<str>);

impl ServerName {
    /// Normalises `raw` (an SNI value or a configured hostname) or says why it is not a hostname.
    pub fn parse(raw: &[u8]) -> Result<Self, NameError> {
        let raw = raw.strip_suffix(b".").unwrap_or(raw);
        if is_ipv6_literal(raw) {
            return Err(NameError::IpLiteral);
        }
        check_labels(raw)?;
        // No top-level domain is all digits (RFC 3696 2), and resolvers and URL parsers read
        // such a name as an IPv4 address, dotted (10.0.0.1) or short (127.1).
        let last = raw.rsplit(|&b| b == b'.').next().unwrap_or_default();
        if last.iter().all(u8::is_ascii_digit) {
            return Err(NameError::IpLiteral);
        }
        let lower: String = raw.iter().map(|b| b.to_ascii_lowercase() as char).collect();
        Ok(Self(lower.into_boxed_str()))
    }

    /// The normalised name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ServerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ServerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServerName({})", self.0)
    }
}

/// A configured hostname: one exact name, or `*.suffix` matching any name below `suffix`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HostPattern {
    /// Matches this name only.
    Exact(ServerName),
    /// Matches every name that ends in `.` + this suffix (one or more labels in front).
    Wildcard(ServerName),
}

impl HostPattern {
    /// Parses `name` or `*.suffix`, normalising as [`ServerName::parse`] does.
    pub fn parse(raw: &str) -> Result<Self, NameError> {
        match raw.strip_prefix("*.") {
            Some(suffix) => Ok(Self::Wildcard(ServerName::parse(suffix.as_bytes())?)),
            None => Ok(Self::Exact(ServerName::parse(raw.as_bytes())?)),
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(name) => write!(f, "{name}"),
            Self::Wildcard(suffix) => write!(f, "*.{suffix}"),
        }
    }
}

impl fmt::Debug for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HostPattern({self})")
    }
}

/// An IPv6 address, bare or in brackets (as in a URL).
fn is_ipv6_literal(raw: &[u8]) -> bool {
    let inner = raw
        .strip_prefix(b"[")
        .and_then(|r| r.strip_suffix(b"]"))
        .unwrap_or(raw);
    std::str::from_utf8(inner).is_ok_and(|s| s.parse::<std::net::Ipv6Addr>().is_ok())
}

fn check_labels(name: &[u8]) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong(name.len()));
    }
    for label in name.split(|&b| b == b'.') {
        if label.is_empty() {
            return Err(NameError::EmptyLabel);
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(NameError::LabelTooLong(label.len()));
        }
        // Underscores are not LDH, but real clusters carry them in names (SRV-style labels);
        // refusing them would refuse working clients, and they cannot confuse the lookup.
        if let Some(&bad) = label
            .iter()
            .find(|&&b| !(b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
        {
            return Err(NameError::BadByte(bad));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_case_and_trailing_dot() {
        let a = ServerName::parse(b"API.Example.TEST.").unwrap();
        assert_eq!(a.as_str(), "api.example.test");
        assert_eq!(a, ServerName::parse(b"api.example.test").unwrap());
    }

    #[test]
    fn refuses_what_is_not_a_hostname() {
        assert_eq!(ServerName::parse(b""), Err(NameError::Empty));
        assert_eq!(ServerName::parse(b"."), Err(NameError::Empty));
        assert_eq!(ServerName::parse(b"a..b"), Err(NameError::EmptyLabel));
        assert_eq!(ServerName::parse(b"a b"), Err(NameError::BadByte(b' ')));
        assert_eq!(ServerName::parse(b"a\0b"), Err(NameError::BadByte(0)));
        assert_eq!(
            ServerName::parse("é.test".as_bytes()),
            Err(NameError::BadByte(0xc3))
        );
        let long_label = [b'a'; 64];
        assert_eq!(
            ServerName::parse(&long_label),
            Err(NameError::LabelTooLong(64))
        );
        let long_name = "a.".repeat(127) + "a";
        assert_eq!(
            ServerName::parse(long_name.as_bytes()),
            Err(NameError::TooLong(255))
        );
    }

    #[test]
    fn refuses_ip_literals() {
        for raw in [
            &b"10.0.0.1"[..],
            b"192.0.2.7.",
            b"127.1",
            b"1",
            b"a.b.123",
            b"::1",
            b"[::1]",
            b"2001:db8::7",
            b"::ffff:10.0.0.1",
        ] {
            assert_eq!(
                ServerName::parse(raw),
                Err(NameError::IpLiteral),
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
        assert_eq!(HostPattern::parse("*.0.1"), Err(NameError::IpLiteral));
        for name in ["10.0.0.1.example.test", "1a.test", "a.b1", "0x7f.test"] {
            assert!(ServerName::parse(name.as_bytes()).is_ok(), "{name}");
        }
    }

    #[test]
    fn wildcard_only_as_a_whole_leftmost_label() {
        assert_eq!(
            HostPattern::parse("*.Apps.Example.test")
                .unwrap()
                .to_string(),
            "*.apps.example.test"
        );
        assert!(HostPattern::parse("a.*.test").is_err());
        assert!(HostPattern::parse("*test").is_err());
        assert!(HostPattern::parse("*.").is_err());
    }
}
