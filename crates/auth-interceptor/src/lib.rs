//! The shared authentication, authorization and audit layer of the mesh.
//!
//! Any tonic server puts [`AuthLayer`] in front of its services; any tonic client wraps its
//! channel in [`AttachTokenLayer`]. The crate knows nothing about our business services: each
//! service hands it a [`Policy`] keyed by full gRPC method path.
//!
//! On every request the layer, in this order:
//! 1. looks the method up in the policy (unknown methods are denied, before any crypto);
//! 2. authenticates the bearer token (exactly one `authorization` entry; EdDSA/ES256/RS256 with the
//!    algorithm pinned by the JWKS entry, never by the token header; `iss`, `aud`, `exp`, `nbf`,
//!    `typ = at+jwt`, `sub`, `jti` required; `crit` refused);
//! 3. authorizes the token's scopes and the caller's SPIFFE ID (from the mTLS handshake);
//! 4. writes one audit event (target `audit`) for the decision;
//! 5. removes the raw token from the request and inserts a typed [`Principal`] for the handler.
//!
//! # Layout
//! - [`audit`]: the HMAC-chained audit log file and its verification.
//! - [`claims`]: the access-token claims shared by issuer and verifiers.
//! - [`jwks`]: OIDC discovery and the JWKS key set, refreshed in the background.
//! - [`verify`]: [`TokenVerifier`], the checks above plus the verified-token cache.
//! - [`policy`]: [`Policy`] and [`Rule`], default deny.
//! - [`bearer`]: [`BearerToken`], a token that cannot be printed and attaches itself.
//! - [`principal`]: [`Principal`] and [`User`], what handlers see instead of a token.
//! - [`layer`]: [`AuthLayer`], the tower layer that ties it together, and the audit event.
//! - [`revocation`]: [`RevocationList`], the revoked `jti`s and logins every verifier refuses,
//!   kept current by a feed over the issuer's revocation stream.
//! - [`client`]: [`ServiceTokenSource`] and [`AttachTokenLayer`] for a workload's own calls,
//!   [`TokenExchanger`] for calls on behalf of the current caller.
//! - [`error`]: [`AuthError`] and the one mapping to `tonic::Status`.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod audit;
pub mod bearer;
pub mod claims;
pub mod client;
pub mod error;
pub mod jwks;
pub mod layer;
pub mod policy;
pub mod policy_file;
pub mod principal;
pub mod ratelimit;
pub mod revocation;
pub mod verify;

pub use bearer::BearerToken;
pub use claims::AccessClaims;
pub use client::{AttachTokenLayer, ServiceTokenSource, TokenExchanger};
pub use error::AuthError;
pub use jwks::{JwksSource, KeySet};
pub use layer::AuthLayer;
pub use policy::{Policy, PolicySlot, Rule, RuleSummary};
pub use policy_file::{PolicyFileError, parse_policy, parse_trial_policy};
pub use principal::{Principal, User};
pub use revocation::RevocationList;
pub use verify::{TokenVerifier, VerifiedToken, VerifierConfig};

/// The JWT `typ` header of OAuth 2.0 access tokens (RFC 9068).
pub const ACCESS_TOKEN_TYP: &str = "at+jwt";
