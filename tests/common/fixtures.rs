//! The captured ClientHellos in `tests/fixtures/clienthellos/`, and one with its SNI rewritten.
//! (Apart from [`super::hellos`], which the benchmarks include by path and use whole.)

use std::path::Path;

/// A captured ClientHello from `tests/fixtures/clienthellos/` (SNI `api.example.test` unless
/// the name says otherwise).
pub fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/clienthellos")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
}

/// Every captured hello whose SNI is `api.example.test`.
pub const FIXTURES_WITH_SNI: &[&str] = &[
    "openssl-3.0.bin",
    "openssl-3.0-4-records.bin",
    "curl-7.88.bin",
    "python-3.11.bin",
    "node-20.bin",
    "kubectl-go.bin",
    "gnutls.bin",
    "java-17.bin",
    "chromium-156-pq.bin",
];

/// Rewrites the server_name of a single-record ClientHello to `name` (any bytes), fixing every
/// enclosing length. Panics on anything else: this is for well-formed fixtures only.
pub fn with_sni(hello: &[u8], name: &[u8]) -> Vec<u8> {
    assert_eq!(hello[0], 0x16, "not a handshake record");
    let record_len = u16::from_be_bytes([hello[3], hello[4]]) as usize;
    assert_eq!(record_len + 5, hello.len(), "single-record hellos only");
    assert_eq!(hello[5], 0x01, "not a ClientHello");
    let body = &hello[9..];
    let (at, ext_total) = super::hellos::extensions_of(body);
    let prefix = &body[..at];
    let exts = &body[at + 2..at + 2 + ext_total];

    let mut new_exts = Vec::new();
    let mut i = 0;
    let mut replaced = false;
    while i < exts.len() {
        let ty = u16::from_be_bytes([exts[i], exts[i + 1]]);
        let len = u16::from_be_bytes([exts[i + 2], exts[i + 3]]) as usize;
        if ty == 0 {
            let mut data = Vec::new();
            data.extend_from_slice(&((3 + name.len()) as u16).to_be_bytes());
            data.push(0); // host_name
            data.extend_from_slice(&(name.len() as u16).to_be_bytes());
            data.extend_from_slice(name);
            new_exts.extend_from_slice(&0u16.to_be_bytes());
            new_exts.extend_from_slice(&(data.len() as u16).to_be_bytes());
            new_exts.extend_from_slice(&data);
            replaced = true;
        } else {
            new_exts.extend_from_slice(&exts[i..i + 4 + len]);
        }
        i += 4 + len;
    }
    assert!(replaced, "hello has no server_name extension");

    let mut hs_body = prefix.to_vec();
    hs_body.extend_from_slice(&(new_exts.len() as u16).to_be_bytes());
    hs_body.extend_from_slice(&new_exts);
    let mut out = vec![0x16, hello[1], hello[2]];
    out.extend_from_slice(&((hs_body.len() + 4) as u16).to_be_bytes());
    out.push(0x01);
    out.extend_from_slice(&(hs_body.len() as u32).to_be_bytes()[1..]);
    out.extend_from_slice(&hs_body);
    out
}
