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
//! - a page that rebinds its own DNS name to 127.0.0.1 reads the answers
//!   too, since the browser then takes the server for the page's own
//!   origin; it asks for that name in `Host`, and a listener on the
//!   loopback address is reached by no name but a loopback one.
//!
//! Programs (curl, Telegraf, the InfluxDB client libraries, proxies) send
//! none of these, so they are not affected.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};

use hyper::header::{HeaderMap, HOST, ORIGIN};
use hyper::http::uri::Authority;

const SEC_FETCH_SITE: &str = "sec-fetch-site";

/// Why the request with these headers is refused, if it is. `loopback`:
/// the server listens on a loopback address only.
pub fn refusal(headers: &HeaderMap, loopback: bool) -> Option<String> {
    let why = from_a_page(headers).or_else(|| {
        if loopback {
            not_a_loopback_name(headers)
        } else {
            None
        }
    })?;
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

/// A listener on the loopback address is asked for by a loopback name,
/// unless a page rebound a name of its own to it.
fn not_a_loopback_name(headers: &HeaderMap) -> Option<String> {
    // HTTP/1.0 clients may send no Host; browsers always do.
    let host = headers.get(HOST)?;
    if host.to_str().ok().is_some_and(names_loopback) {
        return None;
    }
    Some(format!(
        "refused: Host {:?} does not name this server, which listens on the loopback address \
         (a guard against DNS rebinding); ask for 127.0.0.1, [::1] or localhost, and have a \
         proxy in front pass such a Host",
        String::from_utf8_lossy(host.as_bytes())
    ))
}

/// `localhost` or an IP address, with or without a port. Any address is
/// safe to accept: a page cannot be served from an address that reaches
/// this listener without being this server's own origin.
fn names_loopback(host: &str) -> bool {
    // A Host names a host and port, never a user.
    if host.contains('@') {
        return false;
    }
    let Ok(authority) = host.parse::<Authority>() else {
        return false;
    };
    let name = authority.host();
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.eq_ignore_ascii_case("localhost") {
        return true;
    }
    let literal = name
        .strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .unwrap_or(name);
    literal.parse::<IpAddr>().is_ok()
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
    fn loopback_names_are_addresses_and_localhost() {
        for host in [
            "127.0.0.1",
            "127.0.0.1:8086",
            "127.1.2.3:80",
            "localhost",
            "LocalHost:8086",
            "localhost.:8086",
            "[::1]:8086",
            "[::1]",
            "10.0.0.7:8086",
        ] {
            assert!(names_loopback(host), "{host}");
        }
        for host in [
            "",
            "evil.example",
            "evil.example:8086",
            "127.0.0.1.nip.io:8086",
            "localhost.evil.example",
            "xlocalhost",
            "::1",
            "[::1",
            "user@localhost",
        ] {
            assert!(!names_loopback(host), "{host}");
        }
    }

    #[test]
    fn pages_are_told_apart_by_what_browsers_add() {
        assert!(refusal(&headers(&[("host", "127.0.0.1:8086")]), true).is_none());
        assert!(refusal(&headers(&[]), true).is_none());
        assert!(refusal(
            &headers(&[("host", "localhost:8086"), ("sec-fetch-site", "none")]),
            true
        )
        .is_none());
        let from_page = refusal(
            &headers(&[
                ("host", "127.0.0.1:8086"),
                ("origin", "https://evil.example"),
            ]),
            true,
        )
        .expect("refused");
        assert!(
            from_page.contains("Origin: https://evil.example"),
            "{from_page}"
        );
        assert!(refusal(
            &headers(&[("host", "127.0.0.1:8086"), ("sec-fetch-site", "cross-site")]),
            true
        )
        .is_some());
        let rebound = refusal(&headers(&[("host", "evil.example:8086")]), true).expect("refused");
        assert!(rebound.contains("DNS rebinding"), "{rebound}");
        // A server listening on other addresses is asked for by names of
        // its operator's choosing; pages are still refused.
        assert!(refusal(&headers(&[("host", "metrics.internal:8086")]), false).is_none());
        assert!(refusal(
            &headers(&[("host", "metrics.internal:8086"), ("origin", "null")]),
            false
        )
        .is_some());
    }
}
