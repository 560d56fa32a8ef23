//! Two proxy-wasm host calls the filter makes on every request, made as the SDK makes them
//! (`proxy_wasm::hostcalls::get_property` / `get_map`) but without its per-call allocations:
//! a property's path is a constant already in the ABI's form (segments joined by NUL), not a
//! `Vec<&str>` serialized again on each call, and a header map stays the one buffer
//! the host filled, read in place by `request::header_pairs`, instead of two `String`s per header.
//!
//! Why `unsafe`: the imports are declared here exactly as the SDK declares them, and the
//! buffers the host returns were allocated by this module's `proxy_on_memory_allocate` (the
//! SDK's: a boxed `[u8]` of exactly the requested size), so they are taken back with
//! `Vec::from_raw_parts(ptr, size, size)` — what the SDK does with the same buffers.

#![allow(unsafe_code)]

use std::ptr::null_mut;

use proxy_wasm::types::{MapType, Status};

#[link(wasm_import_module = "env")]
unsafe extern "C" {
    fn proxy_get_property(
        path_data: *const u8,
        path_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> Status;
    fn proxy_get_header_map_pairs(
        map_type: MapType,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> Status;
}

/// Takes back a buffer the host wrote into memory from `proxy_on_memory_allocate`.
fn owned(data: *mut u8, size: usize) -> Option<Vec<u8>> {
    if data.is_null() {
        return None;
    }
    // SAFETY: `data` is the allocation of `size` bytes the host got from this module's
    // `proxy_on_memory_allocate` and filled; nothing else owns it (see the module comment).
    Some(unsafe { Vec::from_raw_parts(data, size, size) })
}

/// The property at `path`, its segments joined by NUL (`b"kong\0route_id"`); `None` when the
/// host has none (or answers anything but `Ok`).
pub fn property(path: &[u8]) -> Option<Vec<u8>> {
    let (mut data, mut size) = (null_mut(), 0usize);
    // SAFETY: the path is a live slice; the return slots are valid locals.
    let status = unsafe { proxy_get_property(path.as_ptr(), path.len(), &mut data, &mut size) };
    if status != Status::Ok {
        return None;
    }
    owned(data, size)
}

/// A header map of the stream (request or response headers) in the ABI's serialization (read
/// with `request::header_pairs`); empty when the host has none.
pub fn header_map(map_type: MapType) -> Vec<u8> {
    let (mut data, mut size) = (null_mut(), 0usize);
    // SAFETY: the return slots are valid locals.
    let status = unsafe { proxy_get_header_map_pairs(map_type, &mut data, &mut size) };
    if status != Status::Ok {
        return Vec::new();
    }
    owned(data, size).unwrap_or_default()
}
