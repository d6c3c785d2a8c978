//! The network capability: HTTP requests a guest makes through the host, under the executor's
//! grant (`options.network`). A definition asks (`capabilities.network: true`); every request is
//! checked here, in Rust, before and while it goes out:
//!
//! 1. only `http` and `https`;
//! 2. the host (and port) must match `allowedHosts` (`api.example.com`, `*.example.org` for its
//!    subdomains, `:port` to pin a port, IP literals such as `127.0.0.1:8080` or `[::1]:8080`);
//! 3. a name is resolved by the host, and refused if any address it resolves to is loopback,
//!    private, link-local, unique-local, multicast, reserved or a cloud metadata address; the
//!    connection goes only to the addresses checked (no second lookup to rebind). Such an
//!    address is reachable only when the allow-list names it literally as an IP;
//! 4. redirects are followed by the host, each hop checked as the first (and at most 5);
//! 5. caps: request and response body bytes, header bytes, requests per call; a per-request
//!    timeout inside the call's deadline; no proxies from the environment.
//!
//! A broken rule is `NETWORK_DENIED` naming the host; a failure on the way (refused, reset,
//! timed out) is `NETWORK_ERROR` (retryable). HTTP statuses, 4xx and 5xx included, are the
//! guest's to read.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use reqwest::Url;

use crate::error::ExecError;
pub use crate::http_client::{HttpRequest, HttpResponse, Network};

/// Ranges of `options.network`'s numeric fields.
pub mod ranges {
    pub const BYTES: (f64, f64) = (1.0, 1024.0 * 1024.0 * 1024.0);
    pub const REQUESTS: (f64, f64) = (1.0, 100_000.0);
    pub const TIMEOUT_MS: (f64, f64) = (1.0, 3_600_000.0);
    pub const REDIRECTS: (f64, f64) = (0.0, 20.0);
}

/// The executor's network grant.
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkConfig {
    pub allowed_hosts: Vec<HostRule>,
    /// Bytes of one response body (default 10 MiB).
    pub max_response_bytes: u64,
    /// Bytes of one request body (default 10 MiB).
    pub max_request_bytes: u64,
    /// Bytes of one request's headers, and of one response's (default 64 KiB).
    pub max_header_bytes: u64,
    /// Requests one call may make (default 100).
    pub max_requests_per_call: u32,
    /// One request's time, from sending to the last body byte (default 30 s; never past the
    /// call's deadline).
    pub timeout: Duration,
    /// Redirects followed (default 5).
    pub max_redirects: u32,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            allowed_hosts: Vec::new(),
            max_response_bytes: 10 * 1024 * 1024,
            max_request_bytes: 10 * 1024 * 1024,
            max_header_bytes: 64 * 1024,
            max_requests_per_call: 100,
            timeout: Duration::from_secs(30),
            max_redirects: 5,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Pattern {
    /// A host name, exactly (lowercase, no trailing dot).
    Name(String),
    /// `*.suffix`: any name ending in `.suffix` (not `suffix` itself).
    Subdomains(String),
    Ip(IpAddr),
}

/// One entry of `allowedHosts`.
#[derive(Debug, Clone, PartialEq)]
pub struct HostRule {
    pattern: Pattern,
    port: Option<u16>,
}

impl HostRule {
    /// `host`, `*.domain`, an IP literal (`[v6]` with a port), each with an optional `:port`.
    pub fn parse(entry: &str) -> Result<HostRule, String> {
        let s = entry.trim().to_ascii_lowercase();
        let bad = |why: &str| Err(format!("{entry:?} is not a host pattern: {why}"));
        if s.is_empty() {
            return bad("it is empty");
        }
        if s.contains("://") || s.contains('/') {
            return bad("name hosts, not URLs (api.example.com, *.example.org:443, 127.0.0.1:8080)");
        }
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let Some((ip, after)) = rest.split_once(']') else { return bad("an unclosed [") };
            match after {
                "" => (ip.to_string(), None),
                p if p.starts_with(':') => (ip.to_string(), Some(&p[1..])),
                _ => return bad("text after ]"),
            }
        } else if s.matches(':').count() > 1 {
            (s.clone(), None) // a bare IPv6 address
        } else {
            match s.split_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (s.clone(), None),
            }
        };
        let port = match port {
            None => None,
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 => Some(n),
                _ => return bad("the port is not a number in 1..65535"),
            },
        };
        let pattern = if let Ok(ip) = host.parse::<IpAddr>() {
            Pattern::Ip(ip)
        } else if let Some(ip) = ipv4_in_another_form(&host) {
            // A URL's host in that form is the address (`http://2130706433/` is 127.0.0.1), but as
            // a name it would match nothing, and `010.0.0.1` is 8.0.0.1, not 10.0.0.1 (review BS2).
            return bad(&format!("it reads as the IPv4 address {ip} in a URL (write {ip} if that is the host meant)"));
        } else if let Some(suffix) = host.strip_prefix("*.") {
            if !is_name(suffix) {
                return bad("after *. must come a domain name");
            }
            Pattern::Subdomains(suffix.trim_end_matches('.').to_string())
        } else if is_name(&host) {
            Pattern::Name(host.trim_end_matches('.').to_string())
        } else {
            return bad("a host is a domain name, *.domain, or an IP address");
        };
        Ok(HostRule { pattern, port })
    }

    fn matches(&self, host: &Host, port: u16) -> bool {
        if self.port.is_some_and(|p| p != port) {
            return false;
        }
        match (&self.pattern, host) {
            (Pattern::Name(n), Host::Name(h)) => n == h,
            (Pattern::Subdomains(s), Host::Name(h)) => h.len() > s.len() + 1 && h.ends_with(s.as_str()) && h.as_bytes()[h.len() - s.len() - 1] == b'.',
            (Pattern::Ip(a), Host::Ip(b)) => a == b || same_address(*a) == same_address(*b),
            _ => false,
        }
    }
}

/// The IPv4 address a URL's host of this text is (`2130706433`, `0x7f.1`, `0177.0.0.1`), when it
/// is one written other than as four decimal numbers.
fn ipv4_in_another_form(host: &str) -> Option<Ipv4Addr> {
    match url::Host::parse(host) {
        Ok(url::Host::Ipv4(ip)) => Some(ip),
        _ => None,
    }
}

fn is_name(s: &str) -> bool {
    let s = s.trim_end_matches('.');
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty() && label.len() <= 63 && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[derive(Debug, Clone, PartialEq)]
enum Host {
    Name(String),
    Ip(IpAddr),
}

impl Host {
    fn show(&self) -> String {
        match self {
            Host::Name(n) => n.clone(),
            Host::Ip(IpAddr::V6(ip)) => format!("[{ip}]"),
            Host::Ip(ip) => ip.to_string(),
        }
    }
}

/// An IPv4 address written as IPv6 (mapped `::ffff:a.b.c.d`) as that IPv4: the same host, for
/// matching allowedHosts. (NAT64 and 6to4 forms reach other hosts: they match only as written.)
fn same_address(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// An IPv4 address carried in an IPv6 one (mapped, compatible, translated, NAT64, 6to4) as that
/// IPv4, for deciding what it may reach.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return IpAddr::V4(v4);
            }
            let s = v6.segments();
            let tail = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
            if s[..6] == [0, 0, 0, 0, 0, 0] && !v6.is_loopback() && !v6.is_unspecified() {
                return IpAddr::V4(tail); // IPv4-compatible (deprecated)
            }
            if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] || s[..4] == [0, 0, 0, 0] && s[4..6] == [0xffff, 0] {
                return IpAddr::V4(tail); // NAT64; IPv4-translated (::ffff:0:a.b.c.d)
            }
            if s[0] == 0x2002 {
                return IpAddr::V4(Ipv4Addr::new((s[1] >> 8) as u8, s[1] as u8, (s[2] >> 8) as u8, s[2] as u8)); // 6to4
            }
            ip
        }
        v4 => v4,
    }
}

/// Why an address is not on the public internet, if it is not: loopback, private, link-local
/// (cloud metadata at 169.254.169.254 among them), unique-local (fd00:ec2::254), multicast,
/// reserved, documentation ranges, IETF protocol assignments (Teredo among them), SRv6 identifiers.
pub fn restricted(ip: IpAddr) -> Option<&'static str> {
    match canonical(ip) {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            Some(match (a, b, c) {
                _ if v4.is_loopback() => "loopback",
                _ if v4.is_private() => "private",
                (169, 254, _) => "link-local (cloud metadata lives here)",
                (0, _, _) => "this network",
                (100, b, _) if (64..128).contains(&b) => "shared address space (CGNAT)",
                (192, 0, 0) => "IETF protocol assignments",
                (192, 88, 99) => "6to4 relay anycast",
                (168, 63, 129) if v4.octets()[3] == 16 => "Azure's host endpoint (WireServer, metadata)",
                (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "documentation",
                (198, 18..=19, _) => "benchmarking",
                (a, _, _) if a >= 224 => "multicast or reserved",
                _ => return None,
            })
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            Some(match s[0] {
                _ if v6.is_loopback() => "loopback",
                _ if v6.is_unspecified() => "unspecified",
                x if x & 0xfe00 == 0xfc00 => "unique-local (cloud metadata fd00:ec2::254 lives here)",
                x if x & 0xffc0 == 0xfe80 => "link-local",
                x if x & 0xffc0 == 0xfec0 => "site-local",
                x if x & 0xff00 == 0xff00 => "multicast",
                0x2001 if s[1] == 0x0db8 => "documentation",
                0x2001 if s[1] & 0xfe00 == 0 => "IETF protocol assignments (Teredo 2001::/32 among them)",
                0x3fff if s[1] & 0xf000 == 0 => "documentation",
                0x5f00 => "segment routing (SRv6) identifiers",
                0x0064 if s[1] == 0xff9b && s[2] == 1 => "local-use NAT64",
                0x0100 if s[1..4] == [0, 0, 0] => "discard-only",
                _ => return None,
            })
        }
    }
}

/// Before a call starts: a module that imports an HTTP function (`import`) runs only when its
/// definition asked for the network and the executor grants it. Asking without importing one
/// is fine (nothing to use).
pub fn authorize(import: Option<&str>, asked: bool, granted: bool) -> Result<(), ExecError> {
    match import {
        Some(name) if !asked => Err(ExecError::CapabilityDenied(format!(
            "the module imports {name} (HTTP requests), which needs capabilities.network in its definition"
        ))),
        Some(name) if !granted => Err(ExecError::CapabilityDenied(format!(
            "the module imports {name} (HTTP requests) and its definition asks for the network, but the executor grants none (options.network.allowedHosts)"
        ))),
        _ => Ok(()),
    }
}

/// A refusal: a URL's by `check_url`, or one raised inside reqwest by the resolver, found again in the
/// error's chain.
#[derive(Debug)]
pub(crate) struct Refused {
    pub(crate) host: String,
    pub(crate) message: String,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Refused {}

/// The longest URL an HTTP request is sent with (the `http` crate's bound on a URI).
pub(crate) const MAX_URL_BYTES: u64 = 65_534;

/// Checks a URL against the scheme and host rules and its length (not DNS: the resolver does that).
pub(crate) fn check_url(config: &NetworkConfig, url: &Url) -> Result<(), Refused> {
    let shown = url.host_str().unwrap_or("").to_string();
    let deny = |host: &str, message: String| Refused { host: host.to_string(), message };
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(deny(&shown, format!("{}: only http and https requests are allowed", url.scheme())));
    }
    let host = match url.host() {
        Some(url::Host::Domain(d)) => Host::Name(d.trim_end_matches('.').to_ascii_lowercase()),
        Some(url::Host::Ipv4(ip)) => Host::Ip(IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => Host::Ip(IpAddr::V6(ip)),
        None => return Err(deny("", "the URL has no host".into())),
    };
    let port = url.port_or_known_default().unwrap_or(0);
    let shown = host.show();
    if !url.username().is_empty() || url.password().is_some() {
        return Err(deny(&shown, format!("{shown}: credentials in the URL are not allowed (send a header)")));
    }
    if !config.allowed_hosts.iter().any(|r| r.matches(&host, port)) {
        return Err(deny(&shown, format!("{shown}:{port} is not in options.network.allowedHosts")));
    }
    // The URL goes in the request's head: it counts against maxHeaderBytes, and an HTTP request
    // carries at most MAX_URL_BYTES of it (past that the client failed to build the request, a
    // retryable NETWORK_ERROR whose message held the whole URL).
    let len = url.as_str().len() as u64;
    let limit = config.max_header_bytes.min(MAX_URL_BYTES);
    if len > limit {
        let why = if limit == MAX_URL_BYTES { "the most an HTTP request carries" } else { "maxHeaderBytes" };
        return Err(deny(&shown, format!("the URL is {len} bytes, over {why} ({limit})")));
    }
    // An IP the allow-list matched is named there literally (patterns of names never match an
    // IP), so even a private one is the executor's explicit choice.
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(list: &[&str]) -> NetworkConfig {
        NetworkConfig { allowed_hosts: list.iter().map(|s| HostRule::parse(s).unwrap()).collect(), ..Default::default() }
    }

    fn check(c: &NetworkConfig, url: &str) -> Result<(), String> {
        check_url(c, &Url::parse(url).unwrap()).map_err(|r| r.message)
    }

    #[test]
    fn patterns_parse_and_match() {
        let c = rules(&["api.example.com", "*.example.org:443", "127.0.0.1:8080", "[::1]:9000", "10.1.2.3"]);
        assert!(check(&c, "https://api.example.com/x").is_ok());
        assert!(check(&c, "http://API.Example.com./x").is_ok());
        assert!(check(&c, "https://a.b.example.org/").is_ok());
        assert!(check(&c, "https://example.org/").is_err(), "*. is subdomains only");
        assert!(check(&c, "https://evilexample.org/").is_err());
        assert!(check(&c, "http://a.example.org/").is_err(), "port 80 is not 443");
        assert!(check(&c, "http://127.0.0.1:8080/").is_ok());
        assert!(check(&c, "http://127.0.0.1:8081/").is_err());
        assert!(check(&c, "http://[::1]:9000/").is_ok());
        assert!(check(&c, "http://[::ffff:127.0.0.1]:8080/").is_ok(), "the same IP, mapped");
        assert!(check(&c, "http://[2002:7f00:1::]:8080/").is_err(), "6to4 of the IP is another host");
        assert!(check(&c, "http://[64:ff9b::7f00:1]:8080/").is_err(), "NAT64 of the IP is another host");
        assert!(check(&c, "http://10.1.2.3:1234/").is_ok(), "no port: any port");
        assert!(check(&c, "ftp://api.example.com/").unwrap_err().contains("only http and https"));
        assert!(check(&c, "http://user:pw@api.example.com/").unwrap_err().contains("credentials"));
        assert!(check(&c, "http://2130706433:8080/").is_ok(), "127.0.0.1 in decimal is that IP");
        assert!(check(&c, "http://2130706434:8080/").is_err());
        // Written other than as four decimal numbers, an address is refused, naming what it is.
        assert!(HostRule::parse("010.0.0.1").unwrap_err().contains("8.0.0.1"));
        assert!(HostRule::parse("1.2.3.4.example.com").is_ok(), "a name that starts with numbers");
        for bad in ["", "http://x.com", "a/b", "*", "*.", "a.*.com", "x.com:0", "x.com:99999", "[::1", "ex ample.com", "2130706433", "0177.0.0.1:80", "0x7f.1", "010.0.0.1"] {
            assert!(HostRule::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn restricted_addresses() {
        for ip in [
            "127.0.0.1", "10.0.0.1", "172.16.0.1", "192.168.1.1", "169.254.169.254", "0.0.0.0", "100.64.0.1", "224.0.0.1",
            "255.255.255.255", "::1", "::", "fd00:ec2::254", "fe80::1", "ff02::1", "::ffff:10.0.0.1", "64:ff9b::a9fe:a9fe",
            "2002:a9fe:a9fe::1", "::127.0.0.1", "168.63.129.16", "64:ff9b:1::a00:1", "::ffff:0:a00:1", "192.88.99.1",
            "2001::a9fe:a9fe", "2001:0:4136:e378:8000:63bf:3fff:fdd2", "2001:1ff::1", "2001:20::1", "3fff::1", "3fff:fff::1",
            "5f00::1", "2001:db8::1",
        ] {
            assert!(restricted(ip.parse().unwrap()).is_some(), "{ip}");
        }
        for ip in ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "93.184.216.34", "2001:200::1", "2001:4860:4860::8888", "3fff:1000::1", "5f01::1"] {
            assert!(restricted(ip.parse().unwrap()).is_none(), "{ip}");
        }
    }
}
