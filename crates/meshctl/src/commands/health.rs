//! `meshctl health`: `grpc.health.v1` over mTLS, pinning the server's SPIFFE ID (the compose
//! health checks).

use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use super::connect;
use crate::cli::HealthArgs;
use crate::{CliError, failed};

/// `meshctl health`: exit 0 when the service is SERVING.
pub async fn run(args: HealthArgs) -> Result<(), CliError> {
    let channel = connect(&args.tls, &args.workload, &args.addr)?;
    let status = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: args.service.clone(),
        })
        .await
        .map_err(|s| failed(format!("{}: {}", s.code(), s.message())))?
        .into_inner()
        .status();
    println!("{}: {}", args.addr, status.as_str_name());
    if status == tonic_health::pb::health_check_response::ServingStatus::Serving {
        Ok(())
    } else {
        Err(failed("not serving"))
    }
}
