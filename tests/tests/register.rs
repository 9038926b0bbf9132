//! Registrar end to end: the real softswitch against SIPp (MD5), pjsua2 (SHA-256) and a raw
//! SHA-256 client written here.

use std::net::UdpSocket;
use std::process::Command;
use std::time::Duration;
use tests::*;

fn node(opts: NodeOpts) -> Node {
    Node::start(opts).expect("start softswitch")
}

/// REGISTER with MD5 digest via SIPp: 401 (qop=auth) then 200 listing our contact.
#[test]
fn md5_register_gets_200_listing_contact() {
    let n = node(NodeOpts::default());
    let port = free_port();
    let r = Sipp::new("register-md5", scenario("register.xml"))
        .remote(n.addr)
        .local_port(port)
        .args(["-s", "1001", "-au", "1001", "-ap", "pw1001"])
        .key("expires", "3600")
        .run()
        .unwrap();
    assert!(r.ok(), "{}", r.describe());
    let ok = r
        .sip_messages()
        .into_iter()
        .find(|m| m.starts_with("SIP/2.0 200"))
        .unwrap_or_else(|| panic!("no 200 in the message log\n{}", r.describe()));
    let contacts = headers(&ok, &["Contact", "m"]);
    let mine = format!("127.0.0.1:{port}");
    assert!(
        contacts
            .iter()
            .any(|c| c.contains(&mine) && c.to_ascii_lowercase().contains("expires=")),
        "200 does not list our contact {mine} with expires: {contacts:?}\n{ok}"
    );
    assert!(n.options_ok(Duration::from_secs(2)));
}

/// Wrong password: the authenticated REGISTER gets a 401 again (SIPp expects 401 twice).
#[test]
fn wrong_password_gets_401_again() {
    let n = node(NodeOpts::default());
    let r = Sipp::new("register-wrongpw", scenario("register-reject.xml"))
        .remote(n.addr)
        .local_port(free_port())
        .args(["-s", "1001", "-au", "1001", "-ap", "not-the-password"])
        .run()
        .unwrap();
    assert!(r.ok(), "{}", r.describe());
}

/// Unknown user: same behaviour as a wrong password (401, then 401 again).
#[test]
fn unknown_user_gets_401_again() {
    let n = node(NodeOpts::default());
    let r = Sipp::new("register-unknown", scenario("register-reject.xml"))
        .remote(n.addr)
        .local_port(free_port())
        .args(["-s", "7777", "-au", "7777", "-ap", "pw7777"])
        .run()
        .unwrap();
    assert!(r.ok(), "{}", r.describe());
}

/// The 401s for an unknown user and for a known user with a wrong password have the same
/// shape (same header names, same challenge parameters): no user enumeration.
#[test]
fn unknown_user_and_wrong_password_look_identical() {
    let n = node(NodeOpts {
        algorithms: vec!["SHA-256".into()],
        ..NodeOpts::default()
    });
    let shape = |user: &str| -> (Vec<String>, Vec<String>) {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let local = sock.local_addr().unwrap();
        let cid = token("cid");
        let tag = token("tag");
        sock.send_to(
            register_request(n.addr, local, user, (&cid, &tag), 1, 3600, &[]).as_bytes(),
            n.addr,
        )
        .unwrap();
        let first = recv_final(&sock, Duration::from_secs(5)).expect("no answer to REGISTER");
        assert_eq!(status_code(&first), Some(401), "{first}");
        let ch = header(&first, &["WWW-Authenticate"])
            .expect("401 without WWW-Authenticate")
            .to_string();
        let auth = digest_authorization(
            &ch,
            "SHA-256",
            user,
            "wrong-password",
            "REGISTER",
            &format!("sip:{}", n.addr),
        );
        sock.send_to(
            register_request(
                n.addr,
                local,
                user,
                (&cid, &tag),
                2,
                3600,
                &[format!("Authorization: {auth}")],
            )
            .as_bytes(),
            n.addr,
        )
        .unwrap();
        let second =
            recv_final(&sock, Duration::from_secs(5)).expect("no answer to authenticated REGISTER");
        assert_eq!(status_code(&second), Some(401), "{second}");
        let names: Vec<String> = second
            .lines()
            .skip(1)
            .take_while(|l| !l.trim().is_empty())
            .filter_map(|l| {
                l.split_once(':')
                    .map(|(h, _)| h.trim().to_ascii_lowercase())
            })
            .collect();
        let mut params: Vec<String> = headers(&second, &["WWW-Authenticate"])
            .iter()
            .flat_map(|c| {
                let p = parse_challenge(c);
                let mut v: Vec<String> = p
                    .iter()
                    .filter(|(k, _)| *k != "nonce" && *k != "opaque")
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                v.sort();
                v
            })
            .collect();
        params.sort();
        let mut names = names;
        names.sort();
        (names, params)
    };
    let known = shape("1001");
    let unknown = shape("7777");
    assert_eq!(
        known, unknown,
        "401 for a wrong password and for an unknown user differ"
    );
}

/// Expires 30 (< min_expires 60): 423 Interval Too Brief with Min-Expires: 60.
#[test]
fn expires_below_minimum_gets_423() {
    let n = node(NodeOpts::default());
    let r = Sipp::new("register-423", scenario("register-423.xml"))
        .remote(n.addr)
        .local_port(free_port())
        .args(["-s", "1001", "-au", "1001", "-ap", "pw1001"])
        .key("expires", "30")
        .run()
        .unwrap();
    assert!(r.ok(), "{}", r.describe());
}

/// SHA-256 digest with a client written here (RFC 7616): the node offers only SHA-256.
#[test]
fn sha256_register_raw_client() {
    let n = node(NodeOpts {
        algorithms: vec!["SHA-256".into(), "MD5".into()],
        ..NodeOpts::default()
    });
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let local = sock.local_addr().unwrap();
    let cid = token("cid");
    let tag = token("tag");
    sock.send_to(
        register_request(n.addr, local, "1002", (&cid, &tag), 1, 3600, &[]).as_bytes(),
        n.addr,
    )
    .unwrap();
    let first = recv_final(&sock, Duration::from_secs(5)).expect("no answer to REGISTER");
    assert_eq!(status_code(&first), Some(401), "{first}");
    let chs = headers(&first, &["WWW-Authenticate"]);
    assert!(
        chs.first()
            .map(|c| parse_challenge(c)
                .get("algorithm")
                .map(|a| a.eq_ignore_ascii_case("SHA-256"))
                .unwrap_or(false))
            .unwrap_or(false),
        "first challenge is not SHA-256 although algorithms = [SHA-256, MD5]: {chs:?}"
    );
    let auth = digest_authorization(
        chs[0],
        "SHA-256",
        "1002",
        "pw1002",
        "REGISTER",
        &format!("sip:{}", n.addr),
    );
    sock.send_to(
        register_request(
            n.addr,
            local,
            "1002",
            (&cid, &tag),
            2,
            3600,
            &[format!("Authorization: {auth}")],
        )
        .as_bytes(),
        n.addr,
    )
    .unwrap();
    let ok =
        recv_final(&sock, Duration::from_secs(5)).expect("no answer to authenticated REGISTER");
    assert_eq!(
        status_code(&ok),
        Some(200),
        "SHA-256 REGISTER not accepted:\n{ok}"
    );
    let contacts = headers(&ok, &["Contact", "m"]);
    assert!(
        contacts.iter().any(|c| c.contains(&local.to_string())),
        "200 does not list {local}: {contacts:?}"
    );
}

/// SHA-256 digest with a real SIP stack: pjsua2 (pjsip 2.15) against a node that only
/// offers SHA-256.
#[test]
fn sha256_register_pjsua2() {
    let py = match python_with_pjsua2() {
        Ok(p) => p,
        // `make test` installs pjsua2 (Makefile `deps-test`); without it this test fails
        // rather than passing silently.
        Err(why) => panic!("pjsua2 is required (pip install pjsua2-python): {why}"),
    };
    let n = node(NodeOpts {
        algorithms: vec!["SHA-256".into()],
        ..NodeOpts::default()
    });
    let script = crate_dir().join("clients/pjsua_client.py");
    let (st, out, err) = run_bounded(
        Command::new(&py).arg(&script).args([
            "register",
            "--registrar",
            &n.addr.to_string(),
            "--user",
            "1003",
            "--password",
            "pw1003",
            "--port",
            &free_port().to_string(),
            "--algo",
            "sha256",
        ]),
        &n.dir,
        "pjsua-register",
        Duration::from_secs(60),
    )
    .unwrap();
    let result = out
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<Value>(l).ok());
    let status = result.as_ref().and_then(|v| v["status"].as_i64());
    assert_eq!(
        status,
        Some(200),
        "pjsua2 SHA-256 registration failed (exit {st:?})\nstdout:\n{out}\nstderr:\n{}",
        err.lines().rev().take(40).collect::<Vec<_>>().join("\n")
    );
}

/// The same MD5 registration over TCP (sipp `-t t1`): 401 then 200 on the connection.
#[test]
fn md5_register_over_tcp() {
    let n = node(NodeOpts::default());
    let r = Sipp::new("register-md5-tcp", scenario("register.xml"))
        .remote(n.addr)
        .local_port(free_port())
        .args(["-t", "t1", "-s", "1002", "-au", "1002", "-ap", "pw1002"])
        .key("expires", "3600")
        .run()
        .unwrap();
    assert!(r.ok(), "{}", r.describe());
    let ok = r
        .sip_messages()
        .into_iter()
        .find(|m| m.starts_with("SIP/2.0 200"));
    assert!(ok.is_some(), "no 200 over TCP\n{}", r.describe());
}
