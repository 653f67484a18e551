// Part of a patch to pingora-proxy, under the crate's license.
//
// Licensed under the Apache License, Version 2.0 (the "License");
// you may not use this file except in compliance with the License.
// You may obtain a copy of the License at
//
//     http://www.apache.org/licenses/LICENSE-2.0
//
// Unless required by applicable law or agreed to in writing, software
// distributed under the License is distributed on an "AS IS" BASIS,
// WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
// See the License for the specific language governing permissions and
// limitations under the License.

//! A bounded single-producer, single-consumer pipe of [`HttpTask`]s between the two halves
//! of one proxied HTTP/1 exchange.
//!
//! Both halves run in the same task (`try_join!` in `proxy_1to1`), so the pipe lives on that
//! task's stack and the halves borrow it: no allocation per request, and no semaphore or
//! linked block list as in `tokio::sync::mpsc`, whose subset of API this mirrors (`send`,
//! `reserve`, `try_reserve`, `is_closed`, `recv`, and the close on drop of either end).
//!
//! [`HttpTask`]: pingora_core::protocols::http::HttpTask

use std::fmt;
use std::future::poll_fn;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

/// How many tasks the pipe holds (sent and reserved together).
pub(crate) const CAPACITY: usize = crate::TASK_BUFFER_SIZE;

/// The shared state of one pipe. Create it where both ends can borrow it, then [`Pipe::split`].
pub(crate) struct Pipe<T> {
    state: Mutex<State<T>>,
}

struct State<T> {
    slots: [Option<T>; CAPACITY],
    head: usize,
    len: usize,
    reserved: usize,
    tx_closed: bool,
    rx_closed: bool,
    rx_waker: Option<Waker>,
    tx_waker: Option<Waker>,
}

impl<T> State<T> {
    fn has_room(&self) -> bool {
        self.len + self.reserved < CAPACITY
    }
}

/// Wakes the end parked on the pipe, if any; called after the lock is released.
fn wake(waker: Option<Waker>) {
    if let Some(w) = waker {
        w.wake();
    }
}

fn register(slot: &mut Option<Waker>, cx: &Context<'_>) {
    match slot {
        Some(w) if w.will_wake(cx.waker()) => {}
        _ => *slot = Some(cx.waker().clone()),
    }
}

impl<T> Pipe<T> {
    pub(crate) fn new() -> Self {
        Pipe {
            state: Mutex::new(State {
                slots: std::array::from_fn(|_| None),
                head: 0,
                len: 0,
                reserved: 0,
                tx_closed: false,
                rx_closed: false,
                rx_waker: None,
                tx_waker: None,
            }),
        }
    }

    /// The two ends. Call once per pipe.
    pub(crate) fn split(&self) -> (Sender<'_, T>, Receiver<'_, T>) {
        (Sender { pipe: self }, Receiver { pipe: self })
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // Nothing in this module panics while holding the lock.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The sending end. Dropping it ends the pipe for the receiver once it is drained.
pub(crate) struct Sender<'a, T> {
    pipe: &'a Pipe<T>,
}

/// A reserved slot: sending through it cannot wait or fail.
pub(crate) struct Permit<'a, T> {
    pipe: &'a Pipe<T>,
}

/// The sending end could not send: the receiver is gone. Holds what was not sent.
pub(crate) struct SendError<T>(pub T);

/// Why [`Sender::try_reserve`] found no slot.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum TrySendError {
    /// The pipe is full.
    Full,
    /// The receiver is gone.
    Closed,
}

impl<T> fmt::Debug for SendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SendError(..)")
    }
}

impl<T> fmt::Display for SendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("task pipe closed")
    }
}

impl<T> std::error::Error for SendError<T> {}

impl fmt::Display for TrySendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TrySendError::Full => "task pipe full",
            TrySendError::Closed => "task pipe closed",
        })
    }
}

impl std::error::Error for TrySendError {}

impl<T> fmt::Debug for Permit<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Permit")
    }
}

impl<'a, T> Sender<'a, T> {
    /// Waits for a slot, then sends `value`; fails (giving it back) if the receiver is gone.
    pub(crate) async fn send(&self, value: T) -> Result<(), SendError<T>> {
        match self.reserve().await {
            Ok(permit) => {
                permit.send(value);
                Ok(())
            }
            Err(_) => Err(SendError(value)),
        }
    }

    /// Waits for a slot and reserves it; fails if the receiver is gone. Cancel safe: a slot
    /// is reserved only when the future completes.
    pub(crate) async fn reserve(&self) -> Result<Permit<'_, T>, SendError<()>> {
        poll_fn(|cx| {
            let mut state = self.pipe.lock();
            if state.rx_closed {
                Poll::Ready(Err(SendError(())))
            } else if state.has_room() {
                state.reserved += 1;
                Poll::Ready(Ok(()))
            } else {
                register(&mut state.tx_waker, cx);
                Poll::Pending
            }
        })
        .await?;
        Ok(Permit { pipe: self.pipe })
    }

    /// Reserves a slot if one is free now.
    pub(crate) fn try_reserve(&self) -> Result<Permit<'_, T>, TrySendError> {
        let mut state = self.pipe.lock();
        if state.rx_closed {
            Err(TrySendError::Closed)
        } else if state.has_room() {
            state.reserved += 1;
            Ok(Permit { pipe: self.pipe })
        } else {
            Err(TrySendError::Full)
        }
    }

    /// Whether the receiver is gone.
    pub(crate) fn is_closed(&self) -> bool {
        self.pipe.lock().rx_closed
    }
}

impl<T> Drop for Sender<'_, T> {
    fn drop(&mut self) {
        let waker = {
            let mut state = self.pipe.lock();
            state.tx_closed = true;
            state.rx_waker.take()
        };
        wake(waker);
    }
}

impl<T> Permit<'_, T> {
    /// Sends `value` into the reserved slot. If the receiver is gone meanwhile, the value is
    /// dropped with the pipe, as `tokio::sync::mpsc::Permit::send` does.
    pub(crate) fn send(self, value: T) {
        let waker = {
            let mut state = self.pipe.lock();
            let tail = (state.head + state.len) % CAPACITY;
            state.slots[tail] = Some(value);
            state.len += 1;
            state.reserved -= 1;
            state.rx_waker.take()
        };
        std::mem::forget(self);
        wake(waker);
    }
}

impl<T> Drop for Permit<'_, T> {
    fn drop(&mut self) {
        // Not sent: give the slot back.
        let waker = {
            let mut state = self.pipe.lock();
            state.reserved -= 1;
            state.tx_waker.take()
        };
        wake(waker);
    }
}

/// The receiving end. Dropping it closes the pipe for the sender.
pub(crate) struct Receiver<'a, T> {
    pipe: &'a Pipe<T>,
}

impl<T> Receiver<'_, T> {
    /// The next task, or `None` once the sender is gone and everything sent was received.
    /// Cancel safe.
    pub(crate) async fn recv(&mut self) -> Option<T> {
        poll_fn(|cx| {
            let mut state = self.pipe.lock();
            if state.len > 0 {
                let head = state.head;
                let value = state.slots[head].take();
                state.head = (head + 1) % CAPACITY;
                state.len -= 1;
                let waker = state.tx_waker.take();
                drop(state);
                wake(waker);
                Poll::Ready(value)
            } else if state.tx_closed {
                Poll::Ready(None)
            } else {
                register(&mut state.rx_waker, cx);
                Poll::Pending
            }
        })
        .await
    }
}

impl<T> Drop for Receiver<'_, T> {
    fn drop(&mut self) {
        let waker = {
            let mut state = self.pipe.lock();
            state.rx_closed = true;
            state.tx_waker.take()
        };
        wake(waker);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    #[test]
    fn tasks_arrive_in_order_and_the_end_follows_the_sender() {
        let pipe = Pipe::<u32>::new();
        let (tx, mut rx) = pipe.split();
        for i in 0..CAPACITY as u32 {
            tx.send(i).now_or_never().unwrap().unwrap();
        }
        // full: a send waits, try_reserve says so
        assert!(tx.send(99).now_or_never().is_none());
        assert_eq!(tx.try_reserve().unwrap_err(), TrySendError::Full);
        assert_eq!(rx.recv().now_or_never(), Some(Some(0)));
        let permit = tx.try_reserve().unwrap();
        assert_eq!(tx.try_reserve().unwrap_err(), TrySendError::Full);
        permit.send(4);
        drop(tx);
        let got: Vec<_> = std::iter::from_fn(|| rx.recv().now_or_never().unwrap()).collect();
        assert_eq!(got, vec![1, 2, 3, 4]);
        assert_eq!(rx.recv().now_or_never(), Some(None));
    }

    #[test]
    fn an_unused_permit_gives_its_slot_back() {
        let pipe = Pipe::<u32>::new();
        let (tx, mut rx) = pipe.split();
        let permits: Vec<_> = (0..CAPACITY).map(|_| tx.try_reserve().unwrap()).collect();
        assert_eq!(tx.try_reserve().unwrap_err(), TrySendError::Full);
        assert!(tx.reserve().now_or_never().is_none());
        drop(permits);
        tx.reserve().now_or_never().unwrap().unwrap().send(7);
        assert_eq!(rx.recv().now_or_never(), Some(Some(7)));
        assert!(
            rx.recv().now_or_never().is_none(),
            "nothing more sent, sender alive"
        );
    }

    #[test]
    fn a_dropped_receiver_closes_the_pipe_for_the_sender() {
        let pipe = Pipe::<u32>::new();
        let (tx, rx) = pipe.split();
        assert!(!tx.is_closed());
        drop(rx);
        assert!(tx.is_closed());
        assert_eq!(tx.try_reserve().unwrap_err(), TrySendError::Closed);
        assert!(tx.reserve().now_or_never().unwrap().is_err());
        assert_eq!(tx.send(5).now_or_never().unwrap().unwrap_err().0, 5);
    }

    #[tokio::test]
    async fn a_waiting_end_is_woken() {
        let pipe = Pipe::<u32>::new();
        let (tx, mut rx) = pipe.split();
        // the receiver waits for the sender, the sender for room, in one task
        let recv_all = async {
            let mut got = Vec::new();
            while let Some(v) = rx.recv().await {
                got.push(v);
            }
            got
        };
        // no yield between sends: the sender fills the pipe and must be woken for room
        let send_all = async move {
            for i in 0..20 {
                tx.send(i).await.unwrap();
            }
        };
        let both = async { tokio::join!(recv_all, send_all) };
        // a missed wake would hang the task: fail instead
        let (got, ()) = tokio::time::timeout(std::time::Duration::from_secs(10), both)
            .await
            .expect("an end was not woken");
        assert_eq!(got, (0..20).collect::<Vec<_>>());
    }
}
