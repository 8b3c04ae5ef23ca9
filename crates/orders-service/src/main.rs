//! The orders service binary: flags and env, logging, then [`orders_service::Application`].

use mesh_telemetry::exit_on_start_error;
use orders_service::{Application, Args};

#[tokio::main]
async fn main() {
    let args: Args = mesh_telemetry::parse_args();
    mesh_telemetry::init();
    let app = Application::build(args)
        .await
        .unwrap_or_else(|e| exit_on_start_error(e));
    tracing::info!(addr = %app.addr(), "orders service listening");
    if let Err(error) = app
        .run_until_stopped(mesh_telemetry::shutdown_signal())
        .await
    {
        exit_on_start_error(error);
    }
}
