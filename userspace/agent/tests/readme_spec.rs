//! The example spec in the README ("The standalone spec") parses and validates, so the
//! documentation cannot drift from the field names the agent accepts.

use ferroplane_agent::config::NodeSpec;

fn readme_example() -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
        .expect("README.md next to the workspace");
    let section = readme
        .split("## The standalone spec")
        .nth(1)
        .expect("README has a 'The standalone spec' section");
    let block = section
        .split("```yaml\n")
        .nth(1)
        .expect("a yaml block in that section");
    block
        .split("```")
        .next()
        .expect("the block is closed")
        .to_string()
}

#[test]
fn readme_example_spec_is_valid() {
    let yaml = readme_example();
    let spec = NodeSpec::from_yaml(&yaml).unwrap_or_else(|e| panic!("{e}\n---\n{yaml}"));
    spec.validate().unwrap_or_else(|e| panic!("{e}"));
    let cluster = spec.cluster.as_ref().expect("cluster section");
    assert!(!cluster.mss_clamp);
    assert_eq!(spec.services.len(), 1);
    assert_eq!(spec.network_policies.len(), 1);
    assert!(spec.bgp.is_some());
}
