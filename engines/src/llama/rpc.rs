//! llama.cpp's RPC backend, which llama-cpp-2 does not wrap: the shard worker
//! (`herd rpc-worker`, a ggml RPC server in its own process) and, on the head,
//! loading a model whose last layers live on RPC devices with exactly the
//! planned split.
//!
//! `ggml-rpc.h` is not in llama-cpp-sys-2's generated bindings, but the
//! library is compiled in (`GGML_RPC=ON`, see .cargo/config.toml), so the few
//! functions used here are declared by hand.

use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_sys_2 as sys;
use std::ffi::{c_char, CStr, CString};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;

extern "C" {
    fn ggml_backend_rpc_start_server(
        endpoint: *const c_char,
        cache_dir: *const c_char,
        n_threads: usize,
        n_devices: usize,
        devices: *mut sys::ggml_backend_dev_t,
    );
    fn ggml_backend_rpc_add_server(endpoint: *const c_char) -> sys::ggml_backend_reg_t;
}

#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error("{0} contains a NUL byte")]
    Nul(&'static str),
    #[error("cannot register the RPC server {0} (is it running?)")]
    Register(String),
    #[error("the RPC server {0} offers no device")]
    NoDevice(String),
    #[error("the split {layers:?} does not cover the model's {n_layers} layers")]
    BadSplit { layers: Vec<u32>, n_layers: u32 },
    #[error("llama.cpp could not load {0}")]
    Load(PathBuf),
    #[error("this build has no device to serve")]
    NoLocalDevice,
}

/// The device a shard worker serves: the first GPU (Metal on a Mac) if the
/// build has one, else the CPU. Its name is what `/cluster` shows.
pub fn worker_device() -> Option<(sys::ggml_backend_dev_t, String)> {
    let mut cpu = None;
    // SAFETY: plain queries of ggml's static device registry.
    unsafe {
        for i in 0..sys::ggml_backend_dev_count() {
            let dev = sys::ggml_backend_dev_get(i);
            if dev.is_null() {
                continue;
            }
            let name = CStr::from_ptr(sys::ggml_backend_dev_name(dev))
                .to_string_lossy()
                .into_owned();
            match sys::ggml_backend_dev_type(dev) {
                sys::GGML_BACKEND_DEVICE_TYPE_GPU | sys::GGML_BACKEND_DEVICE_TYPE_IGPU => {
                    return Some((dev, name))
                }
                sys::GGML_BACKEND_DEVICE_TYPE_CPU if cpu.is_none() => cpu = Some((dev, name)),
                _ => {}
            }
        }
    }
    cpu
}

/// Runs a ggml RPC server on `endpoint` (`127.0.0.1:PORT`: never another
/// interface; peers reach it only through herd's tunnel). Blocks forever,
/// serving one client at a time; weight tensors are cached in `cache_dir`.
pub fn serve(
    _backend: &LlamaBackend,
    endpoint: &str,
    cache_dir: &Path,
    threads: u32,
) -> Result<(), RpcError> {
    let (dev, name) = worker_device().ok_or(RpcError::NoLocalDevice)?;
    tracing::info!(endpoint, device = %name, "shard worker serving");
    let endpoint = CString::new(endpoint).map_err(|_| RpcError::Nul("endpoint"))?;
    let cache = CString::new(cache_dir.as_os_str().as_encoded_bytes())
        .map_err(|_| RpcError::Nul("cache dir"))?;
    let mut devices = [dev];
    // SAFETY: the strings and the device array outlive the (blocking) call.
    unsafe {
        ggml_backend_rpc_start_server(
            endpoint.as_ptr(),
            cache.as_ptr(),
            threads as usize,
            devices.len(),
            devices.as_mut_ptr(),
        );
    }
    Err(RpcError::Register(
        "the RPC server stopped (cannot bind or accept)".into(),
    ))
}

/// Registers one RPC server as a backend and returns its (first) device.
fn add_server(endpoint: &str) -> Result<sys::ggml_backend_dev_t, RpcError> {
    let c = CString::new(endpoint).map_err(|_| RpcError::Nul("endpoint"))?;
    // SAFETY: registration copies the endpoint; the returned registry is static.
    unsafe {
        let reg = ggml_backend_rpc_add_server(c.as_ptr());
        if reg.is_null() {
            return Err(RpcError::Register(endpoint.to_string()));
        }
        sys::ggml_backend_register(reg);
        if sys::ggml_backend_reg_dev_count(reg) == 0 {
            return Err(RpcError::NoDevice(endpoint.to_string()));
        }
        let dev = sys::ggml_backend_reg_dev_get(reg, 0);
        if dev.is_null() {
            return Err(RpcError::NoDevice(endpoint.to_string()));
        }
        Ok(dev)
    }
}

/// How llama.cpp's layer assignment must be driven so that layers
/// `[0, local)` stay here and each RPC device `i` gets exactly `remote[i]`
/// layers, in order. llama.cpp offloads the last `n_gpu_layers` "layers"
/// (the output layer counts as one, after the repeating ones) and spreads
/// them over the devices by cumulative `tensor_split` fractions; the output
/// layer lands on the last device, and a buffer override then keeps its
/// weights (and so its matmul) here, so only a hidden state crosses back.
#[derive(Debug, Clone, PartialEq)]
pub struct SplitParams {
    pub n_gpu_layers: i32,
    pub tensor_split: Vec<f32>,
}

pub fn split_params(local: u32, remote: &[u32], n_layers: u32) -> Result<SplitParams, RpcError> {
    let total: u32 = local + remote.iter().sum::<u32>();
    if total != n_layers || remote.is_empty() || remote.contains(&0) {
        let mut layers = vec![local];
        layers.extend_from_slice(remote);
        return Err(RpcError::BadSplit { layers, n_layers });
    }
    let mut tensor_split: Vec<f32> = remote.iter().map(|&c| c as f32).collect();
    if let Some(last) = tensor_split.last_mut() {
        *last += 1.0; // the output layer
    }
    Ok(SplitParams {
        n_gpu_layers: i32::try_from(n_layers - local + 1).unwrap_or(i32::MAX),
        tensor_split,
    })
}

/// Which device llama.cpp gives layer `il` for these params: the same
/// arithmetic as `llama_model_base::load_tensors`, so the plan can be checked
/// before loading (the engine host also checks what llama.cpp logged).
pub fn device_of_layer(p: &SplitParams, il: u32, n_layers: u32) -> Option<usize> {
    let n_all = i64::from(n_layers);
    let start = (n_all + 1 - i64::from(p.n_gpu_layers)).max(0);
    let act = i64::from(p.n_gpu_layers).min(n_all + 1);
    let il = i64::from(il);
    if il < start || il - start >= act {
        return None;
    }
    let sum: f32 = p.tensor_split.iter().sum();
    let mut acc = 0.0f32;
    let points: Vec<f32> = p
        .tensor_split
        .iter()
        .map(|x| {
            acc += x;
            acc / sum
        })
        .collect();
    let x = (il - start) as f32 / act as f32;
    Some(points.iter().position(|&p| p > x).unwrap_or(points.len()))
}

/// Loads `path` with layers `[0, local)` here and `remote[i]` layers on the
/// RPC server `endpoints[i]` (none: the whole model here). `repack` allows
/// llama.cpp's repacked CPU weight layouts (faster Q4_0/Q4_K kernels); an RPC
/// worker cannot use them, so a split model is loaded without them on every
/// shard, which keeps its arithmetic (and greedy output) independent of
/// where the split falls.
pub fn load_raw(
    _backend: &LlamaBackend,
    path: &Path,
    mmap: bool,
    repack: bool,
    local: u32,
    endpoints: &[String],
    remote: &[u32],
) -> Result<LlamaModel, RpcError> {
    let n_layers = local + remote.iter().sum::<u32>();
    let split = if endpoints.is_empty() {
        SplitParams {
            n_gpu_layers: 0,
            tensor_split: Vec::new(),
        }
    } else {
        split_params(local, remote, n_layers)?
    };
    let mut devices = endpoints
        .iter()
        .map(|e| add_server(e))
        .collect::<Result<Vec<_>, _>>()?;
    devices.push(std::ptr::null_mut());
    let cpu_pattern = c"^output|^token_embd";
    let overrides = [
        sys::llama_model_tensor_buft_override {
            pattern: cpu_pattern.as_ptr(),
            // SAFETY: returns a static buffer type.
            buft: unsafe { sys::ggml_backend_cpu_buffer_type() },
        },
        sys::llama_model_tensor_buft_override {
            pattern: std::ptr::null(),
            buft: std::ptr::null_mut(),
        },
    ];
    let c_path = CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| RpcError::Nul("model path"))?;
    // SAFETY: every pointer in `params` (devices, overrides, split) outlives
    // the load call; llama.cpp copies what it keeps (tensor_split included).
    let raw = unsafe {
        let mut params = sys::llama_model_default_params();
        params.devices = devices.as_mut_ptr();
        params.tensor_buft_overrides = overrides.as_ptr();
        params.n_gpu_layers = split.n_gpu_layers;
        if !split.tensor_split.is_empty() {
            params.tensor_split = split.tensor_split.as_ptr();
        }
        params.use_extra_bufts = repack && endpoints.is_empty();
        params.load_mode = if mmap {
            sys::LLAMA_LOAD_MODE_MMAP
        } else {
            sys::LLAMA_LOAD_MODE_NONE
        };
        sys::llama_model_load_from_file(c_path.as_ptr(), params)
    };
    let ptr = NonNull::new(raw).ok_or_else(|| RpcError::Load(path.to_path_buf()))?;
    // SAFETY: `LlamaModel` is `#[repr(transparent)]` over a `#[repr(transparent)]`
    // `NonNull<llama_model>` and frees it with `llama_model_free` on drop, exactly
    // as if `LlamaModel::load_from_file` had loaded it.
    Ok(unsafe { std::mem::transmute::<NonNull<sys::llama_model>, LlamaModel>(ptr) })
}

/// The layer ranges per device that llama.cpp reported while loading
/// (`load_tensors: layer N assigned to device D`), in layer order.
pub fn layout_from_log(lines: &[String]) -> Vec<(String, Range<u32>)> {
    let mut out: Vec<(String, Range<u32>)> = Vec::new();
    for line in lines {
        let Some(rest) = line.split("layer").nth(1) else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let Some(il) = words.next().and_then(|w| w.parse::<u32>().ok()) else {
            continue;
        };
        let Some(device) = rest
            .split("assigned to device ")
            .nth(1)
            .and_then(|d| d.split(',').next())
        else {
            continue;
        };
        match out.last_mut() {
            Some((d, r)) if d == device && r.end == il => r.end = il + 1,
            _ => out.push((device.trim().to_string(), il..il + 1)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_params_put_each_layer_where_planned() -> Result<(), RpcError> {
        for (local, remote, n) in [
            (15u32, vec![15u32], 30u32),
            (10, vec![10, 10], 30),
            (1, vec![17], 18),
            (9, vec![5, 4], 18),
            (20, vec![1, 1, 8], 30),
        ] {
            let p = split_params(local, &remote, n)?;
            let mut want = vec![None; local as usize];
            for (d, &c) in remote.iter().enumerate() {
                want.extend(std::iter::repeat_n(Some(d), c as usize));
            }
            let got: Vec<_> = (0..n).map(|il| device_of_layer(&p, il, n)).collect();
            assert_eq!(got, want, "local {local} remote {remote:?}");
            // The output layer goes to the last device (its weights are then kept on the CPU).
            assert_eq!(device_of_layer(&p, n, n), Some(remote.len() - 1));
        }
        Ok(())
    }

    #[test]
    fn bad_splits_are_refused() {
        assert!(split_params(10, &[10], 30).is_err());
        assert!(split_params(30, &[], 30).is_err());
        assert!(split_params(29, &[0, 1], 30).is_err());
    }

    #[test]
    fn layout_is_read_from_llama_logs() {
        let lines: Vec<String> = [
            "load_tensors: layer   0 assigned to device CPU, is_swa = 0",
            "load_tensors: layer   1 assigned to device CPU, is_swa = 0",
            "load_tensors: layer   2 assigned to device RPC0[127.0.0.1:5000], is_swa = 0",
            "something else",
            "load_tensors: layer   3 assigned to device RPC0[127.0.0.1:5000], is_swa = 0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            layout_from_log(&lines),
            vec![
                ("CPU".to_string(), 0..2),
                ("RPC0[127.0.0.1:5000]".to_string(), 2..4)
            ]
        );
    }
}
