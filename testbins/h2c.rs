//! `ten-testapp --h2c`: the app speaks HTTP/1.1 and HTTP/2 cleartext (h2c by prior knowledge,
//! told apart by the connection preface) through hyper, for `upstream_http2` tests. Every
//! request gets JSON `{"_name", "version", "path"}`: the version the app saw.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;

/// Serve `listener` forever (HTTP/1.1 and h2c).
pub fn serve(listener: std::net::TcpListener, name: String) -> Result<(), String> {
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener).map_err(|e| e.to_string())?;
        let name: &'static str = Box::leak(name.into_boxed_str());
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(_) => continue,
            };
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let body = serde_json::json!({
                            "_name": name,
                            "version": format!("{:?}", req.version()),
                            "path": req.uri().path(),
                        })
                        .to_string();
                        async move {
                            Ok::<_, Infallible>(
                                Response::builder()
                                    .header("content-type", "application/json")
                                    .body(Full::new(Bytes::from(body)))
                                    .unwrap_or_default(),
                            )
                        }
                    });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}
