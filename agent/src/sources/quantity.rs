//! Kubernetes resource quantities (`250m`, `1.5`, `64Mi`, `1e3`, `2G`) as exact integers in the
//! unit a meter wants (millicores, bytes, GPUs), rounded up as Kubernetes rounds. The
//! `k8s-openapi` `Quantity` is only the string; the grammar is the API server's
//! (`resource.Quantity`): a signed decimal number, then a binary-SI suffix (`Ki`…`Ei`), a
//! decimal-SI suffix (`n u m k M G T P E`) or a decimal exponent (`e3`, `E-2`).

/// `text` × 10^`scale`, rounded up to an integer: `scale` 3 gives millicores from a CPU
/// quantity, 0 gives bytes or a count. `Err` names what does not parse.
pub fn scaled(text: &str, scale: i32) -> Result<i128, String> {
    let t = text.trim();
    let bad = || format!("{text:?} is not a Kubernetes quantity");
    let end = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(t.len());
    let (number, suffix) = t.split_at(end);
    let (negative, number) = match number.strip_prefix('-') {
        Some(n) => (true, n),
        None => (false, number.strip_prefix('+').unwrap_or(number)),
    };
    let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && frac.is_empty()
        || !whole
            .chars()
            .chain(frac.chars())
            .all(|c| c.is_ascii_digit())
    {
        return Err(bad());
    }
    let mut mantissa: i128 = 0;
    for c in whole.chars().chain(frac.chars()) {
        mantissa = mantissa
            .checked_mul(10)
            .and_then(|m| m.checked_add(i128::from(c as u8 - b'0')))
            .ok_or_else(bad)?;
    }
    let mut exp10 = scale - frac.len() as i32;
    let mut pow1024 = 0u32;
    match suffix {
        "" => {}
        "Ki" => pow1024 = 1,
        "Mi" => pow1024 = 2,
        "Gi" => pow1024 = 3,
        "Ti" => pow1024 = 4,
        "Pi" => pow1024 = 5,
        "Ei" => pow1024 = 6,
        "n" => exp10 -= 9,
        "u" => exp10 -= 6,
        "m" => exp10 -= 3,
        "k" => exp10 += 3,
        "M" => exp10 += 6,
        "G" => exp10 += 9,
        "T" => exp10 += 12,
        "P" => exp10 += 15,
        "E" => exp10 += 18,
        s if s.starts_with(['e', 'E']) => {
            exp10 += s[1..].parse::<i32>().map_err(|_| bad())?;
        }
        _ => return Err(bad()),
    }
    let mut v = mantissa
        .checked_mul(1024i128.checked_pow(pow1024).ok_or_else(bad)?)
        .ok_or_else(bad)?;
    if exp10 >= 0 {
        v = v
            .checked_mul(10i128.checked_pow(exp10 as u32).ok_or_else(bad)?)
            .ok_or_else(bad)?;
    } else {
        let d = 10i128.checked_pow((-exp10) as u32).unwrap_or(i128::MAX);
        v = v / d + i128::from(v % d != 0);
    }
    Ok(if negative { -v } else { v })
}

#[cfg(test)]
mod tests {
    use super::scaled;

    #[test]
    fn cpu_in_millicores_and_memory_in_bytes() {
        assert_eq!(scaled("250m", 3), Ok(250));
        assert_eq!(scaled("1.5", 3), Ok(1500));
        assert_eq!(scaled("2", 3), Ok(2000));
        assert_eq!(scaled("100u", 3), Ok(1)); // rounded up, as Kubernetes does
        assert_eq!(scaled("64Mi", 0), Ok(67_108_864));
        assert_eq!(scaled("1G", 0), Ok(1_000_000_000));
        assert_eq!(scaled("1e3", 0), Ok(1000));
        assert_eq!(scaled("1.5Gi", 0), Ok(1_610_612_736));
        assert!(scaled("lots", 0).unwrap_err().contains("lots"));
        assert!(scaled("1Xi", 0).is_err());
        assert!(scaled("", 0).is_err());
    }
}
