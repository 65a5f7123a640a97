//! Helpers of `attack_suite`: the real `callsync` binary as a process, raw HTTP/1.1 over TCP
//! from a chosen loopback address (so one test can be many clients), and what was produced
//! to Kafka.
#![allow(dead_code)]

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use callsync::ops::offsets::{topic_partitions, watermarks};
use callsync_runtime::{Isolation, KafkaClientFactory};
use rdkafka::consumer::BaseConsumer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A port free at the time of asking (the binary binds it right after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// `127.0.0.<n>`: every address of 127.0.0.0/8 is the loopback on Linux.
pub fn loopback(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, n))
}

/// `callsync --config <file> run --roles <roles>`, stderr to a log file; SIGKILLed on drop.
pub struct CallsyncProcess {
    child: Option<Child>,
    pub log: PathBuf,
}

impl CallsyncProcess {
    pub fn start(config: &Path, roles: &str, log: PathBuf) -> CallsyncProcess {
        let mut cmd = callsync_command();
        let stderr = std::fs::File::create(&log).expect("log file");
        let child = cmd
            .arg("--config")
            .arg(config)
            .args(["run", "--roles", roles])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start callsync run");
        CallsyncProcess {
            child: Some(child),
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Fails the test (with the log) when the process has exited.
    pub fn assert_running(&mut self) {
        if let Some(status) = self
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
        {
            panic!("callsync exited ({status}):\n{}", self.log_text());
        }
    }

    /// Resident memory, from /proc.
    pub fn rss_bytes(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .unwrap_or(0)
    }

    /// SIGTERM, then waits up to `within` for the exit; returns how long it took.
    pub fn terminate(&mut self, within: Duration) -> Option<Duration> {
        let child = self.child.as_mut()?;
        let started = Instant::now();
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        while started.elapsed() < within {
            if let Ok(Some(_)) = child.try_wait() {
                self.child = None;
                return Some(started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for CallsyncProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The binary with none of this process's `CALLSYNC*` variables.
pub fn callsync_command() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_callsync"));
    for (key, _) in std::env::vars() {
        if key.starts_with("CALLSYNC") {
            cmd.env_remove(key);
        }
    }
    cmd.env_remove("RUST_LOG");
    cmd
}

/// Writes `text` to `dir/name`.
pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    let mut f = std::fs::File::create(&path).expect("create file");
    f.write_all(text.as_bytes()).expect("write file");
    path
}

/// Waits until `GET /healthz` answers 200 on `addr`.
pub async fn wait_healthy(process: &mut CallsyncProcess, addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        process.assert_running();
        if let Ok(answer) = raw_request(
            loopback(1),
            addr,
            b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
            Duration::from_secs(2),
        )
        .await
        {
            if answer.status == Some(200) {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "callsync did not serve {addr} within 90 s:\n{}",
            process.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A TCP connection to `addr` from `from` (any port).
pub async fn connect_from(from: IpAddr, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    socket.connect(addr).await
}

/// What came back for a raw request.
#[derive(Debug, Clone)]
pub struct RawAnswer {
    /// The status code, `None` when the server closed without answering.
    pub status: Option<u16>,
    pub text: String,
}

/// Sends `request` as is from `from` and reads the answer until the server closes or
/// `timeout` passes (requests should say `Connection: close`).
pub async fn raw_request(
    from: IpAddr,
    addr: SocketAddr,
    request: &[u8],
    timeout: Duration,
) -> std::io::Result<RawAnswer> {
    let mut stream = connect_from(from, addr).await?;
    // the server may answer (413, 431) and close before it read everything: not an error
    let _ = stream.write_all(request).await;
    read_answer(&mut stream, timeout).await
}

/// Reads from `stream` until it closes or `timeout` passes.
pub async fn read_answer(stream: &mut TcpStream, timeout: Duration) -> std::io::Result<RawAnswer> {
    let mut buf = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let mut chunk = vec![0u8; 8192];
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Err(_) => break,
            Ok(Ok(n)) => {
                buf.extend_from_slice(&chunk[..n]);
                if complete(&buf) {
                    break;
                }
            }
            Ok(Err(e)) if buf.is_empty() && e.kind() != std::io::ErrorKind::ConnectionReset => {
                return Err(e)
            }
            Ok(Err(_)) => break,
        }
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok());
    Ok(RawAnswer { status, text })
}

/// Whether `buf` holds a whole answer with a `Content-Length` body.
fn complete(buf: &[u8]) -> bool {
    let text = String::from_utf8_lossy(buf);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    let length = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())
                .flatten()
        })
        .unwrap_or(0);
    body.len() >= length
}

/// A POST with a body and `Connection: close`, plus `headers` (`Name: value` lines).
pub fn post_request(path: &str, headers: &[String], body: &[u8]) -> Vec<u8> {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for h in headers {
        request.push_str(h);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// Records in `topics` (sums of high watermarks): anything produced moves it.
pub fn records_in(factory: &KafkaClientFactory, topics: &[String]) -> i64 {
    let consumer: BaseConsumer = factory
        .create(
            "attack suite watermarks",
            &factory.consumer_config("attack-suite-watermarks", Isolation::ReadUncommitted),
        )
        .expect("consumer");
    let timeout = Duration::from_secs(10);
    topics
        .iter()
        .map(|topic| {
            let parts = topic_partitions(&consumer, topic, timeout).expect("partitions");
            watermarks(&consumer, topic, &parts, timeout)
                .expect("watermarks")
                .values()
                .map(|w| w.high)
                .sum::<i64>()
        })
        .sum()
}

/// `url` with its user replaced by `user` (no password: the test server trusts loopback).
pub fn url_as(url: &str, user: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let host = rest.split_once('@').map(|(_, h)| h).unwrap_or(rest);
    format!("{scheme}://{user}@{host}")
}
