//! Blocking work (SQLite writes) from async code without stalling the proxy's workers.

/// Runs blocking work (a SQLite write, which may wait for an fsync) from code that may be on a
/// tokio worker thread, which is also the proxy's: on a multi-thread runtime the worker hands
/// its other tasks to another thread while `f` blocks, so a weight change or a deploy never
/// stalls requests in flight (BENCHMARKS.md, weights changing 10 times per second). Elsewhere
/// (no runtime, a current-thread runtime) `f` simply runs.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::blocking;

    #[test]
    fn runs_with_and_without_a_runtime() {
        assert_eq!(blocking(|| 1), 1);
        let current = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert_eq!(current.block_on(async { blocking(|| 2) }), 2);
        let multi = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .unwrap();
        // On a worker, and from the runtime's own block_on.
        let on_worker = multi.block_on(async { tokio::spawn(async { blocking(|| 3) }).await });
        assert_eq!(on_worker.unwrap(), 3);
        assert_eq!(multi.block_on(async { blocking(|| 4) }), 4);
    }

    #[test]
    fn other_tasks_run_while_one_blocks() {
        let multi = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_time()
            .build()
            .unwrap();
        multi.block_on(async {
            let (tx, rx) = std::sync::mpsc::channel::<()>();
            // Blocks its worker until the other task has run: with one worker, that task runs
            // only because the blocked one handed the worker over.
            let blocked = tokio::spawn(async move {
                blocking(|| rx.recv_timeout(std::time::Duration::from_secs(20)).is_ok())
            });
            let other = tokio::spawn(async move { tx.send(()).is_ok() });
            assert!(other.await.unwrap());
            assert!(blocked.await.unwrap());
        });
    }
}
