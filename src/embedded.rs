//! Local infrastructure for running Safehold on one machine without containers:
//! a private PostgreSQL cluster bound to 127.0.0.1 (the AWS emulator lives in
//! `safehold_cloud::emulator`).
//!
//! Production points `DATABASE_URL` and the AWS endpoint at real services; this
//! module exists so that `safehold demo` and development need nothing but the
//! PostgreSQL server package and `pip install 'moto[server]==5.2.5'`.

use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use sqlx::{Connection, PgConnection};
use tokio::process::Command;

/// The server tools we need, all from the same installation.
const SERVER_TOOLS: [&str; 3] = ["initdb", "pg_ctl", "postgres"];
/// Where the chosen port is remembered, so a restarted demo keeps its URL.
const PORT_FILE: &str = "safehold-port";
/// initdb and pg_ctl normally take seconds; this only guards against a hang.
const PG_TOOL_TIMEOUT: Duration = Duration::from_secs(120);
/// `sun_path` holds 108 bytes including the terminating NUL.
const MAX_UNIX_SOCKET_PATH: usize = 107;

/// A PostgreSQL cluster owned by Safehold, kept in a data directory of its own.
#[derive(Debug)]
pub struct EmbeddedPostgres {
    /// `postgres://postgres@127.0.0.1:PORT/safehold`
    pub url: String,
    data_dir: PathBuf,
    bin_dir: PathBuf,
    run_as: RunAs,
}

impl EmbeddedPostgres {
    /// Starts (initialising on first use) the cluster in `data_dir` and makes
    /// sure the `safehold` database exists. A cluster that is already running
    /// from an earlier start is reused.
    pub async fn start(data_dir: &Path) -> anyhow::Result<EmbeddedPostgres> {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("could not create {}", data_dir.display()))?;
        // pg_ctl runs the server from another working directory: paths must be absolute.
        let data_dir = data_dir
            .canonicalize()
            .with_context(|| format!("could not resolve {}", data_dir.display()))?;
        let data_dir_str = utf8(&data_dir)?;

        let cluster_version = read_trimmed(&data_dir.join("PG_VERSION"));
        let binaries = find_server_binaries(cluster_version.as_deref(), &data_dir).await?;
        let run_as = RunAs::detect().await?;

        if run_as.switches_user() {
            // The server refuses to run as root, so the postgres user must own its data.
            let chown = Command::new("chown")
                .args(["-R", "postgres:", data_dir_str])
                .stdin(Stdio::null())
                .output()
                .await
                .context("could not run chown")?;
            ensure_success(&chown, "chown of the PostgreSQL data directory")?;
            let probe = run_as.command(Path::new("test"), &["-w", data_dir_str]);
            if !run_tool(probe, "access check").await?.status.success() {
                bail!(
                    "the postgres user cannot write {data_dir_str}: every parent directory must be \
                     searchable by other users (chmod o+x), or choose a data directory elsewhere"
                );
            }
        }

        if cluster_version.is_none() {
            tracing::info!(data_dir = %data_dir_str, version = %binaries.version, "initialising PostgreSQL cluster");
            let initdb = run_as.command(
                &binaries.dir.join("initdb"),
                &[
                    "-D",
                    data_dir_str,
                    "-A",
                    "trust",
                    "-U",
                    "postgres",
                    "--encoding=UTF8",
                    "--no-locale",
                ],
            );
            ensure_success(&run_tool(initdb, "initdb").await?, "initdb")?;
        }

        let pg_ctl = binaries.dir.join("pg_ctl");
        let port = match running_port(&run_as, &pg_ctl, &data_dir).await? {
            Some(port) => {
                tracing::info!(port, data_dir = %data_dir_str, "PostgreSQL already running");
                port
            }
            None => {
                let port = choose_port(&data_dir)?;
                start_server(&run_as, &pg_ctl, &data_dir, port).await?;
                tracing::info!(port, data_dir = %data_dir_str, "PostgreSQL started");
                port
            }
        };

        create_database_if_missing(port).await?;
        Ok(EmbeddedPostgres {
            url: format!("postgres://postgres@127.0.0.1:{port}/safehold"),
            data_dir,
            bin_dir: binaries.dir,
            run_as,
        })
    }

    /// Stops the server (fast shutdown: open sessions are disconnected).
    /// Failures are logged, not returned: there is nothing a caller could do.
    pub async fn stop(&self) {
        let Some(data_dir) = self.data_dir.to_str() else {
            // start() only accepts UTF-8 paths, so this cannot happen.
            return;
        };
        let cmd = self.run_as.command(
            &self.bin_dir.join("pg_ctl"),
            &["-D", data_dir, "-m", "fast", "-w", "stop"],
        );
        match run_tool(cmd, "pg_ctl stop").await {
            Ok(out) if out.status.success() => tracing::info!(data_dir, "PostgreSQL stopped"),
            Ok(out) => {
                tracing::warn!(data_dir, output = %describe_output(&out), "pg_ctl stop failed")
            }
            Err(error) => {
                tracing::warn!(data_dir, error = %format!("{error:#}"), "pg_ctl stop failed")
            }
        }
    }
}

/// How the PostgreSQL tools are run.
#[derive(Debug, Clone)]
enum RunAs {
    /// Not root: run them directly.
    CurrentUser,
    /// Root: as the `postgres` user via util-linux `runuser` (no password, no PAM prompt).
    Runuser(PathBuf),
    /// Root without `runuser`: via `su`, which needs a shell command line.
    Su(PathBuf),
}

impl RunAs {
    async fn detect() -> anyhow::Result<RunAs> {
        if current_uid().await? != 0 {
            return Ok(RunAs::CurrentUser);
        }
        let postgres_user = Command::new("id")
            .args(["-u", "postgres"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await
            .map(|status| status.success())
            .unwrap_or(false);
        if !postgres_user {
            bail!(
                "running as root, but PostgreSQL refuses to run as root and there is no `postgres` \
                 system user to run it as; install the PostgreSQL server package (which creates it) \
                 or run Safehold as an ordinary user"
            );
        }
        if let Some(runuser) = find_on_path("runuser") {
            return Ok(RunAs::Runuser(runuser));
        }
        if let Some(su) = find_on_path("su") {
            return Ok(RunAs::Su(su));
        }
        bail!("running as root, but neither `runuser` nor `su` is available to switch to the postgres user")
    }

    fn switches_user(&self) -> bool {
        !matches!(self, RunAs::CurrentUser)
    }

    fn command(&self, program: &Path, args: &[&str]) -> Command {
        let mut cmd = match self {
            RunAs::CurrentUser => {
                let mut cmd = Command::new(program);
                cmd.args(args);
                cmd
            }
            RunAs::Runuser(runuser) => {
                let mut cmd = Command::new(runuser);
                cmd.args(["-u", "postgres", "--"]).arg(program).args(args);
                cmd
            }
            RunAs::Su(su) => {
                let line = std::iter::once(program.to_string_lossy().as_ref())
                    .chain(args.iter().copied())
                    .map(shell_quote)
                    .collect::<Vec<_>>()
                    .join(" ");
                let mut cmd = Command::new(su);
                // -s: the postgres account may have a login shell that is not a shell.
                cmd.args(["postgres", "-s", "/bin/sh", "-c"]).arg(line);
                cmd
            }
        };
        // "/" is readable by everyone; the caller's directory (e.g. /root) may not be.
        cmd.current_dir("/").stdin(Stdio::null()).kill_on_drop(true);
        cmd
    }
}

#[derive(Debug)]
struct ServerBinaries {
    dir: PathBuf,
    /// As printed by `pg_ctl --version`, e.g. "15.20".
    version: String,
}

/// Finds a directory holding all of initdb, pg_ctl and postgres: PATH first,
/// then /usr/lib/postgresql/*/bin, highest version first (Debian keeps the
/// server tools off PATH). An existing cluster needs the same major version.
async fn find_server_binaries(
    cluster_version: Option<&str>,
    data_dir: &Path,
) -> anyhow::Result<ServerBinaries> {
    let mut seen_versions = Vec::new();
    for dir in candidate_bin_dirs() {
        if !SERVER_TOOLS
            .iter()
            .all(|tool| is_executable(&dir.join(tool)))
        {
            continue;
        }
        let Some(version) = tool_version(&dir.join("pg_ctl")).await else {
            continue;
        };
        let fits = cluster_version.is_none_or(|major| same_major(&version, major));
        if fits {
            return Ok(ServerBinaries { dir, version });
        }
        seen_versions.push(version);
    }
    match cluster_version {
        Some(major) if !seen_versions.is_empty() => bail!(
            "{} holds a PostgreSQL {major} cluster, but only PostgreSQL {} server binaries were found; \
             install PostgreSQL {major} (Debian: apt-get install postgresql-{major}) or remove the \
             directory to start afresh",
            data_dir.display(),
            seen_versions.join(", ")
        ),
        _ => bail!(
            "PostgreSQL server binaries (initdb, pg_ctl, postgres) were not found on PATH or under \
             /usr/lib/postgresql/*/bin; install the PostgreSQL server \
             (Debian/Ubuntu: apt-get install postgresql; Fedora: dnf install postgresql-server; \
             macOS: brew install postgresql@16)"
        ),
    }
}

/// PG_VERSION holds the major version ("15", or "9.6" before 10); binaries
/// report the full one ("15.20", "16beta1").
fn same_major(version: &str, major: &str) -> bool {
    version
        .strip_prefix(major)
        .is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_digit()))
}

fn candidate_bin_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect())
        .unwrap_or_default();
    let mut versioned: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name();
            let version = name
                .to_str()?
                .split('.')
                .map(|part| part.parse().ok())
                .collect::<Option<Vec<u32>>>()?;
            Some((version, entry.path().join("bin")))
        })
        .collect();
    versioned.sort_by(|a, b| b.0.cmp(&a.0));
    dirs.extend(versioned.into_iter().map(|(_, dir)| dir));
    dirs
}

/// `pg_ctl (PostgreSQL) 15.20 (Debian 15.20-0+deb12u1)` → `15.20`.
/// pg_ctl answers --version even as root.
async fn tool_version(tool: &Path) -> Option<String> {
    let out = Command::new(tool)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .await
        .ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .find(|word| word.starts_with(|c: char| c.is_ascii_digit()))
        .map(str::to_owned)
}

/// The port of a server already running on `data_dir`, if any.
async fn running_port(
    run_as: &RunAs,
    pg_ctl: &Path,
    data_dir: &Path,
) -> anyhow::Result<Option<u16>> {
    let pid_file = data_dir.join("postmaster.pid");
    if !pid_file.exists() {
        return Ok(None);
    }
    // A postmaster.pid can be stale after a crash; pg_ctl status checks the process.
    let status = run_as.command(pg_ctl, &["-D", utf8(data_dir)?, "status"]);
    if !run_tool(status, "pg_ctl status").await?.status.success() {
        return Ok(None);
    }
    // Line 4 of postmaster.pid is the port the server listens on.
    let contents = std::fs::read_to_string(&pid_file)
        .with_context(|| format!("could not read {}", pid_file.display()))?;
    let port = contents
        .lines()
        .nth(3)
        .and_then(|line| line.trim().parse().ok())
        .ok_or_else(|| anyhow!("{} has no port on line 4", pid_file.display()))?;
    Ok(Some(port))
}

/// Reuses the remembered port while it is free, so the URL stays stable.
fn choose_port(data_dir: &Path) -> anyhow::Result<u16> {
    let port_file = data_dir.join(PORT_FILE);
    let remembered = read_trimmed(&port_file)
        .and_then(|text| text.parse::<u16>().ok())
        .filter(|&port| port_is_free(port));
    let port = match remembered {
        Some(port) => port,
        None => free_port()?,
    };
    std::fs::write(&port_file, format!("{port}\n"))
        .with_context(|| format!("could not write {}", port_file.display()))?;
    Ok(port)
}

async fn start_server(
    run_as: &RunAs,
    pg_ctl: &Path,
    data_dir: &Path,
    port: u16,
) -> anyhow::Result<()> {
    let data_dir_str = utf8(data_dir)?;
    // The socket lives in the data directory, away from the system cluster's
    // /var/run/postgresql. A path too long for a Unix socket disables the
    // socket: Safehold connects over TCP only.
    let socket_dir = if data_dir_str.len() + "/.s.PGSQL.65535".len() <= MAX_UNIX_SOCKET_PATH {
        data_dir_str
    } else {
        ""
    };
    // pg_ctl hands -o to a shell, so the directory must be quoted there.
    let options = format!(
        "-p {port} -k {} -c listen_addresses=127.0.0.1",
        shell_quote(socket_dir)
    );
    let log = data_dir.join("server.log");
    let log_str = utf8(&log)?;
    let cmd = run_as.command(
        pg_ctl,
        &[
            "-D",
            data_dir_str,
            "-o",
            &options,
            "-l",
            log_str,
            "-w",
            "-t",
            "60",
            "start",
        ],
    );
    // -l matters beyond logging: without it the server inherits our output
    // pipes and waiting for pg_ctl's output would never end.
    let out = run_tool(cmd, "pg_ctl start").await?;
    if !out.status.success() {
        bail!(
            "PostgreSQL did not start on port {port}: {}\nlast lines of {log_str}:\n{}",
            describe_output(&out),
            tail(&log, 20)
        );
    }
    Ok(())
}

async fn create_database_if_missing(port: u16) -> anyhow::Result<()> {
    let admin_url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    let mut conn = PgConnection::connect(&admin_url)
        .await
        .with_context(|| format!("could not connect to {admin_url}"))?;
    let exists =
        sqlx::query_scalar::<_, i32>("SELECT 1 FROM pg_database WHERE datname = 'safehold'")
            .fetch_optional(&mut conn)
            .await
            .context("could not list databases")?;
    if exists.is_none() {
        let created = sqlx::query("CREATE DATABASE safehold")
            .execute(&mut conn)
            .await;
        match created {
            Ok(_) => tracing::info!("created database safehold"),
            // Another process created it between our check and our CREATE.
            Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("42P04") => {}
            Err(error) => return Err(error).context("could not create database safehold"),
        }
    }
    conn.close()
        .await
        .context("could not close the admin connection")?;
    Ok(())
}

/// Lets the kernel pick a free port. Another process could take it before our
/// child binds it; for a local tool that window is acceptable.
fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .context("could not find a free port on 127.0.0.1")?;
    Ok(listener
        .local_addr()
        .context("could not read the chosen port")?
        .port())
}

fn port_is_free(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}

async fn current_uid() -> anyhow::Result<u32> {
    // On Linux /proc/self belongs to the process's effective uid; `id -u` covers other Unixes.
    if let Ok(meta) = std::fs::metadata("/proc/self") {
        return Ok(meta.uid());
    }
    let out = Command::new("id")
        .arg("-u")
        .stdin(Stdio::null())
        .output()
        .await
        .context("could not run `id -u`")?;
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .context("unexpected output from `id -u`")
}

/// Runs a PostgreSQL tool to completion, capturing its output.
async fn run_tool(mut cmd: Command, what: &str) -> anyhow::Result<Output> {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    // On timeout the future is dropped and kill_on_drop ends the process.
    tokio::time::timeout(PG_TOOL_TIMEOUT, cmd.output())
        .await
        .map_err(|_| {
            anyhow!(
                "{what} did not finish within {} s",
                PG_TOOL_TIMEOUT.as_secs()
            )
        })?
        .with_context(|| format!("could not run {what}"))
}

fn ensure_success(out: &Output, what: &str) -> anyhow::Result<()> {
    if out.status.success() {
        Ok(())
    } else {
        bail!("{what} failed: {}", describe_output(out))
    }
}

fn describe_output(out: &Output) -> String {
    let status = out.status.to_string();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let parts: Vec<&str> = [status.as_str(), stderr.trim(), stdout.trim()]
        .into_iter()
        .filter(|part| !part.is_empty())
        .collect();
    parts.join("; ")
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path)
        .map(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

fn read_trimmed(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|text| text.trim().to_owned())
        .filter(|text| !text.is_empty())
}

/// The last `lines` lines of a log file, for error messages.
fn tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(error) => format!("(could not read {}: {error})", path.display()),
    }
}

fn utf8(path: &Path) -> anyhow::Result<&str> {
    path.to_str()
        .ok_or_else(|| anyhow!("path is not valid UTF-8: {}", path.display()))
}

/// Quotes one word for a POSIX shell.
fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quote_survives_single_quotes() {
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn major_versions_match_full_versions() {
        assert!(same_major("15.20", "15"));
        assert!(same_major("16beta1", "16"));
        assert!(same_major("9.6.24", "9.6"));
        assert!(!same_major("150.1", "15"));
        assert!(!same_major("16.4", "15"));
    }

    #[test]
    fn free_port_is_bindable() {
        let port = free_port().expect("a free port");
        assert!(port_is_free(port));
    }
}
