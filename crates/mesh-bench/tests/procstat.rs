//! The bench's /proc readers see this very process use CPU and memory.

#[test]
fn this_process_uses_cpu_and_memory() {
    let pid = std::process::id();
    let before = mesh_bench::procstat::cpu_seconds(pid).expect("cpu");
    let mut x = 0u64;
    for i in 0..30_000_000u64 {
        x = x.wrapping_mul(31).wrapping_add(i);
    }
    assert!(x != 1);
    assert!(mesh_bench::procstat::cpu_seconds(pid).expect("cpu") >= before);
    assert!(mesh_bench::procstat::rss_bytes(pid).expect("rss") > 1024 * 1024);
}
