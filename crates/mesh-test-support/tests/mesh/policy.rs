//! Policy as data: a service enforces the policy file it is given (`--policy`), the same
//! checks as the shipped one, and the shipped files are the policy the other tests prove.

use std::collections::BTreeMap;

use mesh_proto::orders::v1::ListOrdersRequest;
use mesh_proto::orders::v1::orders_service_client::OrdersServiceClient;
use mesh_test_support::{TestMesh, bearer};
use tonic::Code;

use crate::refusals::records;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_enforces_the_policy_file_it_is_given() {
    let dir = tempfile::tempdir().expect("dir");
    let shipped = orders_service::SHIPPED_POLICY;
    // Tightened: listing orders needs orders:admin instead of orders:read.
    let listing = "method = \"/mesh.orders.v1.OrdersService/ListOrders\"\nauth = \"token\"\nscopes = [\"orders:read\"]";
    assert!(shipped.contains(listing), "the shipped rule");
    let tightened = shipped.replace(
        listing,
        "method = \"/mesh.orders.v1.OrdersService/ListOrders\"\nauth = \"token\"\nscopes = [\"orders:admin\"]",
    );
    let file = dir.path().join("orders.toml");
    std::fs::write(&file, tightened).expect("write");
    let mesh = TestMesh::start_with(mesh_dev::devmesh::DevOptions {
        policies: BTreeMap::from([("orders".to_owned(), file)]),
        ..Default::default()
    })
    .await
    .expect("mesh");
    let mut orders = OrdersServiceClient::new(mesh.orders_channel("meshctl").expect("channel"));
    let alice = mesh.user_token("alice", "orders").await.expect("token");
    let refused = orders
        .list_orders(bearer(ListOrdersRequest::default(), &alice))
        .await
        .expect_err("a customer may not list any more");
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert!(refused.message().contains("orders:admin"), "{refused:?}");
    let admin = mesh.user_token("admin", "orders").await.expect("token");
    orders
        .list_orders(bearer(ListOrdersRequest::default(), &admin))
        .await
        .expect("an administrator may");
    mesh.stop().await;
}

/// The orders audit records of `ListOrders` by `subject`, as (decision, reason, policy).
fn list_records(mesh: &TestMesh, subject: &str) -> Vec<(String, String, String)> {
    records(mesh, "orders")
        .into_iter()
        .filter(|r| r.method == "/mesh.orders.v1.OrdersService/ListOrders" && r.subject == subject)
        .map(|r| (r.decision, r.reason, r.policy))
        .collect()
}

/// What a trial of listing with orders:admin records under `version`: alice's last listing would
/// be denied for the scope, the administrator's is a plain allow.
fn assert_tried_listing(mesh: &TestMesh, version: &str) {
    let last = |subject| list_records(mesh, subject).pop();
    assert_eq!(
        last("alice"),
        Some(("would_deny".into(), "missing_scope".into(), version.into()))
    );
    assert_eq!(
        last("admin"),
        Some(("allow".into(), "policy".into(), version.into()))
    );
}

/// The orders audit records about policy reloads, as (reason, policy).
fn reload_records(mesh: &TestMesh) -> Vec<(String, String)> {
    records(mesh, "orders")
        .into_iter()
        .filter(|r| r.decision == "policy_reload")
        .map(|r| (r.reason, r.policy))
        .collect()
}

const LISTING: &str = "method = \"/mesh.orders.v1.OrdersService/ListOrders\"\nauth = \"token\"\nscopes = [\"orders:read\"]";

/// A mesh whose orders service reads its policy from a file (the shipped one, to start with).
async fn mesh_with_orders_policy(dir: &std::path::Path) -> (TestMesh, std::path::PathBuf) {
    mesh_with_orders_policy_text(dir, orders_service::SHIPPED_POLICY).await
}

/// A mesh whose orders service reads its policy from a file holding `text`.
async fn mesh_with_orders_policy_text(
    dir: &std::path::Path,
    text: &str,
) -> (TestMesh, std::path::PathBuf) {
    let file = dir.join("orders.toml");
    std::fs::write(&file, text).expect("write");
    let mesh = TestMesh::start_with(mesh_dev::devmesh::DevOptions {
        policies: BTreeMap::from([("orders".to_owned(), file.clone())]),
        ..Default::default()
    })
    .await
    .expect("mesh");
    (mesh, file)
}

/// Waits (at most 5 s) until the orders service has read a changed policy file.
async fn wait_for_a_reload(mesh: &TestMesh) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while reload_records(mesh).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the change was never read"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Writes `text` to `path` all at once (a rename), as a ConfigMap update or an editor does.
fn replace_file(path: &std::path::Path, text: &str) {
    let next = path.with_extension("next");
    std::fs::write(&next, text).expect("write");
    std::fs::rename(&next, path).expect("rename");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tightened_policy_takes_effect_within_a_second_under_load_and_no_call_sees_a_mix() {
    let dir = tempfile::tempdir().expect("dir");
    let (mesh, file) = mesh_with_orders_policy(dir.path()).await;
    let old = auth_interceptor::policy_file::version_of(orders_service::SHIPPED_POLICY);
    let tightened_text = orders_service::SHIPPED_POLICY.replace(
        LISTING,
        "method = \"/mesh.orders.v1.OrdersService/ListOrders\"\nauth = \"token\"\nscopes = [\"orders:admin\"]",
    );
    let new = auth_interceptor::policy_file::version_of(&tightened_text);
    let alice = mesh.user_token("alice", "orders").await.expect("token");
    let channel = mesh.orders_channel("meshctl").expect("channel");
    // Four callers list orders as fast as they can, and note when each answer came.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let started = std::time::Instant::now();
    let callers: Vec<_> = (0..4)
        .map(|_| {
            let (mut orders, token, stop) = (
                OrdersServiceClient::new(channel.clone()),
                alice.clone(),
                stop.clone(),
            );
            tokio::spawn(async move {
                let mut answers = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let answer = orders
                        .list_orders(bearer(ListOrdersRequest::default(), &token))
                        .await;
                    answers.push((started.elapsed(), answer.map(|_| ()).map_err(|s| s.code())));
                }
                answers
            })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let written = started.elapsed();
    replace_file(&file, &tightened_text);
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut answers = Vec::new();
    for caller in callers {
        answers.extend(caller.await.expect("caller"));
    }
    // Every answer is the old policy's (OK) or the new one's (PERMISSION_DENIED), nothing else;
    // from 1 s after the write, only the new one's.
    for (at, answer) in &answers {
        match answer {
            Ok(()) => assert!(
                *at < written + std::time::Duration::from_secs(1),
                "allowed {:?} after the tightening",
                at.saturating_sub(written)
            ),
            Err(code) => assert_eq!(*code, Code::PermissionDenied, "{answers:?}"),
        }
    }
    assert!(
        answers.iter().any(|(_, a)| a.is_ok()),
        "calls before the change"
    );
    assert!(
        answers.iter().any(|(_, a)| a.is_err()),
        "calls after the change"
    );
    // The chain: each decision and the policy version it names are one policy's, never a mix.
    let records = list_records(&mesh, "alice");
    assert_eq!(records.len(), answers.len(), "one record per call");
    for (decision, reason, version) in &records {
        match decision.as_str() {
            "allow" => assert_eq!(version, &old, "an allow is the old policy's"),
            "deny" => {
                assert_eq!(version, &new, "a deny is the new policy's");
                assert_eq!(reason, "missing_scope");
            }
            other => panic!("{other}"),
        }
    }
    assert_eq!(
        reload_records(&mesh),
        vec![("applied".to_owned(), new.clone())]
    );
    let scraped = mesh.scrape("orders").await.expect("scrape");
    assert_eq!(
        scraped.sum("mesh_policy_reloads_total", &[("outcome", "applied")]),
        1.0
    );
    assert_eq!(
        scraped.sum("mesh_policy_active", &[("version", new.as_str())]),
        1.0
    );
    assert_eq!(
        scraped.sum("mesh_policy_active", &[("version", old.as_str())]),
        0.0
    );
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_policy_file_changes_nothing_and_says_so() {
    let dir = tempfile::tempdir().expect("dir");
    let (mesh, file) = mesh_with_orders_policy(dir.path()).await;
    let old = auth_interceptor::policy_file::version_of(orders_service::SHIPPED_POLICY);
    // The listing rule gone: a file that leaves a method without a rule.
    let broken = orders_service::SHIPPED_POLICY.replace(&format!("[[rule]]\n{LISTING}\n"), "");
    assert_ne!(broken, orders_service::SHIPPED_POLICY);
    replace_file(&file, &broken);
    wait_for_a_reload(&mesh).await;
    let broken_version = auth_interceptor::policy_file::version_of(&broken);
    assert_eq!(
        reload_records(&mesh),
        vec![("rejected".to_owned(), broken_version)]
    );
    // Still the old policy, for every call; reported once, not at every look.
    let alice = mesh.user_token("alice", "orders").await.expect("token");
    let mut orders = OrdersServiceClient::new(mesh.orders_channel("meshctl").expect("channel"));
    orders
        .list_orders(bearer(ListOrdersRequest::default(), &alice))
        .await
        .expect("the policy in force stays");
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    assert_eq!(reload_records(&mesh).len(), 1);
    let records = list_records(&mesh, "alice");
    assert_eq!(records.last().map(|r| r.2.as_str()), Some(old.as_str()));
    let scraped = mesh.scrape("orders").await.expect("scrape");
    assert_eq!(
        scraped.sum("mesh_policy_reloads_total", &[("outcome", "rejected")]),
        1.0
    );
    assert_eq!(
        scraped.sum("mesh_policy_active", &[("version", old.as_str())]),
        1.0
    );
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trial_rule_records_would_deny_and_the_enforced_rule_still_decides() {
    let dir = tempfile::tempdir().expect("dir");
    let (mesh, file) = mesh_with_orders_policy(dir.path()).await;
    // The tightening to try, beside the enforced rule: listing would need orders:admin.
    let trial = format!(
        "{}\n[[rule]]\nmethod = \"/mesh.orders.v1.OrdersService/ListOrders\"\nauth = \"token\"\n\
         scopes = [\"orders:admin\"]\nmode = \"audit\"\n",
        orders_service::SHIPPED_POLICY
    );
    replace_file(&file, &trial);
    wait_for_a_reload(&mesh).await;
    let alice = mesh.user_token("alice", "orders").await.expect("token");
    let admin = mesh.user_token("admin", "orders").await.expect("token");
    let mut orders = OrdersServiceClient::new(mesh.orders_channel("meshctl").expect("channel"));
    for token in [&alice, &admin] {
        orders
            .list_orders(bearer(ListOrdersRequest::default(), token))
            .await
            .expect("a dry-run rule refuses nothing");
    }
    // The enforced rule still decides: no token is no entry, and a token without orders:read
    // (the enforced scope) is refused, whatever the trial says.
    let anonymous = orders
        .list_orders(tonic::Request::new(ListOrdersRequest::default()))
        .await
        .expect_err("no token");
    assert_eq!(anonymous.code(), Code::Unauthenticated);
    let key = mesh.issuer_key().await.expect("the issuer's key");
    let writer = key.sign(
        &key.header(),
        &mesh_test_support::forge::claims(&mesh.mesh.issuer, "orders", "orders:write"),
    );
    let refused = orders
        .list_orders(bearer(ListOrdersRequest::default(), &writer))
        .await
        .expect_err("no orders:read");
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert!(refused.message().contains("orders:read"), "{refused:?}");
    // What enforcing it would refuse: alice, for the scope; not the admin.
    let version = auth_interceptor::policy_file::version_of(&trial);
    assert_tried_listing(&mesh, &version);
    let scraped = mesh.scrape("orders").await.expect("scrape");
    assert_eq!(
        scraped.sum(
            "mesh_authz_decisions_total",
            &[("rpc_method", "ListOrders"), ("decision", "would_deny")]
        ),
        1.0
    );
    mesh.stop().await;
}

/// Waits (at most 5 s) until the orders service has recorded `count` policy reloads.
async fn wait_for_reloads(mesh: &TestMesh, count: usize) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while reload_records(mesh).len() < count {
        assert!(
            std::time::Instant::now() < deadline,
            "the change was never read"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_trial_file_records_would_deny_beside_the_shipped_policy_and_reloads() {
    use auth_interceptor::policy_file::version_of;
    let dir = tempfile::tempdir().expect("dir");
    let shipped = orders_service::SHIPPED_POLICY;
    // The whole shipped file, tried with one tightening: listing would need orders:admin.
    let tightened = format!(
        "mode = \"audit\"\n{}",
        shipped.replace(
            LISTING,
            "method = \"/mesh.orders.v1.OrdersService/ListOrders\"\nauth = \"token\"\nscopes = [\"orders:admin\"]",
        )
    );
    let trial = dir.path().join("orders-trial.toml");
    std::fs::write(&trial, &tightened).expect("write");
    let mesh = TestMesh::start_with(mesh_dev::devmesh::DevOptions {
        policy_trials: BTreeMap::from([("orders".to_owned(), trial.clone())]),
        ..Default::default()
    })
    .await
    .expect("mesh");
    let version = format!("{}+{}", version_of(shipped), version_of(&tightened));
    let alice = mesh.user_token("alice", "orders").await.expect("token");
    let admin = mesh.user_token("admin", "orders").await.expect("token");
    let mut orders = OrdersServiceClient::new(mesh.orders_channel("meshctl").expect("channel"));
    let mut list = async |token: &str| {
        orders
            .list_orders(bearer(ListOrdersRequest::default(), token))
            .await
            .map(|_| ())
    };
    list(&alice).await.expect("a trial file refuses nothing");
    list(&admin).await.expect("the administrator too");
    assert_tried_listing(&mesh, &version);
    // The enforced (shipped) policy still decides: without a valid token, no entry.
    let anonymous = list("").await.expect_err("no token");
    assert_eq!(anonymous.code(), Code::Unauthenticated);

    // A broken trial file (a method without a row) changes nothing and says so.
    let broken = tightened.replace(
        "[[rule]]\nmethod = \"/mesh.orders.v1.OrdersService/GetOrder\"",
        "[[rule]]\nmethod = \"/mesh.orders.v1.OrdersService/ListOrders\"",
    );
    assert_ne!(broken, tightened);
    replace_file(&trial, &broken);
    wait_for_reloads(&mesh, 1).await;
    assert_eq!(reload_records(&mesh)[0].0, "rejected");
    list(&alice).await.expect("still refuses nothing");
    assert_eq!(
        list_records(&mesh, "alice").last().map(|r| r.2.as_str()),
        Some(version.as_str())
    );

    // The same file without the tightening: alice's calls are plain allows again.
    let relaxed = format!("mode = \"audit\"\n{shipped}");
    replace_file(&trial, &relaxed);
    wait_for_reloads(&mesh, 2).await;
    let relaxed_version = format!("{}+{}", version_of(shipped), version_of(&relaxed));
    assert_eq!(
        reload_records(&mesh)[1],
        ("applied".to_owned(), relaxed_version.clone())
    );
    list(&alice).await.expect("allowed");
    assert_eq!(
        list_records(&mesh, "alice").last(),
        Some(&("allow".to_owned(), "policy".to_owned(), relaxed_version))
    );
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subject_over_its_rate_limit_waits_and_another_subject_on_the_row_is_served() {
    let dir = tempfile::tempdir().expect("dir");
    let limited = orders_service::SHIPPED_POLICY.replace(
        LISTING,
        &format!("{LISTING}\nrate_limit = {{ per = \"subject\", rate = 1, burst = 2 }}"),
    );
    let (mesh, _) = mesh_with_orders_policy_text(dir.path(), &limited).await;
    let alice = mesh.user_token("alice", "orders").await.expect("token");
    let bob = mesh.user_token("bob", "orders").await.expect("token");
    let channel = mesh.orders_channel("meshctl").expect("channel");
    // 64 of alice's calls at once: the burst (2) is served, every other one waits its turn.
    let started = std::time::Instant::now();
    let calls: Vec<_> = (0..64)
        .map(|_| {
            let (mut orders, token) = (OrdersServiceClient::new(channel.clone()), alice.clone());
            tokio::spawn(async move {
                orders
                    .list_orders(bearer(ListOrdersRequest::default(), &token))
                    .await
                    .map(|_| ())
            })
        })
        .collect();
    let mut served = 0;
    for call in calls {
        match call.await.expect("join") {
            Ok(()) => served += 1,
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                use tonic_types::StatusExt;
                let retry = status
                    .get_error_details()
                    .retry_info()
                    .and_then(|info| info.retry_delay)
                    .expect("google.rpc.RetryInfo");
                assert!(
                    retry > std::time::Duration::ZERO && retry <= std::time::Duration::from_secs(1),
                    "{retry:?}"
                );
            }
        }
    }
    // The burst, and one more per whole second the 64 calls took (the rate), never more.
    let allowance = 2 + started.elapsed().as_secs() as usize;
    assert!(
        (2..=allowance).contains(&served),
        "{served} served, allowance {allowance}"
    );
    // Bob, on the same row, has his own bucket.
    let mut orders = OrdersServiceClient::new(channel);
    orders
        .list_orders(bearer(ListOrdersRequest::default(), &bob))
        .await
        .expect("another subject is served");
    let refused = list_records(&mesh, "alice")
        .iter()
        .filter(|(decision, reason, _)| decision == "deny" && reason == "rate_limited")
        .count();
    assert_eq!(refused, 64 - served);
    mesh.stop().await;
}

#[test]
fn the_compose_demos_dry_run_policy_is_the_shipped_one_with_reserve_tried_out() {
    let text = include_str!("../../../../config/policy/inventory.dry-run.toml");
    let trial = auth_interceptor::parse_policy(
        text,
        "config/policy/inventory.dry-run.toml",
        mesh_test_support::TRUST_DOMAIN,
        mesh_proto::rpc::servers::INVENTORY,
    )
    .expect("a valid policy");
    let shipped = inventory_service::policy(mesh_test_support::TRUST_DOMAIN).expect("shipped");
    for rpc in shipped.methods() {
        assert_eq!(
            trial.rule(rpc.path),
            shipped.rule(rpc.path),
            "{}: enforced as shipped",
            rpc.path
        );
        match trial.trial(rpc.path) {
            Some(tried) => {
                assert_eq!(rpc.method, "Reserve", "only Reserve is tried out");
                assert!(
                    tried
                        .summary()
                        .scopes
                        .contains(&"inventory:admin".to_owned())
                );
            }
            None => assert_ne!(rpc.method, "Reserve", "Reserve is tried out"),
        }
    }
}
