#![no_main]
//! The classify step never panics and never claims more than it saw.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let head = &data[..data.len().min(64 << 10)];
    if let Ok(c) = classify::classify(head, data.len() as u64) {
        assert!(!c.detail.contains('\n'));
        assert!(c.detail.len() < 1024);
    }
    if let Err(e) = classify::classify(head, u64::MAX) {
        assert!(!e.contains('\n'));
    }
});
