//! A real Prometheus (Debian's `/usr/bin/prometheus`) scraping one target every
//! second, on a free loopback port with its own temporary TSDB; killed on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub struct Prometheus {
    child: Child,
    pub url: String,
    _dir: tempfile::TempDir,
}

fn binary() -> Result<PathBuf, BoxError> {
    let path = std::env::var_os("HERD_TEST_PROMETHEUS")
        .map_or_else(|| PathBuf::from("/usr/bin/prometheus"), PathBuf::from);
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "Prometheus is not installed at {}: run `apt-get install prometheus` (or .ci/setup), or set HERD_TEST_PROMETHEUS",
            path.display()
        )
        .into())
    }
}

fn free_port() -> Result<u16, BoxError> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Prometheus {
    /// Starts Prometheus scraping `target` (`host:port`) as job `herd` every second.
    pub async fn start(target: &str) -> Result<Self, BoxError> {
        let bin = binary()?;
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: herd\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )?;
        let port = free_port()?;
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let prom = Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        };
        prom.wait_ready(Duration::from_secs(30)).await?;
        Ok(prom)
    }

    async fn wait_ready(&self, timeout: Duration) -> Result<(), BoxError> {
        let deadline = Instant::now() + timeout;
        let client = reqwest::Client::new();
        while Instant::now() < deadline {
            if let Ok(r) = client.get(format!("{}/-/ready", self.url)).send().await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(format!(
            "Prometheus at {} was not ready within {timeout:?}",
            self.url
        )
        .into())
    }

    /// Runs an instant query; returns each series' labels and value.
    pub async fn query(&self, expr: &str) -> Result<Vec<(serde_json::Value, f64)>, BoxError> {
        let body: serde_json::Value = reqwest::Client::new()
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", expr)])
            .send()
            .await?
            .json()
            .await?;
        if body["status"] != "success" {
            return Err(format!("Prometheus rejected `{expr}`: {body}").into());
        }
        let series = body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        Ok(series
            .into_iter()
            .map(|s| {
                let value = s["value"][1]
                    .as_str()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(f64::NAN);
                (s["metric"].clone(), value)
            })
            .collect())
    }

    /// The sum of `expr`'s values (0 when it returns nothing).
    pub async fn value(&self, expr: &str) -> Result<f64, BoxError> {
        Ok(self.query(expr).await?.iter().map(|(_, v)| v).sum())
    }

    /// Waits until Prometheus has scraped `job="herd"` successfully at least `n` more times.
    pub async fn wait_scrapes(&self, n: u32) -> Result<(), BoxError> {
        let count = "count_over_time(up{job=\"herd\"}[10m])";
        let start = self.value(count).await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.value(count).await? >= start + f64::from(n)
                && self.value("up{job=\"herd\"}").await? == 1.0
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Err(format!("Prometheus did not scrape herd {n} more times within 30 s").into())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
