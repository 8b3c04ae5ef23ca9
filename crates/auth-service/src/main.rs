//! The auth service binary: flags and env, logging, then [`auth_service::Application`].

use auth_service::{Application, Args};
use mesh_telemetry::exit_on_start_error;

#[tokio::main]
async fn main() {
    let args: Args = mesh_telemetry::parse_args();
    mesh_telemetry::init();
    let settings = args
        .into_settings()
        .unwrap_or_else(|e| exit_on_start_error(e));
    let app = Application::build(settings)
        .await
        .unwrap_or_else(|e| exit_on_start_error(e));
    tracing::info!(
        mesh = %app.mesh_addr(),
        public = %app.public_addr(),
        issuer = app.issuer(),
        "auth service listening"
    );
    if let Err(error) = app
        .run_until_stopped(mesh_telemetry::shutdown_signal())
        .await
    {
        exit_on_start_error(error);
    }
}
