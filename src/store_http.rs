//! The HTTP client of the network object stores (`s3://`, `az://`, `gs://`, `http(s)://`):
//! object_store's own (reqwest, its `ClientOptions`), with every answer's body bounded. One that
//! is not a success is read to at most `MAX_ERROR_BODY` bytes: object_store reads such a body
//! whole into its error's message, bounded by nothing but the store's `timeoutMs`, and a store
//! answering 404 with an endless body took the process to 5 GB of memory in 6 s (review BD2),
//! through a download, an artifact lookup or write, or an actor store's first-use check. A
//! success's body fails past what it stated (`Content-Length`), or, stating nothing, past
//! `MAX_UNSTATED_BODY` (a `GET`) or `MAX_OTHER_BODY` (any other method): object_store reads some
//! whole too, a bulk delete's answer and a credentials endpoint's (review BE1: an endless 200 to
//! the actor store's probe delete, 4 GB in 3.5 s).

use async_trait::async_trait;
use object_store::client::{HttpClient, HttpConnector, HttpError, HttpErrorKind, HttpRequest, HttpResponse, HttpResponseBody, HttpService, ReqwestConnector};
use object_store::ClientOptions;

/// The most bytes of an error answer's body read (the rest is not: the connection is dropped).
pub const MAX_ERROR_BODY: usize = 64 * 1024;

/// The most bytes of a `GET` answer that states no length (object_store refuses a download
/// without one; lists and credentials are small).
pub const MAX_UNSTATED_BODY: u64 = 16 << 20;
/// The most bytes of the answer to any other method (a bulk delete's, a token's), whatever it states.
pub const MAX_OTHER_BODY: u64 = 1 << 20;

/// Builds the stores' clients (`with_http_connector`).
#[derive(Debug, Default)]
pub struct Connector;

impl HttpConnector for Connector {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<HttpClient> {
        Ok(HttpClient::new(Capped(ReqwestConnector::default().connect(options)?)))
    }
}

#[derive(Debug)]
struct Capped(HttpClient);

#[async_trait]
impl HttpService for Capped {
    async fn call(&self, req: HttpRequest) -> Result<HttpResponse, HttpError> {
        let get = req.method() == http::Method::GET;
        let response = self.0.execute(req).await?;
        if response.status().is_success() {
            let stated = response
                .headers()
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            let max = match (get, stated) {
                (true, Some(n)) => n,
                (true, None) => MAX_UNSTATED_BODY,
                (false, n) => n.unwrap_or(MAX_OTHER_BODY).min(MAX_OTHER_BODY),
            };
            let (parts, body) = response.into_parts();
            return Ok(HttpResponse::from_parts(parts, HttpResponseBody::new(Bounded { body, left: max })));
        }
        let (parts, body) = response.into_parts();
        let mut stream = body.bytes_stream();
        let mut kept: Vec<u8> = Vec::new();
        while kept.len() < MAX_ERROR_BODY {
            match std::future::poll_fn(|cx| futures_core::Stream::poll_next(stream.as_mut(), cx)).await {
                Some(Ok(part)) => kept.extend_from_slice(&part[..part.len().min(MAX_ERROR_BODY - kept.len())]),
                // What came before the failure is what the message shows.
                Some(Err(_)) | None => break,
            }
        }
        Ok(HttpResponse::from_parts(parts, HttpResponseBody::from(bytes::Bytes::from(kept))))
    }
}

/// A success's body, failing once it passes `left` more bytes.
#[derive(Debug)]
struct Bounded {
    body: HttpResponseBody,
    left: u64,
}

impl http_body::Body for Bounded {
    type Data = bytes::Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, HttpError>>> {
        let polled = std::pin::Pin::new(&mut self.body).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Ok(frame))) = &polled {
            let n = frame.data_ref().map_or(0, |d| d.len() as u64);
            match self.left.checked_sub(n) {
                Some(left) => self.left = left,
                None => {
                    let e = HttpError::new(HttpErrorKind::Decode, std::io::Error::other("the answer's body is longer than it may be"));
                    return std::task::Poll::Ready(Some(Err(e)));
                }
            }
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::Bounded;
    use bytes::Bytes;
    use object_store::client::HttpResponseBody;

    #[tokio::test]
    async fn a_body_fails_past_what_it_may_be_and_passes_whole_within_it() {
        let over = HttpResponseBody::new(Bounded { body: HttpResponseBody::from(Bytes::from(vec![7u8; 101])), left: 100 });
        assert!(over.bytes().await.is_err(), "one byte past its bound");
        let within = HttpResponseBody::new(Bounded { body: HttpResponseBody::from(Bytes::from(vec![7u8; 100])), left: 100 });
        assert_eq!(within.bytes().await.expect("whole").len(), 100);
    }
}
