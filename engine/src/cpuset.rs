//! Core selection as SPDK spells it: a hex mask (`-m 0x3`), an SPDK list (`-m [0,1]`), or
//! tidepool's `--cores 0,1` / `--cores 0-3`. Every core must exist on this host.

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CpuSetError {
    #[error("core mask '{0}' is not a hex mask like 0x3 or a list like [0,1]")]
    BadMask(String),
    #[error("core list '{0}' is not a list like 0,1 or 0-3")]
    BadList(String),
    #[error("no cores selected")]
    Empty,
    #[error("core {core} does not exist (this host has cores 0 to {last})")]
    NoSuchCore { core: usize, last: usize },
    #[error("core {0} is listed twice")]
    Duplicate(usize),
    #[error("core {0} is past the highest core number tidepool takes ({MAX_CORE})")]
    TooHigh(usize),
}

/// The highest core number a list may name; checked before a range is expanded, so that
/// `0-99999999999` is an error rather than a list of a hundred billion cores.
pub const MAX_CORE: usize = 4095;

/// Parses `-m`: `0x3`, `3` (hex without prefix, as SPDK takes it) or `[0,1]`.
pub fn parse_mask(mask: &str) -> Result<Vec<usize>, CpuSetError> {
    let m = mask.trim();
    if let Some(list) = m.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        return parse_list(list).map_err(|e| match e {
            CpuSetError::TooHigh(core) => CpuSetError::TooHigh(core),
            _ => CpuSetError::BadMask(mask.to_string()),
        });
    }
    let hex = m
        .strip_prefix("0x")
        .or_else(|| m.strip_prefix("0X"))
        .unwrap_or(m);
    let bits = u128::from_str_radix(hex, 16).map_err(|_| CpuSetError::BadMask(mask.to_string()))?;
    let cores: Vec<usize> = (0..128).filter(|i| bits & (1u128 << i) != 0).collect();
    if cores.is_empty() {
        return Err(CpuSetError::Empty);
    }
    Ok(cores)
}

/// Parses `--cores`: comma-separated cores and ranges, in the order given.
pub fn parse_list(list: &str) -> Result<Vec<usize>, CpuSetError> {
    let bad = || CpuSetError::BadList(list.to_string());
    let mut cores = Vec::new();
    for part in list.split(',').map(str::trim) {
        if part.is_empty() {
            return Err(bad());
        }
        match part.split_once('-') {
            Some((a, b)) => {
                let a: usize = a.trim().parse().map_err(|_| bad())?;
                let b: usize = b.trim().parse().map_err(|_| bad())?;
                if a > b {
                    return Err(bad());
                }
                if b > MAX_CORE {
                    return Err(CpuSetError::TooHigh(b));
                }
                cores.extend(a..=b);
            }
            None => {
                let core: usize = part.parse().map_err(|_| bad())?;
                if core > MAX_CORE {
                    return Err(CpuSetError::TooHigh(core));
                }
                cores.push(core);
            }
        }
    }
    for (i, c) in cores.iter().enumerate() {
        if cores[..i].contains(c) {
            return Err(CpuSetError::Duplicate(*c));
        }
    }
    if cores.is_empty() {
        return Err(CpuSetError::Empty);
    }
    Ok(cores)
}

/// Checks that every core exists on this host.
pub fn check_available(cores: &[usize]) -> Result<(), CpuSetError> {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    let online = core_affinity::get_core_ids()
        .map(|ids| ids.iter().map(|c| c.id + 1).max().unwrap_or(n))
        .unwrap_or(n);
    for &core in cores {
        if core >= online {
            return Err(CpuSetError::NoSuchCore {
                core,
                last: online - 1,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_and_lists() {
        assert_eq!(parse_mask("0x3"), Ok(vec![0, 1]));
        assert_eq!(parse_mask("0x4"), Ok(vec![2]));
        assert_eq!(parse_mask("1"), Ok(vec![0]));
        assert_eq!(parse_mask("[0,1]"), Ok(vec![0, 1]));
        assert_eq!(parse_list("1,0"), Ok(vec![1, 0]));
        assert_eq!(parse_list("0-2"), Ok(vec![0, 1, 2]));
    }

    #[test]
    fn bad_input_names_the_problem() {
        assert_eq!(parse_mask("0x0"), Err(CpuSetError::Empty));
        assert_eq!(parse_mask("zz"), Err(CpuSetError::BadMask("zz".into())));
        assert_eq!(parse_list("0,,1"), Err(CpuSetError::BadList("0,,1".into())));
        assert_eq!(parse_list("3-1"), Err(CpuSetError::BadList("3-1".into())));
        assert_eq!(parse_list("0,0"), Err(CpuSetError::Duplicate(0)));
        // Ranges are bounded before they are expanded (this one would not fit in memory).
        assert_eq!(
            parse_list("0-99999999999"),
            Err(CpuSetError::TooHigh(99999999999))
        );
        assert_eq!(parse_list("4096"), Err(CpuSetError::TooHigh(4096)));
        assert_eq!(
            parse_mask("[0-99999999999]"),
            Err(CpuSetError::TooHigh(99999999999))
        );
        assert_eq!(parse_list("0-4095").map(|c| c.len()), Ok(4096));
        assert!(matches!(
            check_available(&[4096]),
            Err(CpuSetError::NoSuchCore { core: 4096, .. })
        ));
        assert_eq!(check_available(&[0]), Ok(()));
    }
}
