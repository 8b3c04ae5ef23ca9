//! The client side of every mesh call, one concern per module, built on tower's parts: what a
//! call is sent over ([`transport`]), how long it may take ([`deadline`]), where the replicas are
//! ([`discovery`], a `Discover` stream), which of them are ready ([`replica`], ejection as a
//! readiness gate), which to pick ([`balance`], power of two choices by pending requests),
//! whether to send it again ([`retry`], a `tower::retry::Policy` with a budget), and what was done
//! ([`stats`]). `mesh_service::Runtime::client` stacks them for every service-to-service call;
//! the client trace layer lives with the rest of the tracing in `mesh-telemetry`.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod balance;
pub mod deadline;
pub mod discovery;
pub mod replica;
pub mod retry;
pub mod stats;
mod task;
pub mod transport;

pub use balance::Balanced;
pub use discovery::{Dns, RESOLVE_EVERY, Resolve};
pub use stats::BalanceStats;
pub use task::TaskGuard;
pub use transport::{Transport, transport};
