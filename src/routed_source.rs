//! The executor's blob source when `allowedBlobUrls` names prefixes: its store, plus stores opened
//! on demand for definitions' paths that are absolute URLs under one of the prefixes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use url::Url;

use crate::error::ExecError;
use crate::store::{BlobSource, BoxFuture, ObjectSource};

/// Schemes a `wasmBlobPath` may use to name a module directly, bypassing the executor's store.
const URL_SCHEMES: &[&str] = &["file", "s3", "s3a", "az", "azure", "abfs", "abfss", "gs", "http", "https"];

/// The executor's store, plus stores opened on demand for paths that are absolute URLs under one
/// of the executor's `allowedBlobUrls` prefixes. By default there are none: every path, URL-like
/// or not, goes to the store as it is (so a definition cannot make the host read its disk or
/// reach its network).
pub struct RoutedSource {
    default: Arc<dyn BlobSource>,
    allowed: Vec<String>,
    by_origin: Mutex<HashMap<String, Arc<ObjectSource>>>,
}

/// Checks `allowedBlobUrls` entries: absolute URLs of a known scheme, whose prefix ends at a
/// path boundary (so `s3://bucket/mod` does not also allow `s3://bucket/modules-evil`).
pub fn allowed_prefixes(prefixes: &[String]) -> Result<Vec<String>, ExecError> {
    prefixes
        .iter()
        .map(|p| {
            let bad = |why: &str| ExecError::InvalidArgument(format!("options.allowedBlobUrls: {p:?} {why}"));
            let (scheme, rest) = p.split_once("://").ok_or_else(|| bad("is not an absolute URL"))?;
            if !URL_SCHEMES.contains(&scheme) || rest.is_empty() {
                return Err(bad("is not a URL of a supported scheme (file, s3, az, gs, http, https)"));
            }
            let parsed = Url::parse(p).map_err(|e| bad(&e.to_string()))?;
            if parsed.query().is_some() || parsed.fragment().is_some() {
                return Err(bad("has a query or fragment (a prefix is a path)"));
            }
            // Kept as the URL parser writes it, as definitions' URLs are compared (review BF1:
            // `http://LOCALHOST/mods/` or `/./mods/` matched nothing, silently).
            let p = parsed.as_str();
            Ok(if p.ends_with('/') { p.to_string() } else { format!("{p}/") })
        })
        .collect()
}

/// The key of an allowed URL's object in its origin's store: its path, each segment
/// percent-decoded (review BF1: the path was passed on still encoded and encoded again, so
/// `a%20b.wasm` asked for `a%252520b.wasm`, and a file URL read a file of that name). A query or
/// fragment is refused, not dropped (`x.wasm?v=2` read `x.wasm`), as is an escaped `/` or `\`
/// (a segment that would name two).
fn object_key(path: &str, parsed: &Url) -> Result<String, ExecError> {
    let bad = |why: &str| ExecError::InvalidArgument(format!("wasmBlobPath {path:?}: {why}"));
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(bad("a URL under allowedBlobUrls names an object by its path; its query or fragment would not be sent"));
    }
    let mut key = String::new();
    for segment in parsed.path_segments().into_iter().flatten() {
        let decoded = percent_encoding::percent_decode_str(segment).decode_utf8().map_err(|_| bad("a segment of its path is not UTF-8 once decoded"))?;
        if decoded.contains(['/', '\\']) {
            return Err(bad("a segment of its path has an escaped / or \\"));
        }
        key.push('/');
        key.push_str(&decoded);
    }
    Ok(key)
}

impl RoutedSource {
    pub fn new(default: Arc<dyn BlobSource>, allowed: Vec<String>) -> Self {
        RoutedSource { default, allowed, by_origin: Mutex::new(HashMap::new()) }
    }

    /// For an allowed absolute URL: the store of its origin and the path within it.
    fn route(&self, path: &str) -> Result<Option<(Arc<ObjectSource>, String)>, ExecError> {
        if self.allowed.is_empty() {
            return Ok(None);
        }
        let Some((scheme, _)) = path.split_once("://") else { return Ok(None) };
        if !URL_SCHEMES.contains(&scheme) {
            return Ok(None);
        }
        let parsed = Url::parse(path).map_err(|e| ExecError::InvalidArgument(format!("wasmBlobPath {path:?}: {e}")))?;
        // Compare the normalized URL (no `..`, no percent tricks) with the prefixes.
        let normalized = parsed.as_str();
        if normalized != path || !self.allowed.iter().any(|p| normalized.starts_with(p.as_str())) {
            return Ok(None);
        }
        let origin = if scheme == "file" { "file:///".to_string() } else { format!("{scheme}://{}", parsed.authority()) };
        let mut map = self.by_origin.lock().unwrap_or_else(|p| p.into_inner());
        let source = match map.get(&origin) {
            Some(s) => s.clone(),
            None => {
                let connector = crate::store_http::Connector::within(self.allowed.clone().into());
                let s = Arc::new(ObjectSource::open_with(&origin, &[], connector)?);
                map.insert(origin, s.clone());
                s
            }
        };
        Ok(Some((source, object_key(path, &parsed)?)))
    }
}

impl BlobSource for RoutedSource {
    fn release(&self) {
        self.default.release();
    }

    fn fetch<'a>(&'a self, path: &'a str, max_bytes: u64) -> BoxFuture<'a, Result<Vec<u8>, ExecError>> {
        Box::pin(async move {
            match self.route(path)? {
                Some((source, key)) => source.get_at_most(&key, max_bytes).await.map(|b| b.to_vec()).map_err(|e| match e {
                    ExecError::BlobNotFound { message, .. } => ExecError::BlobNotFound { path: path.into(), message },
                    ExecError::BlobUnavailable { message, .. } => ExecError::BlobUnavailable { path: path.into(), message },
                    other => other,
                }),
                None => self.default.fetch(path, max_bytes).await,
            }
        })
    }
}
