//! Prefetch hints for the tick path. At thousands of symbols ticking in turn, each
//! tick's series (its state, subject, JSON prefix, open bar, alert bucket) is cold in
//! cache, and waiting for it was a good part of a tick's time (perf: ~10 % of the sim's
//! process on copying the cold prefix alone). The sim and a replay batch know which
//! series come next, so the engine asks for their memory a few ticks ahead.

/// Prefetches the cache lines of `len` bytes at `start`: a hint, it reads nothing the
/// program sees and cannot fault (and does nothing elsewhere than on x86-64).
pub fn bytes(start: *const u8, len: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let mut offset = 0;
        while offset < len {
            // SAFETY: PREFETCHT0 never dereferences architecturally (no fault, no read the
            // program can observe) whatever the address, and wrapping_add keeps the
            // pointer arithmetic itself defined.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(start.wrapping_add(offset).cast()) };
            offset += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (start, len);
}

/// Prefetches `value` itself (not what it points to).
pub fn value<T>(value: &T) {
    bytes(std::ptr::from_ref(value).cast(), size_of::<T>());
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_hint_for_any_address_never_faults() {
        super::bytes(std::ptr::null(), 4096);
        super::bytes(std::ptr::without_provenance(usize::MAX - 10), 256);
        super::value(&[0u64; 100]);
    }
}
