//! Raw bytes into `client_hello::parse`: it must not panic, and its answers must agree with
//! each other (a hello parses the same from its own bytes, a verdict never changes with more
//! bytes, the limit is exact, and parsing as the bytes arrive with a carried `Progress` says
//! what parsing each prefix from scratch says).
#![no_main]

use libfuzzer_sys::fuzz_target;
use proxy::internals::client_hello::{parse, parse_more, Parsed, Progress, Refusal};

/// The proxy's default limit: one maximum-size record's worth of hello.
const MAX_LEN: usize = 16_384;

fuzz_target!(|data: &[u8]| {
    let parsed = parse(data, MAX_LEN);

    // A verdict given on a prefix is the verdict on the whole; only NeedMore may change.
    for cut in [data.len() / 2, data.len().saturating_sub(1)] {
        let early = parse(&data[..cut], MAX_LEN);
        assert!(
            early == Parsed::NeedMore || early == parsed,
            "prefix of {cut} said {early:?}, all {} bytes say {parsed:?}",
            data.len()
        );
    }

    let mut progress = Progress::default();
    for cut in [
        data.len() / 4,
        data.len() / 2,
        data.len() * 3 / 4,
        data.len(),
    ] {
        let once = parse(&data[..cut], MAX_LEN);
        assert_eq!(
            parse_more(&mut progress, &data[..cut], MAX_LEN),
            once,
            "prefix of {cut} with progress"
        );
        if once != Parsed::NeedMore {
            break;
        }
    }

    if let Parsed::Hello(hello) = &parsed {
        assert!(hello.len <= data.len() && hello.len <= MAX_LEN, "{hello:?}");
        // The hello is exactly its own records: nothing after them matters, nothing less will do.
        assert_eq!(parse(&data[..hello.len], MAX_LEN), parsed);
        assert_eq!(parse(data, hello.len), parsed);
        assert_eq!(
            parse(data, hello.len - 1),
            Parsed::Refused(Refusal::TooLarge)
        );
    }
});
