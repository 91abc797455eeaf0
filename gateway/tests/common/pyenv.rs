//! A Python with the official `openai` SDK and `jsonschema`, for tests that
//! check herd through a second real client. Made on first use in the herd
//! cache (`$HERD_CACHE`, default ~/.cache/herd): `python3 -m venv` + pip.

use std::path::PathBuf;
use std::process::Command;

fn cache() -> PathBuf {
    std::env::var_os("HERD_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                .join(".cache/herd")
        })
}

fn usable(python: &PathBuf) -> bool {
    python.is_file()
        && Command::new(python)
            .args(["-c", "import openai, jsonschema"])
            .output()
            .is_ok_and(|o| o.status.success())
}

/// The venv's python, or why there is none (pip unreachable): the caller skips.
pub fn python() -> Result<PathBuf, String> {
    for venv in ["venv", "test-venv"] {
        let python = cache().join(venv).join("bin/python");
        if usable(&python) {
            return Ok(python);
        }
    }
    let venv = cache().join("test-venv");
    let made = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .output()
        .map_err(|e| format!("python3 -m venv: {e}"))?;
    if !made.status.success() {
        return Err(format!(
            "python3 -m venv failed: {}",
            String::from_utf8_lossy(&made.stderr)
        ));
    }
    let python = venv.join("bin/python");
    let pip = Command::new(&python)
        .args(["-m", "pip", "install", "--quiet", "openai", "jsonschema"])
        .output()
        .map_err(|e| format!("pip: {e}"))?;
    if !pip.status.success() || !usable(&python) {
        return Err(format!(
            "pip install openai jsonschema failed (is PyPI reachable?): {}",
            String::from_utf8_lossy(&pip.stderr)
        ));
    }
    Ok(python)
}

/// Runs `script` with `args`; its stdout, or the failure with stderr.
pub fn run(python: &PathBuf, script: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(python)
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "python failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
