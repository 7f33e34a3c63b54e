//! The one HTTP request syncgate makes: `GET` of a JWKS document. HTTP/1.1 over hyper's connection
//! API, one connection per request (a fetch is at most every 30 s), TLS by rustls with the bundled
//! Mozilla roots. Redirects are not followed: a 3xx is an error naming the status.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::body::Bytes;
use hyper::header::{ACCEPT, HOST, USER_AGENT};
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{ClientConfig, RootCertStore, crypto};

pub(crate) struct HttpClient {
    tls: TlsConnector,
}

impl HttpClient {
    pub fn new() -> Result<HttpClient, String> {
        let roots = RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        let mut config = ClientConfig::builder_with_provider(Arc::new(crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(HttpClient {
            tls: TlsConnector::from(Arc::new(config)),
        })
    }

    /// The body of a `200`-class answer to `GET uri`, at most `max_bytes` long, within `timeout`.
    pub async fn get(&self, uri: &str, max_bytes: usize, timeout: Duration) -> Result<Vec<u8>, String> {
        match tokio::time::timeout(timeout, self.get_inner(uri, max_bytes)).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {} s", timeout.as_secs())),
        }
    }

    async fn get_inner(&self, uri: &str, max_bytes: usize) -> Result<Vec<u8>, String> {
        let parsed: Uri = uri.parse().map_err(|e| format!("bad URL: {e}"))?;
        let https = match parsed.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err("the URL must start with http:// or https://".into()),
        };
        let authority = parsed.authority().ok_or("the URL has no host")?.clone();
        // `[::1]` in a URL is `::1` to the resolver and to TLS.
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        let path = parsed.path_and_query().map_or("/", |p| p.as_str());
        let request = Request::get(path)
            .header(HOST, authority.as_str())
            .header(USER_AGENT, concat!("syncgate/", env!("CARGO_PKG_VERSION")))
            .header(ACCEPT, "application/json")
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let tcp = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;
        if https {
            let name =
                ServerName::try_from(host.clone()).map_err(|e| format!("bad TLS server name {host}: {e}"))?;
            let tls = self
                .tls
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS: {e}"))?;
            send(TokioIo::new(tls), request, max_bytes).await
        } else {
            send(TokioIo::new(tcp), request, max_bytes).await
        }
    }
}

async fn send<T>(io: T, request: Request<Empty<Bytes>>, max_bytes: usize) -> Result<Vec<u8>, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    // The connection future does the I/O; it ends with the request (or is aborted below).
    let driver = tokio::spawn(connection);
    let result = async {
        let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("HTTP {status}"));
        }
        let body = Limited::new(response.into_body(), max_bytes)
            .collect()
            .await
            .map_err(|e| format!("reading the body: {e}"))?;
        Ok(body.to_bytes().to_vec())
    }
    .await;
    driver.abort();
    result
}
