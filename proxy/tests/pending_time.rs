//! Streams account how long their reads waited only when asked (vendored pingora-core patch
//! 0008, issue 23): `set_track_pending_time(false)`, as `ten serve` sets it, leaves the read
//! pending time at zero and reads no clock for it; the default (`true`) accounts it as Pingora
//! did. One test: the switch is process-wide. Over TCP on 127.0.0.1.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use pingora_core::protocols::l4::stream::{set_track_pending_time, Stream as L4Stream};
use pingora_core::protocols::GetTimingDigest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod support;
use support::{pair, runtime};

/// The read pending time of a stream after a read that had to wait for its bytes.
async fn pending_after_a_waiting_read() -> Duration {
    let (mut client, server) = pair().await;
    let mut stream = L4Stream::from(server);
    let mut buf = [0u8; 8];
    let read = tokio::spawn(async move {
        let n = stream.read(&mut buf).await.unwrap();
        (stream, n)
    });
    // Let the read run and find nothing to read (it waits), then give it its bytes.
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
    assert!(!read.is_finished(), "the read waits for its bytes");
    client.write_all(b"ping").await.unwrap();
    let (stream, n) = read.await.unwrap();
    assert_eq!(n, 4);
    stream.get_read_pending_time()
}

#[test]
fn read_pending_time_is_accounted_only_when_tracked() {
    runtime().block_on(async {
        set_track_pending_time(false);
        assert_eq!(pending_after_a_waiting_read().await, Duration::ZERO);
        set_track_pending_time(true);
        assert_ne!(pending_after_a_waiting_read().await, Duration::ZERO);
    });
}
