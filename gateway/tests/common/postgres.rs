//! A real PostgreSQL for a test: the Debian `postgresql` package's binaries,
//! `initdb` into a temp dir, started on a free port (and a Unix socket in the
//! same dir), one database created; stopped and removed when dropped.
//! PostgreSQL refuses to run as root, so as root the server runs as the
//! `postgres` user (which owns the temp dir), through `runuser`.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    as_user: Vec<String>,
    pub url: String,
}

/// The newest installed server's bin dir.
fn bin_dir() -> Result<PathBuf, String> {
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|e| format!("PostgreSQL is not installed (apt-get install postgresql): {e}"))?
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            Some((v, e.path().join("bin")))
        })
        .collect();
    dirs.sort();
    dirs.pop()
        .map(|(_, p)| p)
        .ok_or_else(|| "no /usr/lib/postgresql/<version>/bin".to_string())
}

fn any_free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

impl Postgres {
    pub fn start() -> Result<Self, String> {
        Self::start_on(any_free_port()?)
    }

    /// A free TCP port, for a server started later with [`Postgres::start_on`].
    pub fn free_port() -> Result<u16, String> {
        any_free_port()
    }

    pub fn start_on(port: u16) -> Result<Self, String> {
        let bin = bin_dir()?;
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let root = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false);
        let as_user: Vec<String> = if root {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .map_err(|e| e.to_string())?;
            if !ok.success() {
                return Err("cannot chown the PostgreSQL dir to postgres".into());
            }
            ["runuser", "-u", "postgres", "--"]
                .map(str::to_string)
                .to_vec()
        } else {
            Vec::new()
        };
        let mut pg = Self {
            dir,
            bin,
            as_user,
            url: String::new(),
        };
        let data = pg.data();
        pg.run(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "herd",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        )?;
        let opts = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            pg.dir.path().display()
        );
        let log = pg.dir.path().join("log").display().to_string();
        pg.run(
            "pg_ctl",
            &["-D", &data, "-o", &opts, "-l", &log, "-w", "start"],
        )?;
        let port_s = port.to_string();
        pg.run(
            "createdb",
            &["-h", "127.0.0.1", "-p", &port_s, "-U", "herd", "herd_usage"],
        )?;
        pg.url = format!("postgres://herd@127.0.0.1:{port}/herd_usage");
        Ok(pg)
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn run(&self, tool: &str, args: &[&str]) -> Result<(), String> {
        let exe = self.bin.join(tool);
        let mut cmd = match self.as_user.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        let out = cmd
            .args(args)
            .current_dir(Path::new("/"))
            .output()
            .map_err(|e| format!("{tool}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{tool} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.data();
        let _ = self.run("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"]);
    }
}
