//! The proxy's worker threads (issue 23 part 4): one single-threaded tokio runtime per thread,
//! each accepting on every proxy listener's socket and serving the connections it accepted
//! from start to end on that thread, as nginx's worker processes (and Pingora's
//! `work_stealing = false`) do. A connection's tasks, timers, upstream keep-alive pool and
//! wake-ups stay on one thread: no task moves between threads and no thread wakes another
//! for a request.
//!
//! Everything else (the supervisor, the API, the fleet, ACME orders) runs on `ten serve`'s
//! main runtime. What a proxy connection hands to it (a management API request on
//! `{domain}`, waking an idle instance, placing a fleet tenant, an ACME order) is spawned
//! there with [`OnMain`], so that it never lives on a worker's runtime.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::runtime::Handle;
use tokio::sync::watch;

use tenement_proxy::management::{Management, Request, Response, Waker};

use crate::server::compose::Wake;

/// The worker threads and their runtimes' handles.
pub struct Workers {
    handles: Vec<Handle>,
    stop: watch::Sender<bool>,
    threads: parking_lot::Mutex<Vec<JoinHandle<()>>>,
}

impl Workers {
    /// Start `n` worker threads (named `ten-proxy`), each running its own runtime until
    /// [`Workers::stop`].
    pub fn start(n: usize) -> Result<Arc<Self>> {
        let (stop, rx) = watch::channel(false);
        let mut handles = Vec::with_capacity(n);
        let mut threads = Vec::with_capacity(n);
        for i in 0..n.max(1) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start a proxy worker's runtime")?;
            handles.push(rt.handle().clone());
            let mut rx = rx.clone();
            let t = std::thread::Builder::new()
                .name("ten-proxy".into())
                .spawn(move || {
                    rt.block_on(async move {
                        let _ = rx.wait_for(|stop| *stop).await;
                    });
                    // Connections still open here are closed by the process's exit.
                    rt.shutdown_timeout(Duration::from_millis(100));
                })
                .with_context(|| format!("cannot start proxy worker thread {i}"))?;
            threads.push(t);
        }
        Ok(Arc::new(Workers {
            handles,
            stop,
            threads: parking_lot::Mutex::new(threads),
        }))
    }

    /// One handle per worker, in order.
    pub fn handles(&self) -> &[Handle] {
        &self.handles
    }

    /// How many workers serve the proxy listeners.
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// End every worker's runtime (the very end of `ten serve`, after the drain) and wait for
    /// the threads, at most about a second (a thread still busy then is left to the process's
    /// exit).
    pub fn stop(&self) {
        self.stop.send_replace(true);
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        let threads = std::mem::take(&mut *self.threads.lock());
        while threads.iter().any(|t| !t.is_finished()) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        for t in threads {
            if t.is_finished() {
                let _ = t.join();
            } else {
                tracing::warn!("a proxy worker did not end within 1 s of the shutdown");
            }
        }
    }
}

/// How many proxy workers: `[settings] threads`, else `TOKIO_WORKER_THREADS` (as the main
/// runtime reads it), else one per CPU `ten serve` may run on.
pub fn count(threads: Option<u32>) -> usize {
    if let Some(n) = threads {
        return n as usize;
    }
    if let Some(n) = std::env::var("TOKIO_WORKER_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|n| *n > 0)
    {
        return n;
    }
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Runs `T`'s work on the main runtime: a management API request arriving on a proxy worker
/// is handled there (what it starts, a deploy, a log stream, an instance, outlives the request
/// and must not live on a worker).
pub struct OnMain<T: ?Sized> {
    inner: Arc<T>,
    main: Handle,
}

impl<T: ?Sized> OnMain<T> {
    /// `main`: the main runtime (call from it: `Handle::current()`).
    pub fn new(inner: Arc<T>, main: Handle) -> Self {
        OnMain { inner, main }
    }

    /// Run `f(inner)` on the main runtime and wait for its result, or why there is none: the
    /// task panicked, or was cancelled (the main runtime is shutting down). The task goes on
    /// if the caller stops waiting (its client went away): what it does, a deploy, a wake,
    /// finishes.
    pub async fn run<R, F, Fut>(&self, f: F) -> Result<R, &'static str>
    where
        F: FnOnce(Arc<T>) -> Fut,
        Fut: std::future::Future<Output = R> + Send + 'static,
        R: Send + 'static,
    {
        self.main
            .spawn(f(self.inner.clone()))
            .await
            .map_err(|e| match e.is_panic() {
                true => PANICKED,
                false => SHUTTING_DOWN,
            })
    }
}

#[async_trait::async_trait]
impl Management for OnMain<dyn Management> {
    async fn handle(&self, req: Request) -> Response {
        match self
            .run(move |api| async move { api.handle(req).await })
            .await
        {
            Ok(r) => r,
            Err(why) => {
                let mut r = Response::new(tenement_proxy::management::Body::Full(
                    bytes::Bytes::from(serde_json::json!({ "error": why }).to_string()),
                ));
                *r.status_mut() = match why {
                    PANICKED => http::StatusCode::INTERNAL_SERVER_ERROR,
                    _ => http::StatusCode::SERVICE_UNAVAILABLE,
                };
                r
            }
        }
    }
}

/// Waking an idle instance (its runner and probes start) and placing a fleet tenant run on
/// the main runtime too.
#[async_trait::async_trait]
impl Waker for OnMain<Wake> {
    async fn wake(&self, process: &str, id: &str) -> Result<(), String> {
        let (process, id) = (process.to_string(), id.to_string());
        self.run(move |w| async move { w.wake(&process, &id).await })
            .await
            .unwrap_or_else(|why| Err(why.into()))
    }

    async fn place(&self, tenant: &str) -> Result<(), String> {
        let tenant = tenant.to_string();
        self.run(move |w| async move { w.place(&tenant).await })
            .await
            .unwrap_or_else(|why| Err(why.into()))
    }
}

const SHUTTING_DOWN: &str = "ten serve is shutting down";
const PANICKED: &str = "internal error (see ten serve's log)";

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn each_worker_is_its_own_thread_and_work_on_main_runs_on_main() {
        let workers = Workers::start(2).unwrap();
        assert_eq!(workers.len(), 2);
        let main = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("main-rt")
            .enable_all()
            .build()
            .unwrap();
        let on_main = Arc::new(OnMain::new(Arc::new(()), main.handle().clone()));
        let name = || std::thread::current().name().unwrap_or("").to_string();
        let seen: Vec<(String, String)> = workers
            .handles()
            .iter()
            .map(|h| {
                let on_main = on_main.clone();
                let (tx, rx) = std::sync::mpsc::channel();
                h.spawn(async move {
                    let here = name();
                    let there = on_main.run(|_| async move { name() }).await.unwrap();
                    // A panic on main is told apart from a shutdown (a 500, not a 503).
                    let panicked = on_main
                        .run(|_| async move { panic!("a handler panics") })
                        .await;
                    assert_eq!(panicked, Err(PANICKED));
                    tx.send((here, there)).unwrap();
                });
                rx.recv_timeout(Duration::from_secs(10)).unwrap()
            })
            .collect();
        for (here, there) in &seen {
            assert_eq!(here, "ten-proxy");
            assert_eq!(there, "main-rt");
        }
        workers.stop();
        assert!(workers.threads.lock().is_empty());
    }

    #[test]
    fn the_count_is_threads_when_set() {
        assert_eq!(count(Some(3)), 3);
    }
}
