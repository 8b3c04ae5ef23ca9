//! Integration tests of the secured hop: real certificates, real TLS, real tokens from the real
//! auth service, servers on 127.0.0.1:0. One test binary; one module per concern.

mod attacks;
mod balance;
mod binding;
mod browser;
mod capture;
mod exchange_grant;
mod flow;
mod fuzz;
mod hop;
mod identity;
mod issuer_limits;
mod keys;
mod metrics;
mod oidc;
mod policy;
mod refusals;
mod replicas;
mod resilience;
mod revocation;
mod sso;
mod tidy;
mod tls;
mod token_endpoint;
mod traces;
mod user_grants;
mod validation;
