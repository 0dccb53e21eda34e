//! The local AWS emulator: moto in server mode behind Safehold's patch layer
//! (`emulator/safehold_emulator.py`: fault injection, pending snapshots,
//! cross-account sharing, AMI block-device mappings, launches and volumes
//! from shared snapshots). Used by tests and
//! `safehold demo`; never in production.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The launcher, compiled in so the binary can start it from anywhere.
const LAUNCHER: &str = include_str!("../../emulator/safehold_emulator.py");
/// Pinned emulator version; the project's AWS tests are measured against it.
pub const MOTO_PIP_SPEC: &str = "moto[server]==5.2.5";
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A running emulator, stopped when dropped.
#[derive(Debug)]
pub struct Emulator {
    /// `http://127.0.0.1:PORT`, for the SDK's endpoint override.
    pub endpoint: String,
    child: Child,
}

impl Emulator {
    /// Starts the emulator on 127.0.0.1 (`port`, or a free one when `None`)
    /// and waits for its `ready` line.
    pub async fn start(port: Option<u16>) -> anyhow::Result<Emulator> {
        let script = std::env::temp_dir().join(format!(
            "safehold-emulator-{}.py",
            env!("CARGO_PKG_VERSION")
        ));
        if std::fs::read_to_string(&script).ok().as_deref() != Some(LAUNCHER) {
            std::fs::write(&script, LAUNCHER)
                .with_context(|| format!("could not write {}", script.display()))?;
        }
        let mut child = Command::new("python3")
            .arg(&script)
            .args(["--host", "127.0.0.1", "--port"])
            .arg(port.unwrap_or(0).to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| {
                format!(
                    "could not run python3; install Python 3 and `pip install '{MOTO_PIP_SPEC}'`"
                )
            })?;
        let stdout = child.stdout.take().context("emulator stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let ready = tokio::time::timeout(READY_TIMEOUT, lines.next_line()).await;
        match ready {
            Ok(Ok(Some(line))) if line.starts_with("ready ") => {
                let endpoint = line["ready ".len()..].trim().to_string();
                tracing::info!(%endpoint, "AWS emulator started");
                Ok(Emulator { endpoint, child })
            }
            Ok(_) => bail!(
                "the AWS emulator did not start (see its error above); it needs `pip install '{MOTO_PIP_SPEC}'`"
            ),
            Err(_) => bail!("the AWS emulator did not report ready within {READY_TIMEOUT:?}"),
        }
    }

    /// Adds a fault rule (see `emulator/README.md`).
    pub async fn inject(&self, rule: &str) -> anyhow::Result<()> {
        self.control("POST", "/_safehold/faults", rule)
            .await
            .map(drop)
    }

    /// Removes every fault rule.
    pub async fn clear_faults(&self) -> anyhow::Result<()> {
        self.control("DELETE", "/_safehold/faults", "")
            .await
            .map(drop)
    }

    /// Changes the emulator's behaviour: `pending_polls`,
    /// `rejected_access_keys`, `root_access_keys` (see `emulator/README.md`).
    pub async fn configure(&self, settings: &str) -> anyhow::Result<()> {
        self.control("POST", "/_safehold/config", settings)
            .await
            .map(drop)
    }

    /// Requests per AWS API action since the last [`Emulator::reset_calls`]
    /// (faulted ones included).
    pub async fn calls(&self) -> anyhow::Result<BTreeMap<String, u64>> {
        let body = self.control("GET", "/_safehold/calls", "").await?;
        let parsed: serde_json::Value = serde_json::from_str(&body)?;
        Ok(serde_json::from_value(parsed["calls"].clone())?)
    }

    /// Requests per signing access key and AWS API action since the last
    /// [`Emulator::reset_calls`]: which credentials did what.
    pub async fn calls_by_access_key(
        &self,
    ) -> anyhow::Result<BTreeMap<String, BTreeMap<String, u64>>> {
        let body = self.control("GET", "/_safehold/calls", "").await?;
        let parsed: serde_json::Value = serde_json::from_str(&body)?;
        Ok(serde_json::from_value(parsed["by_access_key"].clone())?)
    }

    /// Sets every per-action request count to zero.
    pub async fn reset_calls(&self) -> anyhow::Result<()> {
        self.control("DELETE", "/_safehold/calls", "")
            .await
            .map(drop)
    }

    /// A minimal HTTP/1.1 request to the control endpoints (no client crate
    /// needed for a few JSON calls). Returns the response body.
    async fn control(&self, method: &str, path: &str, body: &str) -> anyhow::Result<String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let authority = self.endpoint.trim_start_matches("http://");
        let mut stream = tokio::net::TcpStream::connect(authority).await?;
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        let status = response.split_whitespace().nth(1).unwrap_or("");
        if !status.starts_with('2') {
            bail!("emulator control {method} {path} failed: {response}");
        }
        Ok(response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_string())
            .unwrap_or_default())
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}
