//! The orders service binary: everything is [`mesh_service::run_binary`] over
//! [`orders_service::Application`].

#[tokio::main]
async fn main() {
    mesh_service::run_binary::<orders_service::Application>().await;
}
