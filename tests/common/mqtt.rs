//! MQTT test helpers: a real Mosquitto broker on a free loopback port with its own generated
//! configuration and data directory (killed on drop, restartable on the same port), a test
//! client on rumqttc's MQTT 5 client, and bookkeeping that collects a request's events while
//! dropping the duplicates QoS 1 allows (same `seq`). Every duration given here is a base,
//! scaled by [`super::wait`]; a wait that runs out fails saying what it waited for.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{Client, Event, MqttOptions};
use serde_json::Value;

use super::wait::{self, Bounded, Wait};

/// A TCP port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Certificates for a TLS listener that requires client certificates.
#[derive(Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

/// How a broker is set up.
#[derive(Default)]
pub struct BrokerOptions {
    /// `(user, password)`: anonymous clients are refused.
    pub auth: Option<(String, String)>,
    /// A second listener with TLS and client certificates.
    pub tls: Option<TlsFiles>,
}

/// A Mosquitto process; killed on drop.
pub struct Broker {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub tls_port: Option<u16>,
    config: PathBuf,
    _watch: wait::Watch,
}

impl Broker {
    /// A plain broker with persistence, anonymous access.
    pub fn start() -> Self {
        Self::start_with(BrokerOptions::default())
    }

    /// A broker with `opts`. Persistence is on and saved on every change, so a SIGKILL loses
    /// as little as Mosquitto allows.
    pub fn start_with(opts: BrokerOptions) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let tls_port = opts.tls.as_ref().map(|_| free_port());
        let d = dir.path().display();
        let mut conf = format!(
            "per_listener_settings false\npersistence true\npersistence_location {d}/\nautosave_interval 1\nautosave_on_changes true\n\
             max_queued_messages 0\nlog_dest file {d}/mosquitto.log\nlog_type error\nlog_type warning\nlog_type notice\nlog_type information\n"
        );
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            conf.push_str("user root\n");
        }
        match &opts.auth {
            Some((user, pass)) => {
                let file = dir.path().join("passwd");
                run_ok(Command::new("mosquitto_passwd").args(["-b", "-c"]).arg(&file).args([user, pass]));
                conf.push_str(&format!("allow_anonymous false\npassword_file {}\n", file.display()));
            }
            None => conf.push_str("allow_anonymous true\n"),
        }
        conf.push_str(&format!("listener {port} 127.0.0.1\n"));
        if let (Some(tls), Some(p)) = (&opts.tls, tls_port) {
            conf.push_str(&format!(
                "listener {p} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n",
                tls.ca.display(),
                tls.server_cert.display(),
                tls.server_key.display()
            ));
        }
        let config = dir.path().join("mosquitto.conf");
        std::fs::write(&config, conf).unwrap();
        let _watch = wait::watch("mosquitto", &dir.path().join("mosquitto.log"));
        let mut broker = Broker { child: None, dir, port, tls_port, config, _watch };
        broker.spawn();
        broker
    }

    fn spawn(&mut self) {
        // Debian installs the broker in /usr/sbin, which is not on every user's PATH.
        let program =
            ["/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"].into_iter().find(|p| Path::new(p).exists()).unwrap_or("mosquitto");
        let child = Command::new(program)
            .arg("-c")
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto (apt install mosquitto)");
        self.child = Some(child);
        let port = self.port;
        wait::until(&format!("mosquitto to listen on port {port}"), Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
    }

    /// SIGKILL: no clean shutdown, no final save.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, as systemd stops it: Mosquitto saves its database and exits; then it starts
    /// again after `down`.
    pub fn restart_gracefully(&mut self, down: Duration) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill with a valid pid and signal number has no memory-safety preconditions.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            let _ = c.wait();
        }
        std::thread::sleep(down);
        self.spawn();
    }

    /// Starts it again on the same port with the same data directory.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `[mqtt]` for a daemon on `port` with `device_id`; `extra` is appended to the section.
pub fn mqtt_section(port: u16, device: &str, extra: &str) -> String {
    format!(
        "[mqtt]\nenabled = true\nurl = \"mqtt://127.0.0.1:{port}\"\ndevice_id = \"{device}\"\nreconnect_min_ms = 100\nreconnect_max_ms = 1000\n{extra}\n"
    )
}

/// A received message.
#[derive(Debug, Clone)]
pub struct Msg {
    pub topic: String,
    pub payload: Vec<u8>,
    pub correlation: Option<Vec<u8>>,
    pub retain: bool,
}

impl Msg {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.payload)
            .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {:?}", self.topic, String::from_utf8_lossy(&self.payload)))
    }
}

/// How a test client connects.
#[derive(Default, Clone)]
pub struct TesterOptions {
    /// Keep the session (QoS 1 messages are queued while disconnected).
    pub persistent: bool,
    pub auth: Option<(String, String)>,
}

/// A test client (MQTT 5, QoS 1).
pub struct Tester {
    client: Client,
    rx: mpsc::Receiver<Msg>,
    acks: Arc<AtomicUsize>,
    subacks: Arc<AtomicUsize>,
    pub connects: Arc<AtomicUsize>,
}

impl Tester {
    pub fn connect(port: u16, id: &str) -> Self {
        Self::connect_with(port, id, TesterOptions::default())
    }

    pub fn connect_with(port: u16, id: &str, opts: TesterOptions) -> Self {
        let mut o = MqttOptions::new(id, "127.0.0.1", port);
        // A keep-alive long enough that a test thread starved on a busy machine is not dropped.
        o.set_clean_start(!opts.persistent).set_max_packet_size(Some(4 << 20)).set_keep_alive(Duration::from_secs(60));
        if opts.persistent {
            o.set_session_expiry_interval(Some(3600));
        }
        if let Some((u, p)) = &opts.auth {
            o.set_credentials(u, p);
        }
        let (client, mut conn) = Client::new(o, 1024);
        let (tx, rx) = mpsc::channel();
        let (acks, subacks, connects) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (a, s, c) = (Arc::clone(&acks), Arc::clone(&subacks), Arc::clone(&connects));
        std::thread::spawn(move || {
            for event in conn.iter() {
                match event {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let correlation = p.properties.as_ref().and_then(|pr| pr.correlation_data.as_ref()).map(|b| b.to_vec());
                        let msg = Msg {
                            topic: String::from_utf8_lossy(&p.topic).into_owned(),
                            payload: p.payload.to_vec(),
                            correlation,
                            retain: p.retain,
                        };
                        if tx.send(msg).is_err() {
                            return;
                        }
                    }
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        a.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        s.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        c.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(_) => {}
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        });
        Tester { client, rx, acks, subacks, connects }
    }

    /// Subscribes (QoS 1) and waits for the SUBACK.
    pub fn subscribe(&self, filter: &str) {
        let before = self.subacks.load(Ordering::SeqCst);
        self.client.subscribe(filter, QoS::AtLeastOnce).unwrap();
        wait::until(&format!("the SUBACK for {filter}"), Duration::from_secs(10), || self.subacks.load(Ordering::SeqCst) != before);
    }

    /// Publishes (QoS 1).
    pub fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client.publish(topic, QoS::AtLeastOnce, false, payload.into()).unwrap();
    }

    /// Publishes a retained message.
    pub fn publish_retained(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client.publish(topic, QoS::AtLeastOnce, true, payload.into()).unwrap();
    }

    /// Publishes with an MQTT 5 response topic and correlation data.
    pub fn publish_v5(&self, topic: &str, payload: impl Into<Vec<u8>>, response_topic: &str, correlation: &[u8]) {
        let props = PublishProperties {
            response_topic: Some(response_topic.into()),
            correlation_data: Some(correlation.to_vec().into()),
            ..Default::default()
        };
        self.client.publish_with_properties(topic, QoS::AtLeastOnce, false, payload.into(), props).unwrap();
    }

    /// Waits (`base`, scaled) until `n` of this client's publishes were acknowledged in total.
    pub fn wait_acked(&self, n: usize, base: Duration) {
        let wait = Wait::new(format!("the broker to acknowledge {n} publishes"), base);
        while self.acks.load(Ordering::SeqCst) < n {
            wait.tick(|| format!("{} acknowledged", self.acks.load(Ordering::SeqCst)));
        }
    }

    /// The next message within `wait`'s time.
    pub fn recv(&self, wait: &Wait) -> Option<Msg> {
        self.rx.recv_timeout(wait.left()).ok()
    }

    /// Messages until `done` says so (the message that satisfied it included); fails naming
    /// `what` after `base` (scaled).
    pub fn collect(&self, what: &str, base: Duration, mut done: impl FnMut(&Msg) -> bool) -> Vec<Msg> {
        let wait = Wait::new(what, base);
        let mut out = Vec::new();
        loop {
            let m = self.recv(&wait).unwrap_or_else(|| {
                wait.fail(format!("got {} messages, the last ones: {:?}", out.len(), out.iter().rev().take(5).collect::<Vec<_>>()))
            });
            let stop = done(&m);
            out.push(m);
            if stop {
                return out;
            }
        }
    }

    /// The messages `keep` accepts that arrive until `quiet` (scaled) passes without one: late
    /// QoS 1 repeats, or the check that nothing more comes. Other messages (a status topic
    /// refreshed meanwhile) are dropped and do not extend the wait.
    pub fn drain(&self, quiet: Duration, keep: impl Fn(&Msg) -> bool) -> Vec<Msg> {
        let mut out = Vec::new();
        let mut wait = Wait::new("quiet", quiet);
        while let Some(m) = self.recv(&wait) {
            if keep(&m) {
                out.push(m);
                wait.renew();
            }
        }
        out
    }

    /// Adds the events published under `prefix` to `answers` until every id in `ids` has a
    /// terminal event; fails naming those without one when `base` (scaled) passes with no
    /// event under `prefix` (a long stream of answers may take longer as a whole).
    pub fn collect_terminals(&self, prefix: &str, ids: &[String], answers: &mut Answers, base: Duration) {
        let mut wait = Wait::new(format!("terminal events under {prefix} for {} requests (the time between two events)", ids.len()), base);
        while !answers.complete(ids) {
            let Some(m) = self.recv(&wait) else {
                let missing: Vec<_> = ids.iter().filter(|id| answers.terminals(id).is_empty()).collect();
                wait.fail(format!("no terminal event yet for {missing:?}"))
            };
            if m.topic.starts_with(prefix) {
                answers.add(m.json());
                wait.renew();
            }
        }
    }

    /// Adds the events under `prefix` that arrive until `quiet` passes without a message
    /// (late QoS 1 repeats).
    pub fn drain_into(&self, prefix: &str, answers: &mut Answers, quiet: Duration) {
        for m in self.drain(quiet, |m| m.topic.starts_with(prefix)) {
            answers.add(m.json());
        }
    }

    /// Waits for `qwenedge/<device>/status` to say `online`.
    pub fn wait_online(&self, device: &str) {
        let topic = format!("qwenedge/{device}/status");
        self.subscribe(&topic);
        self.collect(&format!("{topic} to say online"), Duration::from_secs(30), |m| m.topic == topic && m.json()["status"] == "online");
    }
}

/// Events of many requests, with QoS 1 duplicates (same id and `seq`) dropped.
#[derive(Default)]
pub struct Answers {
    /// id → seq → event.
    pub events: HashMap<String, BTreeMap<u64, Value>>,
    /// Events received, duplicates included.
    pub received: usize,
    /// Duplicates dropped (they must be byte-identical to the first copy).
    pub duplicates: usize,
}

impl Answers {
    /// Adds an event; `true` when it was new.
    pub fn add(&mut self, v: Value) -> bool {
        self.received += 1;
        let id = v["id"].as_str().expect("event id").to_string();
        let seq = v["seq"].as_u64().expect("event seq");
        let slot = self.events.entry(id).or_default();
        if let Some(prev) = slot.get(&seq) {
            assert_eq!(prev, &v, "two different events with the same seq");
            self.duplicates += 1;
            return false;
        }
        slot.insert(seq, v);
        true
    }

    /// The terminal events of `id`.
    pub fn terminals(&self, id: &str) -> Vec<&Value> {
        self.events.get(id).map(|m| m.values().filter(|e| e["event"] != "token").collect()).unwrap_or_default()
    }

    /// Whether every id has a terminal event.
    pub fn complete<'a>(&self, ids: impl IntoIterator<Item = &'a String>) -> bool {
        ids.into_iter().all(|id| !self.terminals(id).is_empty())
    }

    /// The streamed text of `id` in `seq` order, checking that the seqs have no gaps.
    pub fn text(&self, id: &str) -> String {
        let events = &self.events[id];
        let seqs: Vec<u64> = events.keys().copied().collect();
        assert_eq!(seqs, (0..seqs.len() as u64).collect::<Vec<_>>(), "{id}: seq has gaps");
        events.values().filter(|e| e["event"] == "token").map(|e| e["text"].as_str().unwrap().to_string()).collect()
    }
}

/// Runs a command (within [`wait::COMMAND`], scaled), returning its stdout, or panics with its
/// stderr.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output_in_time();
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// A CA, a server certificate for 127.0.0.1 / localhost and a client certificate, made with
/// the `openssl` command in `dir`.
pub fn make_certificates(dir: &Path) -> TlsFiles {
    let p = |n: &str| dir.join(n);
    let ossl = |args: &[&str]| run_ok(Command::new("openssl").current_dir(dir).args(args));
    ossl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=qwenedge test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    for (name, ext) in [
        ("server", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n"),
        ("client", "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n"),
    ] {
        std::fs::write(p(&format!("{name}.ext")), ext).unwrap();
        ossl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN=qwenedge test {name}"),
        ]);
        ossl(&[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
        ]);
    }
    TlsFiles {
        ca: p("ca.pem"),
        server_cert: p("server.pem"),
        server_key: p("server.key"),
        client_cert: p("client.pem"),
        client_key: p("client.key"),
    }
}
