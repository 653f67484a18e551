//! The global allocator: mimalloc (the allocator took ~23 % of ten's instructions per request under
//! glibc malloc; BENCHMARKS.md, callgrind), called directly for the layouts every mimalloc block
//! already satisfies.
//!
//! The `mimalloc` crate's allocator passes every allocation through `mi_malloc_aligned`, whose
//! checks (power of two, small size, the free block's alignment) cost a few instructions per
//! call, ~65 calls per proxied request. Every block mimalloc hands out is aligned to a machine
//! word: its size classes are whole words (`mi_bin`, without `MI_ALIGN2W`/`MI_ALIGN4W`, which the
//! `libmimalloc-sys` build does not set) carved from word-aligned pages. So a layout aligned to at
//! most a word (most of them) goes straight to `mi_malloc`/`mi_zalloc`/`mi_realloc`, as Rust's own
//! `System` allocator does with `malloc` below its minimum alignment; larger alignments keep
//! mimalloc's aligned calls.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// The alignment of every block mimalloc returns.
const WORD: usize = std::mem::size_of::<usize>();

/// mimalloc, with word-aligned layouts allocated without the aligned-allocation path.
pub struct Mimalloc;

// SAFETY: every method forwards to mimalloc, which meets `GlobalAlloc`'s contract: a block from
// `mi_malloc`/`mi_zalloc`/`mi_realloc` is aligned to `WORD` (see the module docs) and is used only
// for layouts whose alignment is at most `WORD`; other layouts use mimalloc's aligned calls with
// the layout's alignment; `mi_free` frees a block from any of them.
unsafe impl GlobalAlloc for Mimalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: see the impl.
        unsafe {
            if layout.align() <= WORD {
                mi::mi_malloc(layout.size()).cast()
            } else {
                mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: see the impl.
        unsafe {
            if layout.align() <= WORD {
                mi::mi_zalloc(layout.size()).cast()
            } else {
                mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from this allocator (the caller's contract).
        unsafe { mi::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: see the impl; `ptr` came from this allocator with `layout`.
        unsafe {
            if layout.align() <= WORD {
                mi::mi_realloc(ptr.cast::<c_void>(), new_size).cast()
            } else {
                mi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Every size up to a few pages, at every alignment up to a page, comes back aligned, and
    /// stays aligned (and keeps its bytes) through a realloc.
    #[test]
    fn blocks_are_aligned_as_asked_through_alloc_zeroed_and_realloc() {
        let a = Mimalloc;
        let sizes = (1..=256).chain((257..=20_000).step_by(37));
        for size in sizes {
            for shift in 0..=12 {
                let align = 1usize << shift;
                let layout = Layout::from_size_align(size, align).unwrap();
                unsafe {
                    let p = a.alloc(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "alloc size {size} align {align}");
                    p.write_bytes(0xA5, size);
                    let q = a.realloc(p, layout, size * 2 + 1);
                    assert_eq!(q as usize % align, 0, "realloc size {size} align {align}");
                    assert!(
                        (0..size).all(|i| *q.add(i) == 0xA5),
                        "realloc kept the bytes"
                    );
                    a.dealloc(q, Layout::from_size_align(size * 2 + 1, align).unwrap());
                    let z = a.alloc_zeroed(layout);
                    assert_eq!(
                        z as usize % align,
                        0,
                        "alloc_zeroed size {size} align {align}"
                    );
                    assert!((0..size).all(|i| *z.add(i) == 0), "alloc_zeroed is zeroed");
                    a.dealloc(z, layout);
                }
            }
        }
    }
}
