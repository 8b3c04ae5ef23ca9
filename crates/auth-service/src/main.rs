//! The auth service binary: everything is [`mesh_service::run_binary`] over
//! [`auth_service::Application`].

#[tokio::main]
async fn main() {
    mesh_service::run_binary::<auth_service::Application>().await;
}
