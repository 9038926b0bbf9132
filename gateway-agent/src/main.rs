//! Owner of local FXO/FXS/E1 hardware with hot-standby failover; filled by the gateway issue.

fn main() {
    eprintln!("gateway-agent: not built yet (see the gateway issue)");
    std::process::exit(2);
}
