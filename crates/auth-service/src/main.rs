//! The auth service binary: flags and env, logging, then [`auth_service::Application`].

use auth_service::{Application, Args};

#[tokio::main]
async fn main() {
    let args: Args = mesh_telemetry::parse_args();
    mesh_telemetry::init();
    let settings = args
        .into_settings()
        .unwrap_or_else(|e| mesh_telemetry::exit_bad_config(e));
    let app = match Application::build(settings).await {
        Ok(app) => app,
        Err(error) if error.is_config() => mesh_telemetry::exit_bad_config(error),
        Err(error) => {
            eprintln!("error: {error}");
            std::process::exit(1);
        }
    };
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
        eprintln!("error: {error}");
        std::process::exit(1);
    }
}
