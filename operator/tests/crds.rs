//! The central chart carries exactly the CRDs the operator's types make.

#[test]
fn the_charts_crds_are_generated_from_the_types() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../charts/tether-central/crds/tether.io.yaml"
    );
    let committed = std::fs::read_to_string(path).unwrap();
    assert!(
        committed == tether_operator::crd::crds_yaml(),
        "{path} is stale: run `cargo run -p tether-operator -- crds > {path}`"
    );
}
