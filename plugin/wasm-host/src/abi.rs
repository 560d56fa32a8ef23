//! The proxy-wasm ABI 0.2.1 host functions (`env.proxy_*`), as ngx_wasm_module and Envoy
//! document them (reference/collectors-wasm.md §B.3, B.4): statuses are the SDK's (`Ok` 0,
//! `NotFound` 1, `BadArgument` 2, `Empty` 7, `CasMismatch` 8, `InternalFailure` 10), maps use the
//! ABI's serialization (count, then key/value sizes, then NUL-terminated keys and values), and
//! returned data is written into memory the module allocates with `proxy_on_memory_allocate`.
//!
//! The module's memory and allocator are the ones [`HostState`] found after instantiation
//! (looked up once, as a proxy does); keys the filter passes are compared in its memory and
//! values copied straight from the host's state into the memory it allocated.
//!
//! Kong's rule that `dispatch_http_call` works only in request headers/body, `on_tick` and
//! `on_http_call_response` is enforced for [`Flavor::Kong`](crate::Flavor): a filter that calls
//! from the response or log phase gets `InternalFailure` here, as it would fail on Kong.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use wasmtime::{Caller, Linker};

use crate::calls::CallRequest;
use crate::shared::SetResult;
use crate::vm::{Flavor, HostState, LocalResponse, Phase};

const OK: i32 = 0;
const NOT_FOUND: i32 = 1;
const BAD_ARGUMENT: i32 = 2;
const EMPTY: i32 = 7;
const CAS_MISMATCH: i32 = 8;
const INTERNAL_FAILURE: i32 = 10;

type R<T> = wasmtime::Result<T>;

fn memory(caller: &Caller<'_, HostState>) -> R<wasmtime::Memory> {
    match caller.data().memory {
        Some(m) => Ok(m),
        None => wasmtime::bail!("the module is not instantiated yet"),
    }
}

/// Memory for `len` bytes from the module's `proxy_on_memory_allocate`.
fn allocate(caller: &mut Caller<'_, HostState>, len: usize) -> R<i32> {
    let Some(f) = caller.data_mut().allocate.take() else {
        wasmtime::bail!("the module is not instantiated yet, or allocated from its allocator");
    };
    let ptr = f.call(&mut *caller, len as i32);
    caller.data_mut().allocate = Some(f);
    ptr
}

/// `len` bytes at `ptr` in the module's memory, borrowed.
fn slice(mem: &[u8], ptr: i32, len: i32) -> R<&[u8]> {
    let start = ptr as u32 as usize;
    let end = start + len as u32 as usize;
    match mem.get(start..end) {
        Some(s) => Ok(s),
        None => wasmtime::bail!("out-of-bounds read {start}..{end}"),
    }
}

fn read(caller: &mut Caller<'_, HostState>, ptr: i32, len: i32) -> R<Vec<u8>> {
    if len == 0 {
        return Ok(Vec::new());
    }
    let mem = memory(caller)?;
    Ok(slice(mem.data(&caller), ptr, len)?.to_vec())
}

fn read_str(caller: &mut Caller<'_, HostState>, ptr: i32, len: i32) -> R<String> {
    Ok(String::from_utf8_lossy(&read(caller, ptr, len)?).into_owned())
}

fn write(caller: &mut Caller<'_, HostState>, ptr: i32, bytes: &[u8]) -> R<()> {
    let mem = memory(caller)?;
    mem.write(caller, ptr as u32 as usize, bytes)?;
    Ok(())
}

fn write_u32(caller: &mut Caller<'_, HostState>, ptr: i32, v: u32) -> R<()> {
    write(caller, ptr, &v.to_le_bytes())
}

/// Copies `bytes` into module memory and writes the pointer and size to the return slots.
fn give(caller: &mut Caller<'_, HostState>, bytes: &[u8], ret_ptr: i32, ret_len: i32) -> R<()> {
    let ptr = allocate(caller, bytes.len())?;
    write(caller, ptr, bytes)?;
    write_u32(caller, ret_ptr, ptr as u32)?;
    write_u32(caller, ret_len, bytes.len() as u32)
}

/// As [`give`] for bytes the host holds in its state: `pick` is asked once for the size, the
/// module allocates, and `pick` is asked again to copy straight into the allocation — no copy
/// of the value on the way. Returns false (nothing written) when `pick` finds nothing.
fn give_from(
    caller: &mut Caller<'_, HostState>,
    ret_ptr: i32,
    ret_len: i32,
    pick: impl for<'a> Fn(&'a HostState) -> Option<&'a [u8]>,
) -> R<bool> {
    let memory = memory(caller)?;
    let Some(len) = pick(caller.data()).map(<[u8]>::len) else {
        return Ok(false);
    };
    let ptr = allocate(caller, len)?;
    {
        let (mem, state) = memory.data_and_store_mut(&mut *caller);
        let start = ptr as u32 as usize;
        // The module's allocator calls no host function: the value is the one measured.
        let (Some(bytes), Some(dst)) = (
            pick(state).filter(|b| b.len() == len),
            mem.get_mut(start..start + len),
        ) else {
            wasmtime::bail!(
                "proxy_on_memory_allocate returned {ptr} for {len} bytes, or the value changed"
            );
        };
        dst.copy_from_slice(bytes);
    }
    write_u32(caller, ret_ptr, ptr as u32)?;
    write_u32(caller, ret_len, len as u32)?;
    Ok(true)
}

/// As [`give_from`] for a value found by a key in the module's memory (a header name, a
/// property path): the key is read where it is, not copied out, on both asks (the module's
/// allocator gives out other memory, so the key is still there after it ran).
fn give_keyed(
    caller: &mut Caller<'_, HostState>,
    key_ptr: i32,
    key_len: i32,
    ret_ptr: i32,
    ret_len: i32,
    pick: impl for<'k, 'a> Fn(&'k [u8], &'a HostState) -> Option<&'a [u8]>,
) -> R<bool> {
    let memory = memory(caller)?;
    let ks = key_ptr as u32 as usize;
    let ke = ks + key_len as u32 as usize;
    let len = {
        let (mem, state) = memory.data_and_store_mut(&mut *caller);
        let Some(key) = mem.get(ks..ke) else {
            wasmtime::bail!("out-of-bounds read {ks}..{ke}");
        };
        match pick(key, state) {
            Some(v) => v.len(),
            None => return Ok(false),
        }
    };
    let ptr = allocate(caller, len)?;
    {
        let (mem, state) = memory.data_and_store_mut(&mut *caller);
        let value = mem
            .get(ks..ke)
            .and_then(|key| pick(key, state))
            .filter(|v| v.len() == len);
        let start = ptr as u32 as usize;
        let (Some(value), Some(dst)) = (value, mem.get_mut(start..start + len)) else {
            wasmtime::bail!(
                "proxy_on_memory_allocate returned {ptr} for {len} bytes, or the value changed"
            );
        };
        dst.copy_from_slice(value);
    }
    write_u32(caller, ret_ptr, ptr as u32)?;
    write_u32(caller, ret_len, len as u32)?;
    Ok(true)
}

/// A header map in the ABI's serialization.
pub fn serialize_map(map: &[(String, String)]) -> Vec<u8> {
    let mut out = vec![0; serialized_len(map)];
    serialize_map_into(map, &mut out);
    out
}

/// The size of `map` in the ABI's serialization: the count, two lengths per pair, and each
/// name and value followed by a NUL.
fn serialized_len(map: &[(String, String)]) -> usize {
    4 + map
        .iter()
        .map(|(k, v)| 8 + k.len() + v.len() + 2)
        .sum::<usize>()
}

/// Writes `map` in the ABI's serialization into `out`, exactly [`serialized_len`] bytes long
/// (the module's allocation: as ngx_wasm_module fills the memory it got, no copy on the way).
fn serialize_map_into(map: &[(String, String)], out: &mut [u8]) {
    let mut put = |at: usize, bytes: &[u8]| {
        out[at..at + bytes.len()].copy_from_slice(bytes);
        at + bytes.len()
    };
    let mut at = put(0, &(map.len() as u32).to_le_bytes());
    for (k, v) in map {
        at = put(at, &(k.len() as u32).to_le_bytes());
        at = put(at, &(v.len() as u32).to_le_bytes());
    }
    for (k, v) in map {
        at = put(at, k.as_bytes());
        at = put(at, &[0]);
        at = put(at, v.as_bytes());
        at = put(at, &[0]);
    }
}

/// Reads the ABI's map serialization.
pub fn deserialize_map(bytes: &[u8]) -> R<Vec<(String, String)>> {
    let u32_at = |at: usize| -> R<usize> {
        match bytes.get(at..at + 4) {
            Some(b) => Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize),
            None => wasmtime::bail!("truncated header map"),
        }
    };
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let n = u32_at(0)?;
    let mut p = 4 + n * 8;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let kl = u32_at(4 + i * 8)?;
        let vl = u32_at(8 + i * 8)?;
        let (Some(k), Some(v)) = (bytes.get(p..p + kl), bytes.get(p + kl + 1..p + kl + 1 + vl))
        else {
            wasmtime::bail!("truncated header map");
        };
        out.push((
            String::from_utf8_lossy(k).into_owned(),
            String::from_utf8_lossy(v).into_owned(),
        ));
        p += kl + 1 + vl + 1;
    }
    Ok(out)
}

fn map_mut(state: &mut HostState, map_type: i32) -> Option<&mut Vec<(String, String)>> {
    match map_type {
        0 => Some(&mut state.stream.request_headers),
        2 => Some(&mut state.stream.response_headers),
        6 => state.call_response.as_mut().map(|(h, _)| h),
        _ => None,
    }
}

fn map(state: &HostState, map_type: i32) -> Option<&Vec<(String, String)>> {
    match map_type {
        0 => Some(&state.stream.request_headers),
        2 => Some(&state.stream.response_headers),
        6 => state.call_response.as_ref().map(|(h, _)| h),
        _ => None,
    }
}

fn buffer(state: &HostState, buffer_type: i32) -> Option<&[u8]> {
    match buffer_type {
        0 => Some(&state.stream.request_body),
        1 => Some(&state.stream.response_body),
        4 => state.call_response.as_ref().map(|(_, b)| b.as_slice()),
        6 => Some(&state.vm_config),
        7 => Some(&state.plugin_config),
        _ => None,
    }
}

/// Adds every `env.proxy_*` function to `linker`.
pub fn add_to_linker(linker: &mut Linker<HostState>) -> R<()> {
    linker.func_wrap(
        "env",
        "proxy_log",
        |mut c: Caller<'_, HostState>, level: i32, ptr: i32, len: i32| -> R<i32> {
            let msg = read_str(&mut c, ptr, len)?;
            if std::env::var_os("TOLLGATE_WASM_HOST_LOG").is_some() {
                eprintln!("[wasm {level}] {msg}");
            }
            c.data_mut().logs.push((level as u32, msg));
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_log_level",
        |_c: Caller<'_, HostState>, _ret: i32| -> i32 { INTERNAL_FAILURE },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_current_time_nanoseconds",
        |mut c: Caller<'_, HostState>, ret: i32| -> R<i32> {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos() as u64;
            write(&mut c, ret, &now.to_le_bytes())?;
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_tick_period_milliseconds",
        |mut c: Caller<'_, HostState>, period: i32| -> i32 {
            c.data_mut().tick_period_ms = period as u32;
            OK
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_buffer_bytes",
        |mut c: Caller<'_, HostState>,
         ty: i32,
         start: i32,
         max: i32,
         ret_ptr: i32,
         ret_len: i32|
         -> R<i32> {
            let found = give_from(&mut c, ret_ptr, ret_len, |s| {
                let buf = buffer(s, ty)?;
                let start = (start as u32 as usize).min(buf.len());
                let end = start.saturating_add(max as u32 as usize).min(buf.len());
                Some(&buf[start..end])
            })?;
            Ok(if found { OK } else { NOT_FOUND })
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_buffer_bytes",
        |mut c: Caller<'_, HostState>,
         ty: i32,
         start: i32,
         size: i32,
         ptr: i32,
         len: i32|
         -> R<i32> {
            let data = read(&mut c, ptr, len)?;
            let s = c.data_mut();
            let buf = match ty {
                0 => &mut s.stream.request_body,
                1 => &mut s.stream.response_body,
                _ => return Ok(NOT_FOUND),
            };
            let start = (start as u32 as usize).min(buf.len());
            let end = start.saturating_add(size as u32 as usize).min(buf.len());
            buf.splice(start..end, data);
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_header_map_pairs",
        |mut c: Caller<'_, HostState>, ty: i32, ret_ptr: i32, ret_len: i32| -> R<i32> {
            let Some(len) = map(c.data(), ty).map(|m| serialized_len(m)) else {
                return Ok(NOT_FOUND);
            };
            let memory = memory(&c)?;
            let ptr = allocate(&mut c, len)?;
            {
                let (mem, state) = memory.data_and_store_mut(&mut c);
                let start = ptr as u32 as usize;
                // The module's allocator calls no host function: the map is the one measured.
                let (Some(map), Some(dst)) = (
                    map(state, ty).filter(|m| serialized_len(m) == len),
                    mem.get_mut(start..start + len),
                ) else {
                    wasmtime::bail!(
                        "proxy_on_memory_allocate returned {ptr} for {len} bytes, or the map changed"
                    );
                };
                serialize_map_into(map, dst);
            }
            write_u32(&mut c, ret_ptr, ptr as u32)?;
            write_u32(&mut c, ret_len, len as u32)?;
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_header_map_pairs",
        |mut c: Caller<'_, HostState>, ty: i32, ptr: i32, len: i32| -> R<i32> {
            let pairs = deserialize_map(&read(&mut c, ptr, len)?)?;
            let Some(map) = map_mut(c.data_mut(), ty) else {
                return Ok(NOT_FOUND);
            };
            *map = pairs;
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_header_map_value",
        |mut c: Caller<'_, HostState>,
         ty: i32,
         kp: i32,
         kl: i32,
         ret_ptr: i32,
         ret_len: i32|
         -> R<i32> {
            let found = give_keyed(&mut c, kp, kl, ret_ptr, ret_len, |key, s| match ty {
                // A failed call's only "header" (ngx_wasm_module's pseudo-header).
                6 if key == b":dispatch_status" => s.call_failure.as_deref().map(str::as_bytes),
                _ => map(s, ty)?
                    .iter()
                    .find(|(k, _)| k.as_bytes().eq_ignore_ascii_case(key))
                    .map(|(_, v)| v.as_bytes()),
            })?;
            Ok(if found { OK } else { NOT_FOUND })
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_remove_header_map_value",
        |mut c: Caller<'_, HostState>, ty: i32, kp: i32, kl: i32| -> R<i32> {
            let key = read_str(&mut c, kp, kl)?;
            if let Some(m) = map_mut(c.data_mut(), ty) {
                m.retain(|(k, _)| !k.eq_ignore_ascii_case(&key));
            }
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_replace_header_map_value",
        |mut c: Caller<'_, HostState>, ty: i32, kp: i32, kl: i32, vp: i32, vl: i32| -> R<i32> {
            let key = read_str(&mut c, kp, kl)?;
            let value = read_str(&mut c, vp, vl)?;
            let Some(m) = map_mut(c.data_mut(), ty) else {
                return Ok(NOT_FOUND);
            };
            m.retain(|(k, _)| !k.eq_ignore_ascii_case(&key));
            m.push((key, value));
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_add_header_map_value",
        |mut c: Caller<'_, HostState>, ty: i32, kp: i32, kl: i32, vp: i32, vl: i32| -> R<i32> {
            let key = read_str(&mut c, kp, kl)?;
            let value = read_str(&mut c, vp, vl)?;
            let Some(m) = map_mut(c.data_mut(), ty) else {
                return Ok(NOT_FOUND);
            };
            m.push((key, value));
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_property",
        |mut c: Caller<'_, HostState>, pp: i32, pl: i32, ret_ptr: i32, ret_len: i32| -> R<i32> {
            let found = give_keyed(&mut c, pp, pl, ret_ptr, ret_len, |path, s| {
                s.stream.property(path)
            })?;
            Ok(if found { OK } else { NOT_FOUND })
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_property",
        |mut c: Caller<'_, HostState>, pp: i32, pl: i32, vp: i32, vl: i32| -> R<i32> {
            let key = String::from_utf8_lossy(&read(&mut c, pp, pl)?).replace('\0', ".");
            let value = read(&mut c, vp, vl)?;
            let set = &mut c.data_mut().stream.set_properties;
            match set.iter_mut().find(|(k, _)| *k == key) {
                Some((_, v)) => *v = value,
                None => set.push((key, value)),
            }
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_shared_data",
        |mut c: Caller<'_, HostState>,
         kp: i32,
         kl: i32,
         ret_ptr: i32,
         ret_len: i32,
         ret_cas: i32|
         -> R<i32> {
            let key = read_str(&mut c, kp, kl)?;
            match c.data().shared.get(&key) {
                Some((value, cas)) => {
                    give(&mut c, &value, ret_ptr, ret_len)?;
                    write_u32(&mut c, ret_cas, cas)?;
                    Ok(OK)
                }
                None => Ok(NOT_FOUND),
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_shared_data",
        |mut c: Caller<'_, HostState>, kp: i32, kl: i32, vp: i32, vl: i32, cas: i32| -> R<i32> {
            let key = read_str(&mut c, kp, kl)?;
            let value = read(&mut c, vp, vl)?;
            Ok(match c.data().shared.set(&key, value, cas as u32) {
                SetResult::Ok => OK,
                SetResult::CasMismatch => CAS_MISMATCH,
            })
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_register_shared_queue",
        |mut c: Caller<'_, HostState>, np: i32, nl: i32, ret_id: i32| -> R<i32> {
            let name = read_str(&mut c, np, nl)?;
            let id = c.data().shared.register_queue(&name);
            write_u32(&mut c, ret_id, id)?;
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_resolve_shared_queue",
        |mut c: Caller<'_, HostState>,
         _vp: i32,
         _vl: i32,
         np: i32,
         nl: i32,
         ret_id: i32|
         -> R<i32> {
            let name = read_str(&mut c, np, nl)?;
            match c.data().shared.resolve_queue(&name) {
                Some(id) => {
                    write_u32(&mut c, ret_id, id)?;
                    Ok(OK)
                }
                None => Ok(NOT_FOUND),
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_dequeue_shared_queue",
        |mut c: Caller<'_, HostState>, id: i32, ret_ptr: i32, ret_len: i32| -> R<i32> {
            match c.data().shared.dequeue(id as u32) {
                Ok(Some(v)) => {
                    give(&mut c, &v, ret_ptr, ret_len)?;
                    Ok(OK)
                }
                Ok(None) => Ok(EMPTY),
                Err(()) => Ok(NOT_FOUND),
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_enqueue_shared_queue",
        |mut c: Caller<'_, HostState>, id: i32, vp: i32, vl: i32| -> R<i32> {
            let value = read(&mut c, vp, vl)?;
            Ok(if c.data().shared.enqueue(id as u32, value) {
                OK
            } else {
                NOT_FOUND
            })
        },
    )?;
    for name in ["proxy_continue_stream", "proxy_close_stream"] {
        linker.func_wrap(
            name_env(),
            name,
            |_c: Caller<'_, HostState>, _t: i32| -> i32 { OK },
        )?;
    }
    linker.func_wrap(
        "env",
        "proxy_send_local_response",
        |mut c: Caller<'_, HostState>,
         status: i32,
         _dp: i32,
         _dl: i32,
         bp: i32,
         bl: i32,
         hp: i32,
         hl: i32,
         _grpc: i32|
         -> R<i32> {
            let body = read(&mut c, bp, bl)?;
            let headers = deserialize_map(&read(&mut c, hp, hl)?)?;
            c.data_mut().stream.local_response = Some(LocalResponse {
                status: status as u16,
                headers,
                body,
            });
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_http_call",
        |mut c: Caller<'_, HostState>,
         up: i32,
         ul: i32,
         hp: i32,
         hl: i32,
         bp: i32,
         bl: i32,
         _tp: i32,
         _tl: i32,
         timeout: i32,
         ret_token: i32|
         -> R<i32> {
            let upstream = read_str(&mut c, up, ul)?;
            let headers = deserialize_map(&read(&mut c, hp, hl)?)?;
            let body = read(&mut c, bp, bl)?;
            let s = c.data_mut();
            if s.flavor == Flavor::Kong
                && !matches!(
                    s.phase,
                    Phase::RequestHeaders | Phase::RequestBody | Phase::Tick | Phase::CallResponse
                )
            {
                s.refused_calls += 1;
                return Ok(INTERNAL_FAILURE);
            }
            let has = |n: &str| headers.iter().any(|(k, _)| k == n);
            if !has(":method") || !has(":path") || upstream.is_empty() {
                return Ok(BAD_ARGUMENT);
            }
            s.next_token += 1;
            let token = s.next_token;
            s.new_calls.push((
                token,
                CallRequest {
                    upstream,
                    headers,
                    body,
                    timeout: Duration::from_millis(timeout as u32 as u64),
                },
            ));
            write_u32(&mut c, ret_token, token)?;
            Ok(OK)
        },
    )?;
    // gRPC calls: not supported by ngx_wasm_module (and unused by the filter).
    linker.func_wrap(
        "env",
        "proxy_grpc_call",
        |_c: Caller<'_, HostState>,
         _a: i32,
         _b: i32,
         _d: i32,
         _e: i32,
         _f: i32,
         _g: i32,
         _h: i32,
         _i: i32,
         _j: i32,
         _k: i32,
         _l: i32,
         _m: i32|
         -> i32 { INTERNAL_FAILURE },
    )?;
    linker.func_wrap(
        "env",
        "proxy_grpc_stream",
        |_c: Caller<'_, HostState>,
         _a: i32,
         _b: i32,
         _d: i32,
         _e: i32,
         _f: i32,
         _g: i32,
         _h: i32,
         _i: i32,
         _j: i32|
         -> i32 { INTERNAL_FAILURE },
    )?;
    linker.func_wrap(
        "env",
        "proxy_grpc_send",
        |_c: Caller<'_, HostState>, _a: i32, _b: i32, _d: i32, _e: i32| -> i32 { INTERNAL_FAILURE },
    )?;
    for name in ["proxy_grpc_cancel", "proxy_grpc_close"] {
        linker.func_wrap(
            name_env(),
            name,
            |_c: Caller<'_, HostState>, _t: i32| -> i32 { INTERNAL_FAILURE },
        )?;
    }
    linker.func_wrap(
        "env",
        "proxy_get_status",
        |_c: Caller<'_, HostState>, _a: i32, _b: i32, _d: i32| -> i32 { INTERNAL_FAILURE },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_effective_context",
        |_c: Caller<'_, HostState>, _ctx: i32| -> i32 { OK },
    )?;
    linker.func_wrap(
        "env",
        "proxy_call_foreign_function",
        |_c: Caller<'_, HostState>, _a: i32, _b: i32, _d: i32, _e: i32, _f: i32, _g: i32| -> i32 {
            NOT_FOUND
        },
    )?;
    linker.func_wrap("env", "proxy_done", |_c: Caller<'_, HostState>| -> i32 {
        INTERNAL_FAILURE
    })?;
    linker.func_wrap(
        "env",
        "proxy_define_metric",
        |mut c: Caller<'_, HostState>, _ty: i32, np: i32, nl: i32, ret_id: i32| -> R<i32> {
            let name = read_str(&mut c, np, nl)?;
            let metrics = &mut c.data_mut().metrics;
            let id = match metrics.iter().position(|(n, _)| *n == name) {
                Some(i) => i + 1,
                None => {
                    metrics.push((name, 0));
                    metrics.len()
                }
            };
            write_u32(&mut c, ret_id, id as u32)?;
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_increment_metric",
        |mut c: Caller<'_, HostState>, id: i32, offset: i64| -> i32 {
            match c.data_mut().metrics.get_mut((id as usize).wrapping_sub(1)) {
                Some((_, v)) => {
                    *v += offset;
                    OK
                }
                None => NOT_FOUND,
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_record_metric",
        |mut c: Caller<'_, HostState>, id: i32, value: i64| -> i32 {
            match c.data_mut().metrics.get_mut((id as usize).wrapping_sub(1)) {
                Some((_, v)) => {
                    *v = value;
                    OK
                }
                None => NOT_FOUND,
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_metric",
        |mut c: Caller<'_, HostState>, id: i32, ret: i32| -> R<i32> {
            let value = c
                .data()
                .metrics
                .get((id as usize).wrapping_sub(1))
                .map(|(_, v)| *v);
            match value {
                Some(v) => {
                    write(&mut c, ret, &(v as u64).to_le_bytes())?;
                    Ok(OK)
                }
                None => Ok(NOT_FOUND),
            }
        },
    )?;
    Ok(())
}

fn name_env() -> &'static str {
    "env"
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn maps_round_trip() {
        let m = vec![
            (":status".to_owned(), "200".to_owned()),
            ("x".to_owned(), String::new()),
        ];
        assert_eq!(deserialize_map(&serialize_map(&m)).unwrap(), m);
        assert!(deserialize_map(&[1, 0, 0, 0]).is_err());
    }
}
