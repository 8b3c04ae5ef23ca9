//! Which calls may be sent again, and when: idempotent methods (what their proto declares), after
//! a connection failure or UNAVAILABLE, a bounded number of times.

use std::time::Duration;

use tonic::body::Body;

/// Attempts of one call, the first included.
pub(crate) const MAX_ATTEMPTS: u32 = 3;

/// The first retry's backoff; doubled for the next, each jittered down to half.
pub(crate) const RETRY_BACKOFF: Duration = Duration::from_millis(10);

/// Whether a call to `path` may be sent again: what its proto says (`idempotency_level`
/// `IDEMPOTENT` or `NO_SIDE_EFFECTS` on a unary method, see [`mesh_proto::rpc`]). Only these are
/// retried.
pub fn idempotent(path: &str) -> bool {
    mesh_proto::rpc::by_path(path).is_some_and(mesh_proto::rpc::Rpc::is_retryable)
}

/// What one attempt came to.
pub(crate) type Answer = Result<http::Response<Body>, tonic::transport::Error>;

/// Whether an answer may be retried: a connection failure, or UNAVAILABLE from the server
/// (load shed, draining, or its own dependency down). Any other status is the answer.
pub(crate) fn retryable(answer: &Answer) -> bool {
    match answer {
        Err(_) => true,
        Ok(response) => {
            mesh_telemetry::trace::status_in_headers(response.headers())
                == Some(tonic::Code::Unavailable)
        }
    }
}
