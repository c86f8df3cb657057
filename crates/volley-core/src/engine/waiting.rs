//! A request a client is waiting on (the gateway's proxy): it must start within the
//! client's patience, it is dropped the moment the client goes away (its ticket
//! dropped), and a streamed reply is handed to the client chunk by chunk as it comes,
//! while the engine still reads its usage for the ledger.
//!
//! Retries happen only before the first byte reaches the client: a reply that is an
//! error, or not a stream, is read whole and judged like any other; once a stream's
//! head has gone to the client, the attempt is the answer, whatever it turns out to be.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::provider::classify::TransportFailure;
use crate::provider::classify::{Classified, Reason};
use crate::provider::sse::{SseWatch, classified_fail};
use crate::provider::transport::StreamReply;

/// Chunks of a stream buffered between the provider and a slow client.
const STREAM_BUFFER: usize = 32;

/// What the engine knows of a client waiting on a request.
#[derive(Debug)]
pub struct Waiting {
    /// The latest instant its first attempt may start; later, it fails as
    /// `queue_timeout` (the client would rather hear so than wait on).
    pub start_by: Option<Instant>,
    tap: Option<StreamTap>,
    /// Set once a stream's head has gone to the client: from then on the attempt is
    /// the answer, and a client that leaves is noticed by the pump, which settles what
    /// was streamed (its usage), rather than by dropping the request unsettled.
    streaming: AtomicBool,
    /// Set once the provider's stream has ended whole and every chunk was passed on:
    /// a stream whose channel closes without it was cut (the request dropped at a
    /// shutdown), and its client must see it cut.
    ended_whole: Arc<AtomicBool>,
}

/// A chunk of a streamed body, or why the stream broke off: passed on as an error, so
/// the client sees a cut stream as cut, not as a short complete one.
pub type StreamChunk = Result<Bytes, std::io::Error>;

#[derive(Debug)]
struct StreamTap {
    head: Mutex<Option<oneshot::Sender<StreamHead>>>,
    chunks: mpsc::Sender<StreamChunk>,
}

/// The status and headers of a streamed reply, sent to the client before its body.
#[derive(Debug)]
pub struct StreamHead {
    pub status: u16,
    pub headers: HeaderMap,
}

/// The client's end of a streamed request: the head comes once the provider has
/// answered with a stream, then the chunks. If the request ends without streaming (an
/// error, a reply that is no stream), the head never comes and its ticket says why.
#[derive(Debug)]
pub struct StreamReceiver {
    pub head: oneshot::Receiver<StreamHead>,
    pub chunks: mpsc::Receiver<StreamChunk>,
    /// Set once the stream ended whole: chunks that stop without it were cut (the
    /// request dropped at a shutdown), and the client must see them cut.
    pub ended_whole: Arc<AtomicBool>,
}

impl Waiting {
    /// A client that waits for a whole reply.
    pub fn new(start_by: Option<Instant>) -> Waiting {
        Waiting {
            start_by,
            tap: None,
            streaming: AtomicBool::new(false),
            ended_whole: Arc::default(),
        }
    }

    /// A client that wants a streamed reply as it comes.
    pub fn streamed(start_by: Option<Instant>) -> (Waiting, StreamReceiver) {
        let (head_tx, head) = oneshot::channel();
        let (chunks_tx, chunks) = mpsc::channel(STREAM_BUFFER);
        let waiting = Waiting {
            start_by,
            tap: Some(StreamTap {
                head: Mutex::new(Some(head_tx)),
                chunks: chunks_tx,
            }),
            streaming: AtomicBool::new(false),
            ended_whole: Arc::default(),
        };
        let ended_whole = waiting.ended_whole.clone();
        (
            waiting,
            StreamReceiver {
                head,
                chunks,
                ended_whole,
            },
        )
    }

    /// Whether a streamed reply goes to the client as it comes.
    pub fn wants_stream(&self) -> bool {
        self.tap.is_some()
    }

    /// Whether a stream's head has gone to the client.
    pub fn is_streaming(&self) -> bool {
        self.streaming.load(Ordering::SeqCst)
    }

    /// Passes a streamed reply to the client, reading its usage and errors on the way;
    /// each chunk must come from the provider, and be taken by the client, within
    /// `idle`. The verdict is final: the client has the bytes. `redact` cleans each
    /// chunk of the upstream's secrets before it goes on.
    pub(crate) async fn pump(
        &self,
        mut reply: StreamReply,
        idle: Duration,
        mut redact: impl FnMut(Bytes, bool) -> Bytes,
    ) -> Classified {
        let Some(tap) = &self.tap else {
            return classified_fail(Reason::ClientError, "no client to stream to".into());
        };
        let head = tap.head.lock().unwrap_or_else(|p| p.into_inner()).take();
        self.streaming.store(true, Ordering::SeqCst);
        let head_sent = head.is_some_and(|head| {
            head.send(StreamHead {
                status: reply.status,
                headers: std::mem::take(&mut reply.headers),
            })
            .is_ok()
        });
        if !head_sent {
            return gone(SseWatch::new());
        }
        let mut watch = SseWatch::new();
        loop {
            let next = tokio::select! {
                next = tokio::time::timeout(idle, reply.body.next()) => next,
                // The client left while the provider was quiet.
                _ = tap.chunks.closed() => return gone(watch),
            };
            let broke = match next {
                Err(_) => classified_fail(
                    Reason::Timeout,
                    format!(
                        "the stream sent nothing for {:.0} s after it started",
                        idle.as_secs_f64()
                    ),
                ),
                Ok(None) => {
                    let tail = redact(Bytes::new(), true);
                    if !tail.is_empty() && tap.chunks.send_timeout(Ok(tail), idle).await.is_err() {
                        return gone(watch);
                    }
                    self.ended_whole.store(true, Ordering::SeqCst);
                    return watch.finish();
                }
                Ok(Some(Err(TransportFailure::Timeout))) => {
                    classified_fail(Reason::Timeout, "the stream timed out".into())
                }
                Ok(Some(Err(TransportFailure::Connection(why)))) => {
                    classified_fail(Reason::Connection, format!("the stream broke off: {why}"))
                }
                Ok(Some(Ok(chunk))) => {
                    watch.feed(&chunk);
                    let chunk = redact(chunk, false);
                    // A client that takes nothing for `idle` holds a connection slot
                    // no longer.
                    if tap.chunks.send_timeout(Ok(chunk), idle).await.is_err() {
                        return gone(watch);
                    }
                    continue;
                }
            };
            let why = broke.message.clone().unwrap_or_default();
            let _ = tap
                .chunks
                .send_timeout(Err(std::io::Error::other(why)), idle)
                .await;
            return watch.broken(broke);
        }
    }
}

/// The client left mid-stream: a failure, with whatever usage had come by then.
fn gone(watch: SseWatch) -> Classified {
    watch.broken(classified_fail(
        Reason::ClientError,
        "the client went away while the reply streamed".into(),
    ))
}
