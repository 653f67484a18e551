//! The guard around each instance's runner task (review L1): a runner that ends by a panic must
//! not leave a "ghost" (a live process nothing supervises, a slot `ten stop` claims to have
//! stopped). The guard kills the instance's process group, marks the slot `failed` with the
//! reason, and keeps it listed until it is stopped; `done` is sent only once the slot is settled.

use std::future::Future;
use std::sync::Arc;

use nix::sys::signal::Signal;
use tokio::sync::watch;

use tenement_conf::{Addr, InstanceName};

use crate::child;
use crate::registry::Registry;
use crate::runner::Stop;
use crate::State;

/// The text of a panic's payload.
fn panic_text(e: tokio::task::JoinError) -> String {
    if !e.is_panic() {
        return "it was cancelled".into();
    }
    let payload = e.into_panic();
    if let Some(s) = payload.downcast_ref::<&str>() {
        format!("it panicked: {s}")
    } else if let Some(s) = payload.downcast_ref::<String>() {
        format!("it panicked: {s}")
    } else {
        "it panicked".into()
    }
}

/// Run `runner` (the instance's whole life) to its end; then tell `done`. If it ended
/// abnormally: kill what it ran, mark the slot failed, and wait for a stop to forget it.
pub async fn supervise(
    reg: Arc<Registry>,
    name: InstanceName,
    mut stop: watch::Receiver<Stop>,
    runner: impl Future<Output = ()> + Send + 'static,
    done: watch::Sender<bool>,
) {
    if let Err(e) = tokio::spawn(runner).await {
        let why = panic_text(e);
        let view = reg.instance(&name);
        if let Some(pid) = view.as_ref().and_then(|v| v.pid) {
            child::signal_group(pid, Signal::SIGKILL);
        }
        if let Some(Addr::Unix(path)) = view.as_ref().and_then(|v| v.addr.as_ref()) {
            let _ = std::fs::remove_file(path);
        }
        let text = format!(
            "internal error: its supervising task ended unexpectedly ({why}); its processes were killed (ten restart {name} starts it again)"
        );
        tracing::error!(instance = %name, "{text}");
        reg.warn(&name, &text);
        reg.set_state(&name, State::Failed, Some(text));
        reg.clear_pid(&name);
        let _ = stop.wait_for(|s| *s != Stop::No).await;
        let forget = matches!(*stop.borrow(), Stop::Yes { forget: true });
        reg.finish(&name, forget);
    }
    let _ = done.send(true);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::registry::tests::NoTraffic;
    use crate::registry::Slot;
    use crate::{Kind, TracingSink};
    use std::os::unix::process::CommandExt;
    use std::time::Duration;

    #[tokio::test]
    async fn a_panicking_runner_leaves_no_ghost() {
        let config = tenement_conf::Config::parse(
            "[process.api]\ncommand = \"x\"\n",
            "tenement.toml",
            std::path::Path::new("/tmp"),
        )
        .unwrap();
        let reg = Arc::new(Registry::new(
            Arc::new(config),
            Arc::new(NoTraffic),
            Arc::new(TracingSink),
            None,
        ));
        let name = InstanceName {
            process: "api".into(),
            id: "1".into(),
        };
        reg.insert(&name, Slot::new(&name, Kind::Spawned, 100, 0, false));
        // The instance's process (its own group), started and recorded as a runner would.
        let mut app = std::process::Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = app.id();
        reg.set_started(&name, pid, Addr::Tcp(([127, 0, 0, 1], 1).into()));
        let (stop_tx, stop) = watch::channel(Stop::No);
        let (done_tx, mut done) = watch::channel(false);
        let task = tokio::spawn(supervise(
            reg.clone(),
            name.clone(),
            stop,
            async { panic!("deadline overflow") },
            done_tx,
        ));
        // Failed, with the reason, and the process killed (bounded wait).
        let mut killed = None;
        for _ in 0..500 {
            killed = app.try_wait().unwrap();
            let failed = reg
                .instance(&name)
                .is_some_and(|v| v.state == State::Failed);
            if killed.is_some() && failed {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if killed.is_none() {
            let _ = app.kill();
            let _ = app.wait();
        }
        assert!(
            killed.is_some(),
            "the instance's process outlived its runner"
        );
        let v = reg.instance(&name).unwrap();
        assert_eq!(v.state, State::Failed);
        assert_eq!(v.pid, None);
        let why = v.last_error.unwrap();
        assert!(why.contains("it panicked: deadline overflow"), "{why}");
        assert!(!*done.borrow(), "done before the slot was settled");
        // A stop is truthful: it forgets the slot, then reports done.
        stop_tx.send_replace(Stop::Yes { forget: true });
        done.wait_for(|d| *d).await.unwrap();
        assert!(reg.instance(&name).is_none());
        task.await.unwrap();
    }
}
