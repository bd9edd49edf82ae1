//! Across network namespaces: see below.
#[test]
fn placeholder() {}
