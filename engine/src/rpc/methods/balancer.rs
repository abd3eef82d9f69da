//! Balancer methods: `balancer_set_options` and `balancer_get_status` (see `crate::balancer`).

use super::{Method, NoParams};
use crate::balancer::{decide::Options, ms};
use crate::rpc::{parse_params, RpcError, Services};
use serde::Deserialize;
use serde_json::{json, Value};

pub fn methods() -> Vec<Method> {
    vec![
        Method {
            name: "balancer_set_options",
            help: "Set any of enabled, interval_ms, imbalance_threshold, sustain_samples, cooldown_ms, max_concurrent, weight_requests, weight_bytes, weight_busy",
            handler: balancer_set_options,
        },
        Method {
            name: "balancer_get_status",
            help: "The balancer's options, the reactors' load scores and its last decisions with their reasons",
            handler: balancer_get_status,
        },
    ]
}

/// Every field is optional: what is not given keeps its value.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetOptions {
    enabled: Option<bool>,
    interval_ms: Option<u64>,
    imbalance_threshold: Option<f64>,
    sustain_samples: Option<u32>,
    cooldown_ms: Option<u64>,
    max_concurrent: Option<u32>,
    weight_requests: Option<f64>,
    weight_bytes: Option<f64>,
    weight_busy: Option<f64>,
}

/// Weights are relative; bounded so that their sum, and the scores, stay finite (three
/// weights near `f64::MAX` summed to infinity, every score came out NaN and NaN read as
/// balanced: the balancer never moved anything).
const MAX_WEIGHT: f64 = 1e6;

fn check(ok: bool, param: &str, reason: &str) -> Result<(), RpcError> {
    if ok {
        Ok(())
    } else {
        Err(RpcError::invalid_params(format!("{param}: {reason}")))
    }
}

/// The options with `p` applied, or the first bad value (and nothing changes).
fn apply(mut o: Options, p: &SetOptions) -> Result<Options, RpcError> {
    if let Some(v) = p.interval_ms {
        check(
            (10..=3_600_000).contains(&v),
            "interval_ms",
            "must be 10 to 3600000",
        )?;
        o.interval_ns = ms(v);
    }
    if let Some(v) = p.imbalance_threshold {
        check(
            v.is_finite() && v > 1.0,
            "imbalance_threshold",
            "must be above 1.0 (a ratio to the fair share)",
        )?;
        o.imbalance_threshold = v;
    }
    if let Some(v) = p.sustain_samples {
        check(v >= 1, "sustain_samples", "must be at least 1")?;
        o.sustain_samples = v;
    }
    if let Some(v) = p.cooldown_ms {
        check(v <= 86_400_000, "cooldown_ms", "must be at most a day")?;
        o.cooldown_ns = ms(v);
    }
    if let Some(v) = p.max_concurrent {
        check(v >= 1, "max_concurrent", "must be at least 1")?;
        o.max_concurrent = v;
    }
    for (v, name, field) in [
        (p.weight_requests, "weight_requests", &mut o.weight_requests),
        (p.weight_bytes, "weight_bytes", &mut o.weight_bytes),
        (p.weight_busy, "weight_busy", &mut o.weight_busy),
    ] {
        if let Some(v) = v {
            check(
                (0.0..=MAX_WEIGHT).contains(&v),
                name,
                "must be a number from 0 to 1000000",
            )?;
            *field = v;
        }
    }
    check(
        o.weight_requests + o.weight_bytes + o.weight_busy > 0.0,
        "weight_requests",
        "at least one weight must be above 0",
    )?;
    if let Some(v) = p.enabled {
        o.enabled = v;
    }
    Ok(o)
}

fn balancer_set_options(
    services: &Services,
    _: &[Method],
    params: Option<Value>,
) -> Result<Value, RpcError> {
    let p: SetOptions = parse_params(params)?;
    let options = apply(services.balancer.options(), &p)?;
    services.balancer.set_options(options);
    Ok(json!(true))
}

fn balancer_get_status(
    services: &Services,
    _: &[Method],
    params: Option<Value>,
) -> Result<Value, RpcError> {
    parse_params::<NoParams>(params)?;
    Ok(services.balancer.status(&services.engine.cores()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(json: Value) -> Result<Options, RpcError> {
        apply(Options::default(), &serde_json::from_value(json).unwrap())
    }

    #[test]
    fn weights_are_bounded_so_that_scores_stay_finite() {
        let huge = json!({"weight_requests": 1e308, "weight_bytes": 1e308, "weight_busy": 1e308});
        let e = set(huge).unwrap_err();
        assert!(format!("{e:?}").contains("weight_requests"), "{e:?}");
        for bad in [-1.0, 1e6 + 1.0] {
            assert!(set(json!({ "weight_busy": bad })).is_err(), "{bad}");
        }
        let o =
            set(json!({"weight_requests": 1e6, "weight_bytes": 1e6, "weight_busy": 1e6})).unwrap();
        assert!((o.weight_requests + o.weight_bytes + o.weight_busy).is_finite());
    }
}
