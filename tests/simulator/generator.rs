//! The seeded data-set generator.

use std::time::Instant;

use erp_sync::simulator::generator::generate;

#[test]
fn default_size_generates_quickly() {
    let started = Instant::now();
    let data = generate(42, 10_000, 24);
    let elapsed = started.elapsed();
    eprintln!(
        "generated {} buyers, {} links, {} licensees in {elapsed:?}",
        data.buyers().len(),
        data.erp_links().len(),
        data.licensees().len()
    );
    assert_eq!(data.buyers().len(), 10_000);
}
