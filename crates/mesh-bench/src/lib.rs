//! mesh-bench: what each security and observability layer of Zero-Trust Mesh costs, measured
//! against plain tonic in the same run, on the machine at hand.
//!
//! # Layout
//! - [`material`]: certificates, the token signing key and the audit key a run shares.
//! - [`server`]: the benchmark server in its configurations (`mesh-bench serve`, a child process).
//! - [`sidecar`]: configuration 8, plain tonic behind a pair of HAProxy proxies (mTLS between
//!   them): the sidecar mesh compared with.
//! - [`h2load`]: nghttp2's load generator, for the cross-check and the token endpoint.
//! - [`hand_rolled`]: configuration 9, what a team writes from the tonic examples.
//! - [`load`]: closed-loop and open-loop (fixed-rate, no coordinated omission) load, hdrhistogram.
//! - [`procstat`]: a process's CPU time and RSS from /proc; [`loopback`]: a free port, waiting
//!   for a listener.
//! - [`micro`]: the layer-by-layer scenario; [`place_order`]: the real PlaceOrder path with
//!   per-hop latency from traces; [`issuer`]: grants (h2load), token exchanges and certificate
//!   signings per second; [`memory`]: idle RSS per service and per connection (plain, mTLS, full).
//! - [`report`]: the markdown report.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod h2load;
pub mod hand_rolled;
pub mod issuer;
pub mod load;
pub mod loopback;
pub mod material;
pub mod memory;
pub mod micro;
pub mod place_order;
pub mod procstat;
pub mod report;
pub mod server;
pub mod sidecar;
