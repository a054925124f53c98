//! Per-client limits: what one accepted connection pays in `ClientLimits::admit` and in
//! dropping its guard, for a returning client, for one of 100k tracked clients, for an exempt
//! client, and for a new client refused because its shard is full of busy clients.
//!
//! `cargo bench --bench client_limit` (add `-- --quick` for a rough run).

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use proxy::internals::client_limit::{ClientLimits, Limited, Policy, Rate, MAX_CLIENTS};
use tokio::time::Instant;

/// Generous limits, so every admitted case is measured on its admitting path (the clock moves
/// a microsecond per call, far slower than the rate).
fn policy() -> Policy {
    Policy {
        max_connections: 1_000_000,
        connection_rate: Rate::parse("1000000000/s").expect("valid rate"),
        burst: 1_000_000,
        ipv6_prefix: 64,
        exempt: vec!["10.0.0.0/8".parse().expect("valid net")],
    }
}

/// The nth distinct IPv4 client, outside the exempt 10/8.
fn client(n: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x6400_0000 + n))
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("client_limit");
    let now = Instant::now() + Duration::from_secs(1);

    let limits = ClientLimits::new(policy());
    let v6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 2, 3, 4, 5, 6));
    let exempt = IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3));
    for (name, ip) in [
        ("same_ipv4", client(7)),
        ("same_ipv6", v6),
        ("exempt", exempt),
    ] {
        let mut t = now;
        group.bench_function(format!("admit_and_close/{name}"), |b| {
            b.iter(|| {
                t += Duration::from_micros(1);
                let guard = limits.admit(black_box(ip), t);
                assert!(guard.is_ok());
                drop(guard)
            })
        });
    }

    // 100k clients each with a connection open; the measured ones cycle through them all, so
    // the table is as cold in cache as a busy edge's.
    let many = ClientLimits::new(policy());
    let held: Vec<_> = (0..100_000)
        .filter_map(|n| many.admit(client(n), now).ok())
        .collect();
    let mut n = 0;
    let mut t = now;
    group.bench_function("admit_and_close/one_of_100k", |b| {
        b.iter(|| {
            n = (n + 7_919) % 100_000;
            t += Duration::from_micros(1);
            let guard = many.admit(black_box(client(n)), t);
            assert!(guard.is_ok());
            drop(guard)
        })
    });
    drop(held);

    // Every shard full of clients holding a connection: a new client is refused.
    let full = ClientLimits::new(policy());
    let held: Vec<_> = (0..MAX_CLIENTS as u32 * 2)
        .filter_map(|n| full.admit(client(n), now).ok())
        .collect();
    let mut n = 0;
    group.bench_function("refused/table_full", |b| {
        b.iter(|| {
            n += 1;
            let refused = full.admit(black_box(client(10_000_000 + n)), now);
            assert!(matches!(refused, Err(Limited::Full)));
        })
    });
    drop(held);
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
