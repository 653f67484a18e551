//! The system allocator, counting per thread the bytes allocated and not yet freed and the
//! allocations made (reallocations included). A test binary installs it with
//! `#[global_allocator] static GLOBAL: Counting = Counting;`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

pub struct Counting;

fn count(bytes: isize, calls: usize) {
    let _ = LIVE.try_with(|l| l.set(l.get() + bytes));
    let _ = ALLOCATIONS.try_with(|a| a.set(a.get() + calls));
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size() as isize, 1);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(-(layout.size() as isize), 0);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new: usize) -> *mut u8 {
        count(new as isize - layout.size() as isize, 1);
        unsafe { System.realloc(ptr, layout, new) }
    }
}

/// Bytes this thread allocated and has not freed.
pub fn live() -> isize {
    LIVE.with(Cell::get)
}

/// Allocations this thread made.
pub fn allocations() -> usize {
    ALLOCATIONS.with(Cell::get)
}
