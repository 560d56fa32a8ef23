//! Encoding values the way Kong's lua-MessagePack 0.5.4 does with Kong's settings
//! (`string_compat`, `unsigned`, `double`, `without_hole`; reference/kong-protocols.md §1.4):
//! strings as fixstr/str16/str32 and never str8, non-negative integers as the smallest unsigned
//! type, other numbers as float64, byte bodies as bin. An empty Lua table goes out as an empty
//! array: callers model it as `Value::Array(vec![])`, and build `Value::Map(vec![])` only where
//! Kong forces the map type (`fix_mmap` for header and query maps).

use rmp::Marker;
use rmp::encode::{self, ValueWriteError};
use rmpv::Value;

/// Encodes `value` as Kong would.
pub fn encode(out: &mut Vec<u8>, value: &Value) {
    // Writing into a Vec cannot fail.
    let _ = write(out, value);
}

/// Encodes the request `[0, msgid, method, params]` as Kong would.
pub fn encode_request(out: &mut Vec<u8>, msgid: u64, method: &str, params: Vec<Value>) {
    encode(
        out,
        &Value::Array(vec![
            Value::from(0),
            Value::from(msgid),
            Value::from(method),
            Value::Array(params),
        ]),
    );
}

fn write(out: &mut Vec<u8>, value: &Value) -> Result<(), ValueWriteError> {
    match value {
        Value::Nil => encode::write_nil(out).map_err(ValueWriteError::InvalidMarkerWrite)?,
        Value::Boolean(b) => {
            encode::write_bool(out, *b).map_err(ValueWriteError::InvalidMarkerWrite)?
        }
        Value::Integer(i) => match (i.as_u64(), i.as_i64()) {
            (Some(u), _) => {
                encode::write_uint(out, u)?;
            }
            (None, Some(s)) => {
                encode::write_sint(out, s)?;
            }
            _ => encode::write_nil(out).map_err(ValueWriteError::InvalidMarkerWrite)?,
        },
        Value::F32(f) => write_number(out, f64::from(*f))?,
        Value::F64(f) => write_number(out, *f)?,
        Value::String(s) => write_str(out, s.as_bytes())?,
        Value::Binary(b) => encode::write_bin(out, b)?,
        Value::Array(items) => {
            encode::write_array_len(out, items.len() as u32)?;
            for item in items {
                write(out, item)?;
            }
        }
        Value::Map(entries) => {
            encode::write_map_len(out, entries.len() as u32)?;
            for (k, v) in entries {
                write(out, k)?;
                write(out, v)?;
            }
        }
        Value::Ext(ty, data) => encode::write_ext_meta(out, data.len() as u32, *ty)
            .map(|_| out.extend_from_slice(data))?,
    }
    Ok(())
}

/// lua-MessagePack `set_number'double'`: an integral Lua number goes out as an integer.
fn write_number(out: &mut Vec<u8>, f: f64) -> Result<(), ValueWriteError> {
    if f.fract() == 0.0 && f.abs() < 9.007_199_254_740_992e15 {
        let i = f as i64;
        if i >= 0 {
            encode::write_uint(out, i as u64)?;
        } else {
            encode::write_sint(out, i)?;
        }
    } else {
        encode::write_f64(out, f)?;
    }
    Ok(())
}

/// `string_compat`: fixstr, then str16, then str32; never str8.
fn write_str(out: &mut Vec<u8>, s: &[u8]) -> Result<(), ValueWriteError> {
    let len = s.len();
    if len < 32 {
        encode::write_str_len(out, len as u32)?;
    } else if len <= u16::MAX as usize {
        out.push(Marker::Str16.to_u8());
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(Marker::Str32.to_u8());
        out.extend_from_slice(&(len as u32).to_be_bytes());
    }
    out.extend_from_slice(s);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_of_32_to_255_bytes_use_str16_not_str8() {
        let mut out = Vec::new();
        encode(&mut out, &Value::from("x".repeat(40)));
        assert_eq!(out[0], 0xda, "str16 marker");
        assert_eq!(
            rmpv::decode::read_value(&mut &out[..]).unwrap(),
            Value::from("x".repeat(40))
        );
    }

    #[test]
    fn integral_floats_go_out_as_integers() {
        let mut out = Vec::new();
        encode(&mut out, &Value::F64(200.0));
        assert_eq!(
            rmpv::decode::read_value(&mut &out[..]).unwrap(),
            Value::from(200)
        );
        out.clear();
        encode(&mut out, &Value::F64(1.5));
        assert_eq!(out[0], 0xcb, "float64");
    }
}
