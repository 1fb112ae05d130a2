//! MQTT with a user name, a password file and TLS with a client certificate (certificates made
//! by `openssl` in the test), `qwenedge doctor`'s broker check, and start-up refusing unusable
//! certificate files.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::common::daemon::{chat, config_text, Daemon};
use crate::common::mqtt::{make_certificates, Broker, BrokerOptions, Tester, TesterOptions};
use crate::common::wait::Bounded;
use serde_json::{json, Value};

fn section(tls_port: u16, certs: &crate::common::mqtt::TlsFiles, password_file: &Path, ca: &Path) -> String {
    format!(
        "[mqtt]\nenabled = true\nurl = \"mqtts://localhost:{tls_port}\"\ndevice_id = \"dt\"\nusername = \"qe\"\npassword_file = {:?}\n\
         ca_file = {:?}\nclient_cert_file = {:?}\nclient_key_file = {:?}\nreconnect_min_ms = 100\n",
        password_file.display().to_string(),
        ca.display().to_string(),
        certs.client_cert.display().to_string(),
        certs.client_key.display().to_string(),
    )
}

fn doctor(config: &Path) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_qwenedge")).args(["doctor", "--json", "--config"]).arg(config).output_in_time();
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("doctor output ({e}): {}", String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn password_and_tls_with_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certificates(dir.path());
    let broker = Broker::start_with(BrokerOptions { auth: Some(("qe".into(), "s3cret".into())), tls: Some(certs.clone()) });
    let tls_port = broker.tls_port.unwrap();
    let password = dir.path().join("password");
    std::fs::write(&password, "s3cret\n").unwrap();

    let d = Daemon::start(&section(tls_port, &certs, &password, &certs.ca));
    let t = Tester::connect_with(broker.port, "tt", TesterOptions { auth: Some(("qe".into(), "s3cret".into())), ..Default::default() });
    t.wait_online("dt");
    t.subscribe("qwenedge/dt/response/#");
    t.publish("qwenedge/dt/request", chat("s1", "hello over TLS", json!({"max_tokens": 4})).to_string());
    let end = t.collect("the answer over TLS", Duration::from_secs(30), |m| m.json()["event"] == "done").pop().unwrap();
    assert_eq!(end.json()["usage"]["completion_tokens"], 4);

    let report = doctor(&d.config);
    let m = &report["mqtt"];
    assert_eq!((m["configured"].as_bool(), m["reachable"].as_bool(), m["status"].as_str()), (Some(true), Some(true), Some("ok")), "{m}");
    assert_eq!(m["url"], format!("mqtts://localhost:{tls_port}"));

    // A wrong password: doctor says the broker refuses.
    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "guess\n").unwrap();
    let model = crate::common::model_dir("tiny-a", "int4");
    let bad_config = dir.path().join("bad.toml");
    std::fs::write(&bad_config, config_text(&model, &dir.path().join("x.sock"), &section(tls_port, &certs, &wrong, &certs.ca))).unwrap();
    let m = doctor(&bad_config)["mqtt"].clone();
    assert_eq!((m["reachable"].as_bool(), m["status"].as_str()), (Some(false), Some("warn")), "{m}");
    assert!(m["error"].as_str().unwrap().to_lowercase().contains("refused"), "{m}");

    // A CA file without certificates stops start-up with the key named.
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let sock = dir.path().join("y.sock");
    std::fs::write(&bad_config, config_text(&model, &sock, &section(tls_port, &certs, &password, &garbage))).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_qwenedge")).args(["serve", "--config"]).arg(&bad_config).output_in_time();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.lines().last().unwrap_or("").contains("mqtt.ca_file"), "{stderr}");
}
