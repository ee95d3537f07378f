//! Requests that a web page makes are refused. The server has no
//! authentication, so what stands between a page open in the operator's
//! browser and the database is what browsers say about the requests they
//! send for pages:
//!
//! - a page that posts to `http://127.0.0.1:8086/write` needs no
//!   permission to do so (a plain-text POST is a "simple" request that
//!   browsers send without asking first); the browser labels it with
//!   `Origin`, which a page cannot leave out or forge, and with
//!   `Sec-Fetch-Site` in current browsers;
//! - a page that rebinds its own DNS name to 127.0.0.1 (or to an address
//!   of the machine) reads the answers too, since the browser then takes
//!   the server for the page's own origin; it asks for that name in
//!   `Host`. So `Host` must be `localhost`, an address (no page can be
//!   served from this server's own address and port but the server), or a
//!   name the operator allowed (`--allow-host`). The unspecified address
//!   (`0.0.0.0`, `[::]`) is refused too: browsers send to it without the
//!   `Sec-Fetch-Site` they give loopback requests.
//!
//! Programs (curl, Telegraf, the InfluxDB client libraries, a proxy that
//! asks for the address it forwards to) send none of these, so they are
//! not affected.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};

use hyper::header::{HeaderMap, HOST, ORIGIN};
use hyper::http::uri::Authority;

const SEC_FETCH_SITE: &str = "sec-fetch-site";

/// Why the request with these headers is refused, if it is. `allowed`:
/// host names besides `localhost` that the server may be asked for,
/// lowercase.
pub fn refusal(headers: &HeaderMap, allowed: &[String]) -> Option<String> {
    let why = from_a_page(headers).or_else(|| not_this_server(headers, allowed))?;
    log_the_first(&why);
    Some(why)
}

fn from_a_page(headers: &HeaderMap) -> Option<String> {
    if let Some(origin) = headers.get(ORIGIN) {
        return Some(format!(
            "refused: a web page sent this request (Origin: {}); the server has no \
             authentication, so it answers programs (curl, Telegraf, InfluxDB clients), \
             not browsers",
            origin.to_str().unwrap_or("?")
        ));
    }
    // "none": the user typed the address or followed a bookmark.
    match headers.get(SEC_FETCH_SITE).map(|v| v.as_bytes()) {
        None | Some(b"none") => None,
        Some(site) => Some(format!(
            "refused: a web page sent this request (Sec-Fetch-Site: {}); the server has no \
             authentication, so it answers programs, not browsers",
            String::from_utf8_lossy(site)
        )),
    }
}

/// A request that names, in `Host`, a host this server is not known by:
/// what a page that rebound its DNS name to the server sends.
fn not_this_server(headers: &HeaderMap, allowed: &[String]) -> Option<String> {
    // HTTP/1.0 clients may send no Host; browsers always do.
    let host = headers.get(HOST)?;
    if host
        .to_str()
        .ok()
        .is_some_and(|h| names_this_server(h, allowed))
    {
        return None;
    }
    Some(format!(
        "refused: Host {:?} is not an IP address, localhost or a name given with --allow-host \
         (a guard against DNS rebinding); ask for the server by its address, or start it with \
         --allow-host NAME for each name it is reached by",
        String::from_utf8_lossy(host.as_bytes())
    ))
}

/// `localhost`, an address other than the unspecified one, or an allowed
/// name; with or without a port.
fn names_this_server(host: &str, allowed: &[String]) -> bool {
    // A Host names a host and port, never a user.
    if host.contains('@') {
        return false;
    }
    let Ok(authority) = host.parse::<Authority>() else {
        return false;
    };
    let name = authority.host();
    if name.eq_ignore_ascii_case("localhost")
        || allowed.iter().any(|a| name.eq_ignore_ascii_case(a))
    {
        return true;
    }
    let literal = name
        .strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .unwrap_or(name);
    literal
        .parse::<IpAddr>()
        .is_ok_and(|ip| !ip.to_canonical().is_unspecified())
}

/// An `--allow-host` value as `refusal` compares it: the host of a name
/// given with or without a port, lowercase.
pub fn allowed_host(arg: &str) -> Result<String, String> {
    match arg.parse::<Authority>() {
        Ok(authority) if !arg.contains('@') && !authority.host().is_empty() => {
            Ok(authority.host().to_ascii_lowercase())
        }
        _ => Err(format!(
            "{arg:?} is not a host name (such as metrics.example.com)"
        )),
    }
}

/// The first refusal goes to the log, so that the operator learns that a
/// page is trying; the rest are counted in /metrics (status 403), not
/// logged, so that a page cannot fill the log.
fn log_the_first(why: &str) {
    static LOGGED: AtomicBool = AtomicBool::new(false);
    if !LOGGED.swap(true, Ordering::Relaxed) {
        log::warn!("{why} (further refusals are counted in /metrics, not logged)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn hosts_are_addresses_localhost_and_allowed_names() {
        let allowed = ["metrics.internal".to_string()];
        for host in [
            "127.0.0.1",
            "127.0.0.1:8086",
            "127.1.2.3:80",
            "localhost",
            "LocalHost:8086",
            "[::1]:8086",
            "[::1]",
            "10.0.0.7:8086",
            "metrics.internal",
            "Metrics.Internal:8086",
        ] {
            assert!(names_this_server(host, &allowed), "{host}");
        }
        for host in [
            "",
            "evil.example",
            "evil.example:8086",
            "127.0.0.1.nip.io:8086",
            "localhost.evil.example",
            "localhost.",
            "xlocalhost",
            "::1",
            "[::1",
            "user@localhost",
            "0.0.0.0:8086",
            "[::]:8086",
            "[::ffff:0.0.0.0]",
            "metrics.internal.evil.example",
        ] {
            assert!(!names_this_server(host, &allowed), "{host}");
        }
    }

    #[test]
    fn allowed_hosts_are_names_without_their_ports() {
        assert_eq!(
            allowed_host("Metrics.Internal").as_deref(),
            Ok("metrics.internal")
        );
        assert_eq!(
            allowed_host("metrics.internal:8086").as_deref(),
            Ok("metrics.internal")
        );
        for bad in ["", "user@host", "a b", "http://x/"] {
            assert!(allowed_host(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn pages_are_told_apart_by_what_browsers_add() {
        let none: [String; 0] = [];
        assert!(refusal(&headers(&[("host", "127.0.0.1:8086")]), &none).is_none());
        assert!(refusal(&headers(&[]), &none).is_none());
        assert!(refusal(
            &headers(&[("host", "localhost:8086"), ("sec-fetch-site", "none")]),
            &none
        )
        .is_none());
        let from_page = refusal(
            &headers(&[
                ("host", "127.0.0.1:8086"),
                ("origin", "https://evil.example"),
            ]),
            &none,
        )
        .expect("refused");
        assert!(
            from_page.contains("Origin: https://evil.example"),
            "{from_page}"
        );
        assert!(refusal(
            &headers(&[("host", "127.0.0.1:8086"), ("sec-fetch-site", "cross-site")]),
            &none
        )
        .is_some());
        let rebound = refusal(&headers(&[("host", "evil.example:8086")]), &none).expect("refused");
        assert!(rebound.contains("DNS rebinding"), "{rebound}");
        let allowed = ["metrics.internal".to_string()];
        assert!(refusal(&headers(&[("host", "metrics.internal:8086")]), &allowed).is_none());
        assert!(refusal(
            &headers(&[("host", "metrics.internal:8086"), ("origin", "null")]),
            &allowed
        )
        .is_some());
    }
}
