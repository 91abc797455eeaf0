//! The official Python `openai` SDK as a second real client: a venv under
//! the cache dir, made once (pip from PyPI), then reused.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

/// The SDK release line the tests were written against.
const OPENAI_REQUIREMENT: &str = "openai==3.63.0";

static MAKING: Mutex<()> = Mutex::new(());

fn cache() -> PathBuf {
    std::env::var_os("HERD_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home =
                std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
            home.join(".cache/herd")
        })
}

/// The venv's python, made on first use.
pub fn python() -> Result<PathBuf, String> {
    let venv = cache().join("py-openai");
    let python = venv.join("bin/python");
    let _one = MAKING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if python.is_file() {
        return Ok(python);
    }
    // Built beside its final place and renamed, so a half-made venv is never used.
    let part = cache().join(format!("py-openai.part{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&part);
    std::fs::create_dir_all(cache()).map_err(|e| e.to_string())?;
    let run = |cmd: &mut Command| -> Result<(), String> {
        let out = cmd.output().map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr)))
        }
    };
    run(Command::new("python3").args(["-m", "venv"]).arg(&part))?;
    run(Command::new(part.join("bin/pip")).args(["install", "--quiet", OPENAI_REQUIREMENT]))?;
    std::fs::rename(&part, &venv).map_err(|e| e.to_string())?;
    Ok(python)
}

/// Runs `script` with `args`; its stdout, or why it failed.
pub fn run(script: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(python()?)
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "python failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}
