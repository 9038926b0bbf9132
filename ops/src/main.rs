//! switchctl: operator CLI for the softswitch.
fn main() {}
