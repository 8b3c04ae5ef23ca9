//! The inventory service binary: everything is [`mesh_service::run_binary`] over
//! [`inventory_service::Application`].

#[tokio::main]
async fn main() {
    mesh_service::run_binary::<inventory_service::Application>().await;
}
