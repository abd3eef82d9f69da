//! The balancer: a control-plane thread that reads the state table every interval and, when
//! one reactor carries more than its fair share for long enough, hands a shard to the
//! least loaded reactor (see [`decide`] for how it chooses); when the reactors are even but
//! one member of a pool carries more than its share of the pool's I/O, it moves a shard's
//! data to the least loaded member ([`devices`]), at most `max_concurrent` copies at once.
//!
//! It runs on its own thread rather than as a reactor poller because a move persists the
//! new placement on every member, and those writes wait for the reactors. Its moves go
//! through the same path as `shard_migrate` ([`PoolService::migrate_shard`]); it leaves the
//! shards and members of a suspended pool alone (that pool refuses every change). Off until
//! `balancer_set_options {"enabled": true}`; `balancer_get_status` shows the options, the
//! latest scores and the last decisions with their reasons.
//!
//! It decides on the mean of the samples since its last move ([`history`]), not on the
//! newest window, and leaves a pool alone while a copy runs in it (the copy's I/O is load
//! of its own).

pub mod decide;
pub mod devices;
mod history;

use crate::pool::{PoolService, ShardMigrateParams};
use crate::reactor::Engine;
use crate::time::{self, Nanos};
use decide::{evaluate, Memory, Options, ShardPlace, Verdict};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// Decisions `balancer_get_status` keeps.
const KEPT_DECISIONS: usize = 32;

struct State {
    options: Options,
    memory: Memory,
    /// The snapshots since the last move: decisions use their mean.
    history: history::History,
    devices: devices::DeviceMemory,
    /// The latest evaluation: the reactors' scores and the verdict.
    last_scores: Vec<f64>,
    last_verdict: String,
    decisions: VecDeque<Value>,
    /// Owner hand-offs made.
    moves: u64,
    /// Data copies the balancer started (see `migration_get_status` for how they ended).
    copies_started: u64,
    stop: bool,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

pub struct Balancer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Balancer {
    /// Starts the balancer thread (disabled until enabled by options).
    pub fn start(engine: Arc<Engine>, pools: Arc<PoolService>) -> Balancer {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                options: Options::default(),
                memory: Memory::default(),
                history: history::History::default(),
                devices: devices::DeviceMemory::default(),
                last_scores: Vec::new(),
                last_verdict: "not run yet".into(),
                decisions: VecDeque::new(),
                moves: 0,
                copies_started: 0,
                stop: false,
            }),
            wake: Condvar::new(),
        });
        let thread = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("balancer".into())
                .spawn(move || run(&shared, &engine, &pools))
                .ok()
        };
        if thread.is_none() {
            log::error!("the balancer thread could not start; shards will not be balanced");
        }
        Balancer { shared, thread }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn options(&self) -> Options {
        self.lock().options.clone()
    }

    /// Replaces the options; the thread picks them up at once.
    pub fn set_options(&self, options: Options) {
        let mut s = self.lock();
        s.options = options;
        s.memory.restart_run();
        self.shared.wake.notify_all();
    }

    /// `balancer_get_status`.
    pub fn status(&self, cores: &[usize]) -> Value {
        let s = self.lock();
        let o = &s.options;
        let scores: Vec<Value> = s
            .last_scores
            .iter()
            .enumerate()
            .map(|(r, x)| json!({"core": cores.get(r).copied().unwrap_or(r), "score": (x * 1000.0).round() / 1000.0}))
            .collect();
        let weights =
            json!({"requests": o.weight_requests, "bytes": o.weight_bytes, "busy": o.weight_busy});
        let decisions: Vec<_> = s.decisions.iter().cloned().collect();
        let mut status = scalar_options(o);
        status.extend([
            ("weights".to_string(), weights),
            ("scores".to_string(), json!(scores)),
            ("last_verdict".to_string(), json!(s.last_verdict)),
            ("moves".to_string(), json!(s.moves)),
            ("copies_started".to_string(), json!(s.copies_started)),
            ("decisions".to_string(), json!(decisions)),
        ]);
        Value::Object(status)
    }

    /// `save_config`'s `balancer` subsystem: one `balancer_set_options` with every option, so
    /// that a daemon started from the saved config balances as this one does.
    pub fn config_entries(&self) -> Vec<Value> {
        let o = self.options();
        let mut params = scalar_options(&o);
        params.extend([
            ("weight_requests".to_string(), json!(o.weight_requests)),
            ("weight_bytes".to_string(), json!(o.weight_bytes)),
            ("weight_busy".to_string(), json!(o.weight_busy)),
        ]);
        vec![json!({"method": "balancer_set_options", "params": params})]
    }
}

/// The options `balancer_get_status` shows and `balancer_set_options` takes under the same
/// names (the weights differ: nested in the status, flat in the method).
fn scalar_options(o: &Options) -> serde_json::Map<String, Value> {
    [
        ("enabled", json!(o.enabled)),
        ("interval_ms", json!(o.interval_ns / 1_000_000)),
        ("imbalance_threshold", json!(o.imbalance_threshold)),
        ("sustain_samples", json!(o.sustain_samples)),
        ("cooldown_ms", json!(o.cooldown_ns / 1_000_000)),
        ("max_concurrent", json!(o.max_concurrent)),
    ]
    .into_iter()
    .map(|(key, value)| (key.to_string(), value))
    .collect()
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.lock().stop = true;
        self.shared.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(shared: &Shared, engine: &Engine, pools: &Arc<PoolService>) {
    let cores = engine.cores();
    let mut guard = shared.state.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let wait = Duration::from_nanos(guard.options.interval_ns);
        guard = shared
            .wake
            .wait_timeout(guard, wait)
            .unwrap_or_else(|p| p.into_inner())
            .0;
        if guard.stop {
            return;
        }
        if !guard.options.enabled {
            continue;
        }
        if pools.running_migrations() > 0 {
            // What a copy's I/O adds is no one's load to balance: decide on what follows it.
            guard.history.clear();
        }
        let snapshot = guard.history.push(engine.state_table().snapshot());
        // A suspended pool's shards are no candidates: their moves could only fail.
        let volumes = pools.movable_volumes();
        let places: Vec<ShardPlace> = volumes
            .iter()
            .flat_map(|(id, _, v)| {
                let table = v.table();
                let id = *id;
                (0..table.shards.len()).map(move |i| {
                    let r = &table.shards[i];
                    ShardPlace {
                        key: crate::load::ShardKey {
                            volume: id,
                            shard: i as u32,
                        },
                        owner: r.owner,
                        member: r.member,
                        online: r.state == crate::volume::ShardState::Online,
                    }
                })
            })
            .collect();
        let now = time::now();
        let state = &mut *guard;
        let reactors = cores.len();
        let verdict = evaluate(
            &snapshot,
            &places,
            reactors,
            &state.options,
            &mut state.memory,
            now,
        );
        state.last_scores = state.memory.scores().to_vec();
        state.last_verdict = describe(&verdict);
        let Verdict::Move(mv) = verdict else {
            let Some(planned) = plan_device_move(pools, &snapshot, &volumes, &places, state, now)
            else {
                continue;
            };
            let result;
            (guard, result) = migrate_unlocked(shared, guard, pools, &planned.params);
            let decision = device_move_done(&mut guard, planned, result, now);
            record(&mut guard, decision);
            continue;
        };
        let volume = volumes
            .iter()
            .find(|(id, _, _)| *id == mv.key.volume)
            .map(|(_, name, _)| name.clone());
        let Some(volume) = volume else { continue };
        let to_core = cores[mv.to as usize];
        let params = ShardMigrateParams {
            volume: volume.clone(),
            shard: mv.key.shard,
            target_core: Some(to_core),
            target_bdev: None,
        };
        let result;
        (guard, result) = migrate_unlocked(shared, guard, pools, &params);
        let cooldown = guard.options.cooldown_ns;
        guard.memory.restart_run();
        let outcome = match &result {
            Ok(_) => {
                guard.memory.moved(mv.key, now, cooldown);
                guard.moves += 1;
                guard.history.clear();
                "moved".to_string()
            }
            Err(e) => {
                // Try another shard next time rather than this one again at once.
                guard.memory.moved(mv.key, now, cooldown);
                format!("failed: {e}")
            }
        };
        log::info!(
            "balancer: volume '{volume}' shard {} core {} -> {to_core}: {outcome} ({})",
            mv.key.shard,
            cores[mv.from as usize],
            mv.reason
        );
        let decision = json!({
            "at_ms": now / 1_000_000, "volume": volume, "shard": mv.key.shard,
            "from_core": cores[mv.from as usize], "to_core": to_core,
            "reason": mv.reason, "outcome": outcome,
        });
        record(&mut guard, decision);
    }
}

/// Runs a move without the state lock, which status and options requests take: a move goes
/// through the reactors (persisting metadata, or starting a copy that may first wait for
/// writes in flight) and can take seconds.
fn migrate_unlocked<'a>(
    shared: &'a Shared,
    guard: MutexGuard<'a, State>,
    pools: &Arc<PoolService>,
    params: &ShardMigrateParams,
) -> (MutexGuard<'a, State>, Result<Value, crate::pool::PoolError>) {
    drop(guard);
    let result = pools.migrate_shard(params);
    let guard = shared.state.lock().unwrap_or_else(|p| p.into_inner());
    (guard, result)
}

fn record(state: &mut State, decision: Value) {
    if state.decisions.len() == KEPT_DECISIONS {
        state.decisions.pop_front();
    }
    state.decisions.push_back(decision);
}

/// A data move the balancer decided, about to be started.
struct PlannedDeviceMove {
    mv: devices::DeviceMove,
    volume: String,
    params: ShardMigrateParams,
}

/// Decides a data move when a pool's members are uneven and fewer than `max_concurrent`
/// copies run.
fn plan_device_move(
    pools: &Arc<PoolService>,
    snapshot: &crate::load::Snapshot,
    volumes: &[(crate::bdev::BdevId, String, Arc<crate::volume::Volume>)],
    places: &[ShardPlace],
    state: &mut State,
    now: Nanos,
) -> Option<PlannedDeviceMove> {
    if pools.running_migrations() >= state.options.max_concurrent as usize {
        return None;
    }
    // A pool with a copy running is left alone until it ends: the copy's own reads and
    // writes count as its members' load, and would make the next move look needed.
    let copying: Vec<&str> = volumes
        .iter()
        .filter(|(_, name, _)| pools.migrating_volume(name))
        .map(|(_, _, v)| v.pool())
        .collect();
    let members: Vec<_> = pools
        .members()
        .into_iter()
        .filter(|m| !copying.contains(&m.pool.as_str()))
        .collect();
    let mv = devices::evaluate(
        snapshot,
        &members,
        places,
        &state.options,
        &mut state.devices,
        &state.memory,
        now,
    )?;
    let volume = volumes
        .iter()
        .find(|(id, _, _)| *id == mv.key.volume)?
        .1
        .clone();
    let params = ShardMigrateParams {
        volume: volume.clone(),
        shard: mv.key.shard,
        target_core: None,
        target_bdev: Some(mv.to.clone()),
    };
    Some(PlannedDeviceMove { mv, volume, params })
}

/// Notes a data move's start (or failure to start) and returns the decision to record.
fn device_move_done(
    state: &mut State,
    planned: PlannedDeviceMove,
    result: Result<Value, crate::pool::PoolError>,
    now: Nanos,
) -> Value {
    let PlannedDeviceMove { mv, volume, .. } = planned;
    let outcome = match result {
        Ok(_) => {
            state.copies_started += 1;
            // The copy's own I/O, then the move, change what the members carry.
            state.history.clear();
            "copy started".to_string()
        }
        Err(e) => format!("failed: {e}"),
    };
    let cooldown = state.options.cooldown_ns;
    state.memory.moved(mv.key, now, cooldown);
    log::info!(
        "balancer: volume '{volume}' shard {} data {} -> {}: {outcome} ({})",
        mv.key.shard,
        mv.from,
        mv.to,
        mv.reason
    );
    json!({
        "at_ms": now / 1_000_000, "volume": volume, "shard": mv.key.shard,
        "from_bdev": mv.from, "to_bdev": mv.to, "reason": mv.reason, "outcome": outcome,
    })
}

fn describe(v: &Verdict) -> String {
    match v {
        Verdict::NoLoad => "no load published".into(),
        Verdict::Balanced { imbalance } => {
            format!("balanced ({imbalance:.2}x the fair share at most)")
        }
        Verdict::Waiting { imbalance, samples } => {
            format!("{imbalance:.2}x the fair share for {samples} sample(s); waiting")
        }
        Verdict::Stuck { imbalance, why } => format!("{imbalance:.2}x the fair share; {why}"),
        Verdict::Move(m) => format!("moving: {}", m.reason),
    }
}

/// Nanoseconds from milliseconds, for option parsing.
pub fn ms(ms: u64) -> Nanos {
    ms.saturating_mul(1_000_000)
}
