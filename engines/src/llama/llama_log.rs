//! llama.cpp's log, captured: the lines that say which device got which layer
//! are kept (the engine host reports the split that really runs), and so is
//! the first error (a failed load says why only there); the rest is dropped,
//! or printed to stderr when `HERD_LLAMA_LOG` is set.

use std::ffi::{c_char, c_void, CStr};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

static LAYER_LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());
static FIRST_ERROR: Mutex<Option<String>> = Mutex::new(None);
static ECHO: AtomicBool = AtomicBool::new(false);
/// A bound on kept lines: one per layer, models have at most a few hundred.
const MAX_LINES: usize = 4096;

unsafe extern "C" fn on_log(
    level: llama_cpp_sys_2::ggml_log_level,
    text: *const c_char,
    _user: *mut c_void,
) {
    if text.is_null() {
        return;
    }
    // SAFETY: llama.cpp passes a NUL-terminated string valid for this call.
    let line = unsafe { CStr::from_ptr(text) }.to_string_lossy();
    if ECHO.load(Ordering::Relaxed) {
        let _ = std::io::stderr().write_all(line.as_bytes());
    }
    // The first error is the cause; later ones ("failed to load model") only follow from it.
    if level == llama_cpp_sys_2::GGML_LOG_LEVEL_ERROR {
        if let Ok(mut first) = FIRST_ERROR.lock() {
            first.get_or_insert_with(|| line.trim().to_string());
        }
    }
    if line.contains("assigned to device") {
        if let Ok(mut lines) = LAYER_LINES.lock() {
            if lines.len() < MAX_LINES {
                lines.push(line.trim_end().to_string());
            }
        }
    }
}

/// Installs the capturing logger (for llama.cpp and ggml).
pub fn capture(echo: bool) {
    ECHO.store(echo, Ordering::Relaxed);
    // SAFETY: the callback is a plain function that lives for the whole program.
    unsafe { llama_cpp_sys_2::llama_log_set(Some(on_log), std::ptr::null_mut()) };
}

/// The layer-assignment lines logged so far (and forgets them).
pub fn take_layer_lines() -> Vec<String> {
    LAYER_LINES
        .lock()
        .map(|mut l| std::mem::take(&mut *l))
        .unwrap_or_default()
}

/// The first error llama.cpp logged (and forgets it).
pub fn take_first_error() -> Option<String> {
    FIRST_ERROR.lock().ok().and_then(|mut e| e.take())
}
