//! How the engine host holds the weights: read into memory backed by
//! transparent huge pages (the default), or mapped from the file (`--mmap
//! true`). Both must decode the same greedy text.

mod common;

use common::{children, Server, TestResult, MODEL_ID};
use serde_json::{json, Value};

/// AnonHugePages of a process, in KiB.
fn anon_huge_kib(pid: u32) -> Result<u64, String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .map_err(|e| format!("smaps_rollup of {pid}: {e}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("AnonHugePages:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| format!("no AnonHugePages line for {pid}"))
}

/// The kernel's THP mode, e.g. "madvise" (the bracketed word).
fn thp_mode() -> String {
    std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
        .ok()
        .and_then(|s| {
            let start = s.find('[')?;
            let end = s.find(']')?;
            s.get(start + 1..end).map(str::to_string)
        })
        .unwrap_or_else(|| "never".into())
}

async fn greedy_text(server: &Server) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
    let body = json!({"model": MODEL_ID, "max_tokens": 48, "temperature": 0,
        "messages": [{"role": "user", "content": "Explain what a lighthouse does."}]});
    let r: Value = reqwest::Client::new()
        .post(format!("{}/chat/completions", server.v1()))
        .json(&body)
        .send()
        .await?
        .json()
        .await?;
    r["choices"][0]["message"]["content"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("no content in {r}").into())
}

fn engine_host(server: &Server) -> Result<u32, String> {
    children(server.pid())
        .into_iter()
        .next()
        .ok_or_else(|| "no engine host child".into())
}

#[tokio::test]
async fn weights_in_huge_pages_by_default_and_mapped_on_request() -> TestResult {
    let (read_text, read_huge) = {
        let server = Server::start(&[])?;
        let text = greedy_text(&server).await?;
        (text, anon_huge_kib(engine_host(&server)?)?)
    };
    let (mapped_text, mapped_huge) = {
        let server = Server::start(&["--mmap", "true"])?;
        let text = greedy_text(&server).await?;
        (text, anon_huge_kib(engine_host(&server)?)?)
    };

    assert!(!read_text.trim().is_empty());
    assert_eq!(
        read_text, mapped_text,
        "both ways of loading hold the same weights"
    );

    let mode = thp_mode();
    if mode == "never" {
        eprintln!("transparent huge pages are off on this kernel: huge-page use not checked");
    } else {
        // The model is 98 MB (measured: ~140 MiB of huge pages with the KV cache);
        // at least half of it must sit in 2 MiB pages.
        assert!(
            read_huge >= 48 * 1024,
            "THP mode {mode}: only {read_huge} KiB of huge pages with the weights read into memory"
        );
    }
    // Mapped weights are file pages; what is anonymous (KV cache, buffers) is far smaller.
    assert!(
        mapped_huge < read_huge || read_huge == 0,
        "mapped {mapped_huge} KiB vs read {read_huge} KiB of huge pages"
    );
    Ok(())
}
