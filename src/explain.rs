//! `sniroute explain`: the `/explain` endpoint's JSON, and the command that asks a running
//! sniroute for it.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::Context;
use proxy::{Admitted, BackendNow, Explanation};
use proxy::{ClientText, Proxy, Route, ServerName};
use serde_json::{json, Value};

/// How long the command waits for the server.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);

/// The answer to `/explain?sni=NAME[&client=IP]`, or why the question is bad.
pub fn answer(proxy: &Proxy, query: &str) -> Result<Value, String> {
    let (mut sni, mut client, mut port) = (None, None, None);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = percent_decode(value)
            .ok_or_else(|| format!("bad escape in {}", ClientText::of(key)))?;
        match key {
            "sni" => sni = Some(value),
            "client" => client = Some(value),
            "port" => port = Some(value),
            _ => {
                return Err(format!(
                    "unknown parameter {} (sni, client, port)",
                    ClientText::of(key)
                ))
            }
        }
    }
    let sni = sni.ok_or("missing sni=NAME")?;
    let name = ServerName::parse(sni.as_bytes())
        .map_err(|e| format!("sni {}: {e}", ClientText::of(&sni)))?;
    let client = client
        .map(|c| {
            c.parse::<IpAddr>()
                .map_err(|e| format!("client {}: {e}", ClientText::of(&c)))
        })
        .transpose()?;
    let port = port
        .map(|p| {
            p.parse::<u16>()
                .map_err(|e| format!("port {}: {e}", ClientText::of(&p)))
        })
        .transpose()?;
    Ok(to_json(
        &name,
        client,
        port,
        &proxy.explain(&name, client, port),
    ))
}

fn to_json(name: &ServerName, client: Option<IpAddr>, port: Option<u16>, e: &Explanation) -> Value {
    let route = e.route.as_ref().map(|facts| {
        let mut view = route_json(&facts.route);
        view["matched"] = json!(facts.matched);
        view["open_connections"] = json!(facts.open);
        view["backends"] = facts.backends.iter().map(backend_json).collect();
        view
    });
    let verdict = match &e.verdict {
        Ok(admitted) => json!({
            "admitted": true,
            "rule": match admitted {
                Admitted::Everyone => "the route has no allowed_cidrs".to_owned(),
                Admitted::By(net) => format!("allowed_cidrs entry {net}"),
                Admitted::ClientNotGiven => "no client given: allowed_cidrs not judged".to_owned(),
            },
        }),
        Err(reason) => json!({
            "admitted": false,
            "outcome": reason.outcome().as_str(),
            "reason": reason.to_string(),
        }),
    };
    json!({
        "sni": name.as_str(),
        "client": client.map(|c| c.to_string()),
        "port": port,
        "generation": e.generation,
        "route": route,
        "verdict": verdict,
    })
}

/// One route as `/explain` and `/routes` show it: what the table says of it (each adds what
/// it knows beyond that: the match and the next connection's order, or the endpoints now).
pub fn route_json(route: &Route) -> Value {
    json!({
        "name": route.name(),
        "source": route.source(),
        "hostnames": route.hostnames().iter().map(ToString::to_string).collect::<Vec<_>>(),
        "allowed_cidrs": route.allowed_cidrs().iter().map(ToString::to_string).collect::<Vec<_>>(),
        "max_connections": route.max_connections(),
        "cluster_id": route.cluster_id(),
        "no_backend": route.no_backend(),
        "listener_port": route.port(),
    })
}

/// One backend as `/explain` and `/routes` show it: where, its zone and condition, how that
/// ranks it here, whether it is ejected, and the connections open to it through this replica.
pub fn backend_json(now: &BackendNow) -> Value {
    json!({
        "backend": now.at.backend.to_string(),
        "zone": now.at.facts.zone.as_deref(),
        "condition": now.at.facts.condition.as_str(),
        "standing": now.standing.as_str(),
        "ejected": now.ejected,
        "open_connections": now.open,
        "weight": now.weight,
    })
}

/// `%XX` escapes and `+` as a space, as a browser or curl writes a query.
fn percent_decode(raw: &str) -> Option<String> {
    let mut out = Vec::with_capacity(raw.len());
    let mut bytes = raw.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'%' => {
                let hex = [bytes.next()?, bytes.next()?];
                out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
    }
    String::from_utf8(out).ok()
}

/// Asks the sniroute at `server` and prints its answer; the exit status says admitted (0) or
/// refused (1).
pub fn ask(
    server: SocketAddr,
    name: &str,
    client: Option<IpAddr>,
    port: Option<u16>,
) -> anyhow::Result<bool> {
    let mut query = format!("sni={}", escape(name));
    if let Some(client) = client {
        query.push_str(&format!("&client={}", escape(&client.to_string())));
    }
    if let Some(port) = port {
        query.push_str(&format!("&port={port}"));
    }
    let mut stream = TcpStream::connect_timeout(&server, ASK_TIMEOUT)
        .with_context(|| format!("cannot reach sniroute's debug listener at {server}"))?;
    stream.set_read_timeout(Some(ASK_TIMEOUT))?;
    write!(
        stream,
        "GET /explain?{query} HTTP/1.1\r\nHost: {server}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("not an HTTP response")?;
    if !head.starts_with("HTTP/1.1 200") {
        anyhow::bail!("{}: {}", head.lines().next().unwrap_or(head), body.trim());
    }
    let answer: Value = serde_json::from_str(body).context("not an explain answer")?;
    println!("{}", serde_json::to_string_pretty(&answer)?);
    Ok(answer["verdict"]["admitted"] == json!(true))
}

fn escape(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'_' => (b as char).to_string(),
            b => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_round_trip_through_escaping() {
        for value in ["api.example.test", "2001:db8::1", "10.0.0.1"] {
            assert_eq!(percent_decode(&escape(value)).as_deref(), Some(value));
        }
        assert_eq!(percent_decode("a%3"), None);
    }
}
