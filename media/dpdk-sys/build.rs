//! Finds the system DPDK with pkg-config, compiles the C shim against it and
//! generates bindings for the functions and types the relay uses.

#[cfg(not(feature = "system"))]
fn main() {}

#[cfg(feature = "system")]
fn main() {
    use std::env;
    use std::path::PathBuf;

    println!("cargo:rerun-if-changed=src/shim.h");
    println!("cargo:rerun-if-changed=src/shim.c");
    let dpdk = match pkg_config::Config::new()
        .atleast_version("22.11")
        .probe("libdpdk")
    {
        Ok(lib) => lib,
        Err(e) => {
            // A clear message instead of a wall of linker errors.
            println!(
                "cargo:warning=DPDK not found ({e}); install Debian's dpdk-dev libdpdk-dev \
                 or build without the `dpdk` feature"
            );
            std::process::exit(1);
        }
    };
    // rte_eth_from_rings (benchmarks on ring devices) lives in a driver library that
    // pkg-config does not list; Debian links it into the library directory.
    println!("cargo:rustc-link-lib=dylib=rte_net_ring");
    // The driver flags (-march, -include rte_config.h) from pkg-config's cflags.
    let cflags = cflags_from_pkg_config();
    let mut build = cc::Build::new();
    build.file("src/shim.c").opt_level(3).warnings(false);
    for p in &dpdk.include_paths {
        build.include(p);
    }
    for f in cflags.iter().filter(|f| !f.starts_with("-I")) {
        build.flag(f);
    }
    build.compile("softswitch_dpdk_shim");

    let mut clang_args: Vec<String> = dpdk
        .include_paths
        .iter()
        .map(|p| format!("-I{}", p.display()))
        .collect();
    clang_args.extend(cflags.iter().filter(|f| !f.starts_with("-I")).cloned());
    let bindings = bindgen::Builder::default()
        .header("src/shim.h")
        .clang_args(&clang_args)
        .allowlist_function("ss_.*")
        .allowlist_function("rte_eal_init")
        .allowlist_function("rte_eal_cleanup")
        .allowlist_function("rte_strerror")
        .allowlist_function("rte_socket_id")
        .allowlist_function("rte_thread_register")
        .allowlist_function("rte_thread_unregister")
        .allowlist_function("rte_pktmbuf_pool_create")
        .allowlist_function("rte_mempool_free")
        .allowlist_function("rte_mempool_avail_count")
        .allowlist_function("rte_ring_create")
        .allowlist_function("rte_ring_free")
        .allowlist_function("rte_eth_from_rings")
        .allowlist_function("rte_eth_dev_configure")
        .allowlist_function("rte_eth_dev_info_get")
        .allowlist_function("rte_eth_rx_queue_setup")
        .allowlist_function("rte_eth_tx_queue_setup")
        .allowlist_function("rte_eth_dev_start")
        .allowlist_function("rte_eth_dev_stop")
        .allowlist_function("rte_eth_dev_count_avail")
        .allowlist_function("rte_eth_dev_is_valid_port")
        .allowlist_function("rte_eth_dev_get_port_by_name")
        .allowlist_function("rte_eth_dev_socket_id")
        .allowlist_function("rte_eth_macaddr_get")
        .allowlist_function("rte_eth_promiscuous_enable")
        .allowlist_function("rte_eth_stats_get")
        .allowlist_var("RTE_MBUF_DEFAULT_BUF_SIZE")
        .allowlist_var("RTE_PKTMBUF_HEADROOM")
        .allowlist_var("RING_F_SP_ENQ")
        .allowlist_var("RING_F_SC_DEQ")
        .allowlist_var("SOCKET_ID_ANY")
        // Field access goes through the shim: these stay opaque, so the Rust side never
        // depends on their layout.
        .opaque_type("rte_mbuf")
        .opaque_type("rte_mempool")
        .opaque_type("rte_ring")
        .derive_default(true)
        .layout_tests(false)
        .generate_comments(false)
        .generate()
        .unwrap_or_else(|e| {
            println!("cargo:warning=bindgen failed on the DPDK headers: {e}");
            std::process::exit(1);
        });
    let out = PathBuf::from(env::var("OUT_DIR").unwrap_or_else(|_| ".".into()));
    if let Err(e) = bindings.write_to_file(out.join("bindings.rs")) {
        println!("cargo:warning=cannot write the bindings: {e}");
        std::process::exit(1);
    }
}

/// `pkg-config --cflags libdpdk`, split.
#[cfg(feature = "system")]
fn cflags_from_pkg_config() -> Vec<String> {
    std::process::Command::new("pkg-config")
        .args(["--cflags", "libdpdk"])
        .output()
        .ok()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}
