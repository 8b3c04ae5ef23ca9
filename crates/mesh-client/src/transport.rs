//! The one type every mesh client is built on: a boxed, cloneable channel with any layers.

use tonic::transport::Channel;

/// A boxed, cloneable, shareable gRPC transport: a mesh `Channel`, possibly wrapped in layers
/// (tracing, tokens). Clients built on it have one type whatever the layers are.
///
/// The error stays the channel's concrete error type: a boxed `dyn Error` here trips the
/// compiler's higher-ranked lifetime checks inside async handlers.
pub type Transport = tower::util::BoxCloneSyncService<
    http::Request<tonic::body::Body>,
    http::Response<tonic::body::Body>,
    tonic::transport::Error,
>;

/// A bare channel as a [`Transport`].
pub fn transport(channel: Channel) -> Transport {
    Transport::new(channel)
}
