//! The load generator: N connections, C concurrent streams spread over them, either closed-loop
//! (each stream sends its next call when the last one answers: maximum throughput) or open-loop
//! at a fixed rate (call i is due at start + i/rate, handed out then by a pacer thread, and its
//! latency counts from then, so a slow answer cannot hide the calls queued behind it: no
//! coordinated omission). Warm-up calls are made and discarded.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tonic::codegen::{Body, Bytes, StdError};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// How to drive the load.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Connections (one tonic channel each).
    pub connections: usize,
    /// Calls in flight at once, spread over the connections.
    pub streams: usize,
    /// Discarded warm-up.
    pub warmup: Duration,
    /// Measured time.
    pub duration: Duration,
    /// `None`: closed loop; `Some(r)`: open loop at r calls per second.
    pub rate: Option<f64>,
}

/// What a run measured (warm-up excluded).
#[derive(Debug)]
pub struct Measured {
    /// Calls answered OK.
    pub ok: u64,
    /// Calls that failed.
    pub errors: u64,
    /// Measured wall time.
    pub elapsed: Duration,
    /// Latency in microseconds (from the due time in open loop).
    pub latency: Histogram<u64>,
}

impl Measured {
    /// Answered calls per second.
    pub fn throughput(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    /// A latency quantile in milliseconds.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        self.latency.value_at_quantile(q) as f64 / 1e3
    }
}

fn histogram() -> Histogram<u64> {
    // 1 µs to 60 s, 3 significant digits: constant bounds, valid by construction.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// What the load is driven through: a tonic channel, or a client stack around one.
pub trait Connection:
    tonic::client::GrpcService<
        tonic::body::Body,
        Future: Send,
        Error: Into<StdError>,
        ResponseBody: Body<Data = Bytes, Error: Into<StdError> + Send> + Send + 'static,
    > + Clone
    + Send
    + 'static
{
}

impl<T> Connection for T where
    T: tonic::client::GrpcService<
            tonic::body::Body,
            Future: Send,
            Error: Into<StdError>,
            ResponseBody: Body<Data = Bytes, Error: Into<StdError> + Send> + Send + 'static,
        > + Clone
        + Send
        + 'static
{
}

/// Drives `shape` over `channels` (one per connection), each call carrying `token`.
pub async fn drive<T: Connection>(
    channels: &[T],
    token: &str,
    shape: Shape,
) -> anyhow::Result<Measured> {
    anyhow::ensure!(!channels.is_empty(), "no connections");
    let header = auth_interceptor::BearerToken::new(token)?;
    let start = Instant::now();
    let measure_from = start + shape.warmup;
    let end = measure_from + shape.duration;
    // Open loop: the calls' due times come from a pacer thread, not from tokio's timer, whose
    // 1 ms granularity would add up to a millisecond to every latency (and hide the tenths of a
    // millisecond the layers add).
    let paced = shape.rate.map(|rate| pacer(start, end, rate));
    let mut workers = Vec::with_capacity(shape.streams);
    for worker in 0..shape.streams {
        let mut client = HealthClient::new(channels[worker % channels.len()].clone());
        let header = header.clone();
        let paced = paced.clone();
        workers.push(tokio::spawn(async move {
            let mut latency = histogram();
            let (mut ok, mut errors) = (0u64, 0u64);
            loop {
                let due = match &paced {
                    None => Instant::now(),
                    Some(paced) => match paced.lock().await.recv().await {
                        Some(due) => due,
                        None => break,
                    },
                };
                if due >= end {
                    break;
                }
                let mut request = tonic::Request::new(HealthCheckRequest::default());
                header.attach(&mut request);
                let answered = client.check(request).await;
                if due < measure_from {
                    continue;
                }
                match answered {
                    Ok(_) => {
                        ok += 1;
                        let micros = due.elapsed().as_micros().max(1) as u64;
                        let _ = latency.record(micros.min(60_000_000));
                    }
                    Err(_) => errors += 1,
                }
            }
            (ok, errors, latency)
        }));
    }
    let mut measured = Measured {
        ok: 0,
        errors: 0,
        elapsed: Duration::ZERO,
        latency: histogram(),
    };
    for worker in workers {
        let (ok, errors, latency) = worker.await?;
        measured.ok += ok;
        measured.errors += errors;
        measured.latency.add(&latency)?;
    }
    // Calls are counted by when they were due, so the window is exactly `duration`.
    measured.elapsed = shape.duration;
    Ok(measured)
}

/// Due times of calls at `rate` per second from `start` until `end`, each handed out when it is
/// due: a thread sleeps until then (the kernel's timer slack, ~50 µs, is the error), and never
/// skips a call it is late for. The workers share the receiver; the stream ends at `end`.
pub(crate) type Paced = Arc<tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<Instant>>>;

pub(crate) fn pacer(start: Instant, end: Instant, rate: f64) -> Paced {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for index in 0u64.. {
            let due = start + Duration::from_secs_f64(index as f64 / rate);
            if due >= end {
                break;
            }
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            if tx.send(due).is_err() {
                break;
            }
        }
    });
    Arc::new(tokio::sync::Mutex::new(rx))
}
