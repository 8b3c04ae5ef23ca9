//! The orders service binary: flags and env, logging, then [`orders_service::Application`].

use orders_service::{Application, Args};

#[tokio::main]
async fn main() {
    let args: Args = mesh_telemetry::parse_args();
    mesh_telemetry::init();
    let app = match Application::build(args).await {
        Ok(app) => app,
        Err(error) if error.is_config() => mesh_telemetry::exit_bad_config(error),
        Err(error) => {
            eprintln!("error: {error}");
            std::process::exit(1);
        }
    };
    tracing::info!(addr = %app.addr(), "orders service listening");
    if let Err(error) = app
        .run_until_stopped(mesh_telemetry::shutdown_signal())
        .await
    {
        eprintln!("error: {error}");
        std::process::exit(1);
    }
}
