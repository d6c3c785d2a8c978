//! Tests of the network client: hosts, addresses, redirects and limits (`http_client`).
use super::*;
use crate::network::HostRule;

fn rules(list: &[&str]) -> NetworkConfig {
    NetworkConfig { allowed_hosts: list.iter().map(|s| HostRule::parse(s).unwrap()).collect(), ..Default::default() }
}

#[tokio::test]
async fn names_that_resolve_to_private_addresses_are_refused() {
    let net = Network::new(rules(&["localhost", "*.localhost"])).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let e = net.send(HttpRequest { method: "GET".into(), url: "http://localhost:1/".into(), ..Default::default() }, deadline, u64::MAX).await;
    let e = e.unwrap_err();
    assert_eq!(e.code(), "NETWORK_DENIED", "{e}");
    assert!(e.to_string().contains("loopback"), "{e}");
}

#[tokio::test]
async fn methods_are_at_most_64_bytes() {
    // Review AC: a 4 MiB method went out on the request line, past maxHeaderBytes.
    let net = Network::new(rules(&["127.0.0.1:1"])).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let long = "A".repeat(crate::wasi_http::MAX_METHOD_BYTES + 1);
    let e = net.send(HttpRequest { method: long, url: "http://127.0.0.1:1/".into(), ..Default::default() }, deadline, u64::MAX).await;
    let e = e.unwrap_err();
    assert_eq!(e.code(), "NETWORK_DENIED", "{e}");
    assert!(e.to_string().contains("the method is 65 bytes"), "{e}");
    // One of 64 gets as far as connecting (nothing listens on port 1).
    let fits = "A".repeat(crate::wasi_http::MAX_METHOD_BYTES);
    let e = net.send(HttpRequest { method: fits, url: "http://127.0.0.1:1/".into(), ..Default::default() }, deadline, u64::MAX).await;
    assert_eq!(e.unwrap_err().code(), "NETWORK_ERROR");
}

#[test]
fn request_json() {
    let r = HttpRequest::from_json(r#"{"url":"http://x/","headers":{"a":"b","n":1},"body":"hi"}"#).unwrap();
    assert_eq!((r.method.as_str(), r.headers.len(), r.body.as_slice()), ("GET", 2, &b"hi"[..]));
    assert_eq!(HttpRequest::from_json("[1]").unwrap_err().code(), "NETWORK_DENIED");
    let resp = HttpResponse { status: 200, headers: vec![("a".into(), "1".into()), ("a".into(), "2".into())], body: vec![0xff] };
    let v: serde_json::Value = serde_json::from_str(&resp.to_json()).unwrap();
    assert_eq!(v["headers"]["a"], "1, 2");
    assert_eq!(v["body"], "\u{fffd}");
    // Written from the bytes: text, escapes and bytes that are not UTF-8 (one U+FFFD per
    // bad sequence, as from_utf8_lossy).
    let body = b"a\x01\"\\\xff\xfe\xe2\x82 \xf0\x9f\x98\x80 z\xe2".to_vec();
    let resp = HttpResponse { status: 404, headers: vec![("k".into(), "v\"".into())], body: body.clone() };
    let text = resp.to_json();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!((v["status"].as_u64(), v["headers"]["k"].as_str()), (Some(404), Some("v\"")));
    assert_eq!(v["body"].as_str(), Some(&*String::from_utf8_lossy(&body)));
    assert_eq!(resp.to_json_within(text.len() as u64 + 64, TextUnits::Utf8).ok(), Some(text.clone()));
    assert!(text.starts_with(r#"{"body":"a\u0001\"\\"#) && text.ends_with(r#""headers":{"k":"v\""},"status":404}"#), "{text}");
}

#[test]
fn a_response_whose_json_would_not_fit_the_guest_is_refused_before_it_is_built() {
    // A control byte escapes to six characters: 1,000 of them are 6,000 characters.
    let resp = HttpResponse { status: 200, headers: vec![], body: vec![1; 1000] };
    let len = resp.to_json().len() as u64;
    assert!(len > 6000);
    assert_eq!(resp.to_json_within(len + 64, TextUnits::Utf8).map(|s| s.len() as u64), Ok(len));
    assert_eq!(resp.to_json_within(len - 100, TextUnits::Utf8).map_err(|e| e.code()), Err("OUT_OF_MEMORY"));
    // As AssemblyScript holds it: two bytes per unit; a character past U+FFFF is two units.
    assert_eq!(resp.to_json_within(len + 64, TextUnits::Utf16).map_err(|e| e.code()), Err("OUT_OF_MEMORY"));
    assert!(resp.to_json_within(2 * len + 64, TextUnits::Utf16).is_ok());
    let astral = HttpResponse { status: 200, headers: vec![], body: "😀".repeat(100).into_bytes() };
    let units = astral.to_json().encode_utf16().count() as u64;
    assert!(astral.to_json_within(2 * units + 64, TextUnits::Utf16).is_ok());
    assert!(astral.to_json_within(2 * units - 4, TextUnits::Utf16).is_err());
    // Bytes that are not UTF-8: a unit each as AssemblyScript holds them, three bytes each as
    // the host builds the text; the larger counts.
    let lossy = HttpResponse { status: 200, headers: vec![], body: vec![0xff; 1000] };
    let text = lossy.to_json();
    assert!(text.len() > 3000 && text.encode_utf16().count() < 1100);
    assert_eq!(lossy.to_json_within(text.len() as u64 + 64, TextUnits::Utf16).map(|t| t == text), Ok(true));
    assert_eq!(lossy.to_json_within(text.len() as u64 - 100, TextUnits::Utf16).map_err(|e| e.code()), Err("OUT_OF_MEMORY"));
}

#[test]
fn a_request_is_read_from_its_text_without_a_tree() {
    let r = HttpRequest::from_json(r#"{"url":"http://a/","headers":{"x":"1","n":[1, 2],"z":null},"body":"h\u00e9","extra":[[[0]]]}"#).expect("reads");
    assert_eq!((r.method.as_str(), r.url.as_str(), r.body.as_slice()), ("GET", "http://a/", "hé".as_bytes()));
    assert_eq!(r.headers, vec![("n".to_string(), "[1, 2]".to_string()), ("x".into(), "1".into()), ("z".into(), "null".into())]);
    // A body that is not a string goes as its JSON text, as written; other keys are skipped
    // however large (review AK: as a tree, 66 MB of `[0,0,...]` took 1.2 GB).
    let zeros = format!("[{}0]", "0, ".repeat(1_000_000));
    let text = format!(r#"{{"method":"POST","url":"http://a/","body":{zeros},"pad":{zeros}}}"#);
    let r = HttpRequest::from_json(&text).expect("reads");
    assert_eq!((r.method.as_str(), r.body.len()), ("POST", zeros.len()));
    assert!(r.body == zeros.as_bytes());
    let r = HttpRequest::from_json(r#"{"url":"u","method":null,"headers":null,"body":null}"#).expect("nulls are absent keys");
    assert_eq!((r.method.as_str(), r.headers.len(), r.body.len()), ("GET", 0, 0));
    // A string that is not text is refused, not sent as its JSON source (review AK's follow-up).
    for lone in [r#"{"url":"u","body":"a\ud800b"}"#, r#"{"url":"u","headers":{"x":"\udc00"}}"#] {
        assert_eq!(HttpRequest::from_json(lone).map_err(|e| e.code()).map(|_| ()), Err("NETWORK_DENIED"), "{lone}");
    }
    // At most MAX_REQUEST_HEADERS entries, read one by one (6 million in a map took 911 MB).
    let many = |n: usize| format!(r#"{{"url":"u","headers":{{{}}}}}"#, (0..n).map(|i| format!(r#""h{i}":"v""#)).collect::<Vec<_>>().join(","));
    assert_eq!(HttpRequest::from_json(&many(MAX_REQUEST_HEADERS)).map(|r| r.headers.len()).ok(), Some(MAX_REQUEST_HEADERS));
    assert_eq!(HttpRequest::from_json(&many(MAX_REQUEST_HEADERS + 1)).map_err(|e| e.code()).map(|_| ()), Err("NETWORK_DENIED"));
    for bad in [r#"[1]"#, r#"{"method":"GET"}"#, r#"{"url":1}"#, r#"{"url":"u","method":7}"#, r#"{"url":"u","headers":[]}"#, r#"{"url":"u","url":"v"}"#, "{", ""] {
        assert_eq!(HttpRequest::from_json(bad).map_err(|e| e.code()).map(|_| ()), Err("NETWORK_DENIED"), "{bad}");
    }
}

#[test]
fn a_response_text_is_made_in_one_allocation_of_its_size() {
    // Grown as it was written, a 1 MiB body's text took 2 MiB (AJF1: host memory of a response).
    for body in [vec![b'x'; 1 << 20], vec![0xff; 100_000], "😀".repeat(50_000).into_bytes(), vec![1; 10_000]] {
        let resp = HttpResponse { status: 200, headers: vec![("content-type".into(), "text/plain".into())], body };
        let text = resp.to_json_within(u64::MAX, TextUnits::Utf8).expect("fits");
        assert!(text.capacity() >= text.len() && text.capacity() <= text.len() + 64, "{} of {}", text.capacity(), text.len());
    }
}
