//! A Python with the official `openai` SDK and `jsonschema`, for tests that
//! check herd through a second real client. Made once in the herd cache
//! (`$HERD_CACHE`, default ~/.cache/herd): `python3 -m venv` + pip from PyPI,
//! built beside its place and renamed into it, so a half-made venv is never used.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

/// The releases the tests were written against.
const REQUIREMENTS: [&str; 2] = ["openai==3.63.0", "jsonschema==4.26.0"];

static MAKING: Mutex<()> = Mutex::new(());

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

fn run_ok(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The venv's python, made on first use; an error says why there is none
/// (e.g. PyPI unreachable).
pub fn python() -> Result<PathBuf, String> {
    let venv = cache().join("test-venv-openai");
    let python = venv.join("bin/python");
    let _one = MAKING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if usable(&python) {
        return Ok(python);
    }
    let part = cache().join(format!("test-venv-openai.part{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&part);
    let _ = std::fs::remove_dir_all(&venv);
    std::fs::create_dir_all(cache()).map_err(|e| e.to_string())?;
    run_ok(Command::new("python3").args(["-m", "venv"]).arg(&part))?;
    run_ok(
        Command::new(part.join("bin/python"))
            .args(["-m", "pip", "install", "--quiet"])
            .args(REQUIREMENTS),
    )?;
    std::fs::rename(&part, &venv).map_err(|e| e.to_string())?;
    if usable(&python) {
        Ok(python)
    } else {
        Err(format!(
            "{} cannot import openai and jsonschema",
            python.display()
        ))
    }
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
