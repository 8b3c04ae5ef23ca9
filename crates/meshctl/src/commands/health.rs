//! `meshctl health`: `grpc.health.v1` over mTLS, pinning the server's SPIFFE ID, or on a
//! service's plaintext health listener (the compose health checks, where the workload's key
//! exists only in the service's memory).

use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use super::connect;
use crate::cli::HealthArgs;
use crate::{CliError, failed};

/// `meshctl health`: exit 0 when the service is SERVING.
pub async fn run(args: HealthArgs) -> Result<(), CliError> {
    let channel = match (&args.workload, args.plaintext) {
        (_, true) => tonic::transport::Endpoint::from_shared(format!("http://{}", args.addr))
            .map_err(|e| CliError::Usage(format!("--addr: {e}")))?
            .connect_timeout(std::time::Duration::from_secs(3))
            .connect_lazy(),
        (Some(workload), false) => connect(&args.tls, workload, &args.addr)?,
        (None, false) => return Err(CliError::Usage("--workload: required".into())),
    };
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
