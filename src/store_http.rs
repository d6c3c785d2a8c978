//! The HTTP client of the network object stores (`s3://`, `az://`, `gs://`, `http(s)://`):
//! object_store's own (reqwest, its `ClientOptions`), with the body of an answer that is not a
//! success read to at most `MAX_ERROR_BODY` bytes. object_store reads such a body whole into its
//! error's message, bounded by nothing but the store's `timeoutMs`: a store answering 404 with an
//! endless body took the process to 5 GB of memory in 6 s (review BD2), through a download, an
//! artifact lookup or write, or an actor store's first-use check.

use async_trait::async_trait;
use object_store::client::{HttpClient, HttpConnector, HttpError, HttpRequest, HttpResponse, HttpResponseBody, HttpService, ReqwestConnector};
use object_store::ClientOptions;

/// The most bytes of an error answer's body read (the rest is not: the connection is dropped).
pub const MAX_ERROR_BODY: usize = 64 * 1024;

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
        let response = self.0.execute(req).await?;
        if response.status().is_success() {
            return Ok(response);
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
