//! Whether an engine host reads the weights into memory or maps the file.
//! Reading is faster to decode from (huge pages) but needs the whole model in
//! RAM up front; a model that does not fit in what the kernel reports as
//! available is mapped instead, so it still loads (and pages) rather than
//! being killed by the OOM killer in a restart loop.

use std::path::Path;

/// Headroom kept free beyond the weights for the KV cache, buffers and the rest of the system.
const HEADROOM_PERCENT: u64 = 10;

/// The load mode for this start: mapped when asked, or when the file plus
/// headroom exceeds the available memory (unknown available memory: as asked).
pub fn map_weights(requested_mmap: bool, model_bytes: u64, available: Option<u64>) -> bool {
    if requested_mmap {
        return true;
    }
    match available {
        Some(avail) => model_bytes.saturating_add(model_bytes / 100 * HEADROOM_PERCENT) > avail,
        None => false,
    }
}

/// Decides for a model file now, logging when it overrides `mmap = false`.
pub fn decide(requested_mmap: bool, model: &Path) -> bool {
    let bytes = std::fs::metadata(model).map_or(0, |m| m.len());
    let available = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| mem_available(&text));
    let mapped = map_weights(requested_mmap, bytes, available);
    if mapped && !requested_mmap {
        tracing::warn!(
            model = %model.display(),
            model_mib = bytes >> 20,
            available_mib = available.unwrap_or(0) >> 20,
            "the model does not fit in available memory; mapping the file instead of reading it (slower decode)"
        );
    }
    mapped
}

/// GLIBC_TUNABLES for an engine host that reads its weights: the caller's
/// tunables with `glibc.malloc.hugetlb=1` added (an explicit choice is kept),
/// so malloc asks for transparent huge pages for the weight buffer.
pub fn with_huge_pages(existing: Option<&str>) -> String {
    const HUGE: &str = "glibc.malloc.hugetlb=1";
    match existing {
        Some(t) if t.split(':').any(|x| x.starts_with("glibc.malloc.hugetlb=")) => t.to_string(),
        Some(t) if !t.is_empty() => format!("{t}:{HUGE}"),
        _ => HUGE.to_string(),
    }
}

/// `MemAvailable` from /proc/meminfo, in bytes.
fn mem_available(meminfo: &str) -> Option<u64> {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|kib| kib.trim().parse::<u64>().ok())
        .map(|kib| kib.saturating_mul(1024))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn a_model_that_fits_is_read_into_memory() {
        assert!(!map_weights(false, 98 << 20, Some(20 * GIB)));
        assert!(!map_weights(false, 10 * GIB, Some(12 * GIB)));
    }

    #[test]
    fn a_model_without_room_to_spare_is_mapped() {
        assert!(map_weights(false, 20 * GIB, Some(16 * GIB)));
        // 10 GiB + 10 % headroom does not fit in 10.5 GiB.
        assert!(map_weights(false, 10 * GIB, Some(10 * GIB + GIB / 2)));
    }

    #[test]
    fn asking_for_mmap_always_maps_and_unknown_memory_keeps_the_choice() {
        assert!(map_weights(true, 1, Some(100 * GIB)));
        assert!(!map_weights(false, 500 * GIB, None));
    }

    #[test]
    fn huge_pages_join_the_callers_tunables() {
        assert_eq!(with_huge_pages(None), "glibc.malloc.hugetlb=1");
        assert_eq!(with_huge_pages(Some("")), "glibc.malloc.hugetlb=1");
        assert_eq!(
            with_huge_pages(Some("glibc.malloc.arena_max=2")),
            "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
        );
        assert_eq!(
            with_huge_pages(Some("glibc.malloc.hugetlb=0")),
            "glibc.malloc.hugetlb=0"
        );
    }

    #[test]
    fn reads_mem_available_from_meminfo() {
        let text =
            "MemTotal:       24641300 kB\nMemFree:         1000 kB\nMemAvailable:   20000000 kB\n";
        assert_eq!(mem_available(text), Some(20_000_000 * 1024));
        assert_eq!(mem_available("MemTotal: 1 kB\n"), None);
    }
}
