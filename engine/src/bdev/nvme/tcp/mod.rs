//! The NVMe/TCP transport of the `nvme` bdev: a host (initiator) for a remote subsystem,
//! `bdev_nvme_attach_controller -t tcp -a ADDR -s PORT -n NQN`, in SPDK's shape.
//!
//! One [`TcpController`] per attached subsystem owns the admin queue on its own thread
//! (`nvme-tcp NAME`): it brings the controller up (Connect, CC.EN, Identify, Number of
//! Queues), sends Keep Alive every half KATO, opens each reactor's I/O queue (a TCP
//! connection of its own) when that reactor's [`channel`] asks, and reconnects. The reactors
//! never block: they only read [`Health`] (one atomic word) and take finished queue openings.
//!
//! Reconnects follow SPDK's options ([`ReconnectOptions`]). A queue that fails (the socket
//! closes, a PDU is malformed, a command outlives `timeout_ms`) or a Keep Alive that fails
//! takes the controller down; from then on:
//! - requests wait, and those in flight on the dead queue go back to waiting (they are sent
//!   again, whole, once a new queue is up);
//! - the thread tries to reconnect at once, then every `reconnect_delay_sec`;
//! - once `fast_io_fail_timeout_sec` has passed (if set), waiting and new requests fail with
//!   EIO while it keeps trying;
//! - once `ctrlr_loss_timeout_sec` has passed (0: after the first failed try; -1: never), the
//!   controller is lost: every request fails with ENODEV until it is detached.
//!
//! Each successful (re)connect bumps the generation; a channel whose queue belongs to an older
//! one drops it and asks for a new one.

pub mod channel;
pub mod link;
#[cfg(test)]
mod tests;

use super::Namespace;
use crate::bdev::BdevError;
use link::{Endpoint, Link, QueueRequest, TcpError};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tidepool_bindings::nvme::spec::{
    cns, Cap, Cc, Csts, IdentifyController, IdentifyNamespace, SubmissionEntry, IDENTIFY_BYTES,
};

/// Entries of the admin queue.
const ADMIN_ENTRIES: u16 = 32;
/// I/O queues asked for with Number of Queues: more than any host here has reactors.
const IO_QUEUES_WANTED: u16 = 64;
/// The most bytes one command moves when the controller sets no MDTS.
const MAX_COMMAND_BYTES: u32 = 1 << 20;

/// SPDK's reconnect options (`bdev_nvme_attach_controller`, `bdev_nvme_set_options`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReconnectOptions {
    /// -1: reconnect for ever; 0: one try, then lost; else seconds before the controller is
    /// declared lost.
    pub ctrlr_loss_timeout_sec: i64,
    /// Seconds between tries.
    pub reconnect_delay_sec: u64,
    /// Seconds after which waiting I/O fails while the tries go on (0: never).
    pub fast_io_fail_timeout_sec: u64,
}

impl ReconnectOptions {
    /// SPDK's defaults: no reconnect tries beyond the first.
    pub const NONE: ReconnectOptions = ReconnectOptions {
        ctrlr_loss_timeout_sec: 0,
        reconnect_delay_sec: 0,
        fast_io_fail_timeout_sec: 0,
    };

    /// SPDK's rules: no delay without a loss timeout, a delay with one, and a fast-fail time
    /// between the delay and the loss timeout.
    pub fn check(&self) -> Result<(), BdevError> {
        let (loss, delay, fast) = (
            self.ctrlr_loss_timeout_sec,
            self.reconnect_delay_sec,
            self.fast_io_fail_timeout_sec,
        );
        let bad = |p, why: &str| Err(BdevError::invalid(p, why.to_string()));
        if !(-1..=MAX_OPTION_SEC as i64).contains(&loss) {
            return bad(
                "ctrlr_loss_timeout_sec",
                "must be -1 (for ever), or from 0 to 604800 (a week)",
            );
        }
        if delay > MAX_OPTION_SEC || fast > MAX_OPTION_SEC {
            return bad(
                "reconnect_delay_sec",
                "reconnect_delay_sec and fast_io_fail_timeout_sec must be at most 604800 (a week)",
            );
        }
        if loss == 0 {
            if delay != 0 || fast != 0 {
                return bad(
                    "reconnect_delay_sec",
                    "reconnect_delay_sec and fast_io_fail_timeout_sec need a ctrlr_loss_timeout_sec",
                );
            }
            return Ok(());
        }
        if delay == 0 {
            return bad(
                "reconnect_delay_sec",
                "must be above 0 when ctrlr_loss_timeout_sec is set",
            );
        }
        if loss > 0 && delay > loss as u64 {
            return bad(
                "reconnect_delay_sec",
                "must not exceed ctrlr_loss_timeout_sec",
            );
        }
        if fast != 0 && (fast < delay || (loss > 0 && fast > loss as u64)) {
            return bad(
                "fast_io_fail_timeout_sec",
                "must be 0, or from reconnect_delay_sec to ctrlr_loss_timeout_sec",
            );
        }
        Ok(())
    }
}

/// The longest any reconnect option may be, in seconds (a week): more is a typo.
const MAX_OPTION_SEC: u64 = 7 * 24 * 3600;

/// What the reactors see of the controller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// Connected; queues opened in this generation are good.
    Up { generation: u64 },
    /// Down, reconnecting: requests wait.
    Reconnecting,
    /// Down past `fast_io_fail_timeout_sec`: requests fail with EIO.
    FailingIo,
    /// Declared lost: requests fail with ENODEV.
    Lost,
}

const UP: u64 = 0;
const RECONNECTING: u64 = 1;
const FAILING_IO: u64 = 2;
const LOST: u64 = 3;

/// Everything a controller needs in order to (re)connect.
#[derive(Clone, Debug)]
pub struct Settings {
    pub endpoint: Endpoint,
    pub io_queue_entries: u16,
    pub kato_ms: u32,
    pub reconnect: ReconnectOptions,
}

/// What bring-up learnt.
struct Facts {
    identity: IdentifyController,
    namespaces: Vec<Namespace>,
    io_queues: u16,
    /// CAP.MQES + 1.
    max_entries: u16,
}

impl Facts {
    /// Entries of each I/O queue: what was asked, within CAP.MQES + 1 and MAXCMD.
    fn queue_entries(&self, asked: u16) -> u16 {
        let mut entries = asked.min(self.max_entries);
        if self.identity.maxcmd != 0 {
            entries = entries.min(self.identity.maxcmd);
        }
        entries
    }
}

/// A channel's request for an I/O queue, filled in by the controller's thread.
pub struct QueueAsk {
    /// The generation the queue is for: a result is good only while it is current.
    pub generation: u64,
    thread: String,
    result: Mutex<Option<Result<Link, AskError>>>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum AskError {
    /// The connection failed: the controller goes down and reconnects.
    #[error("{0}")]
    Connection(String),
    /// The controller is not up in the generation the ask was made in.
    #[error("controller not connected")]
    NotUp,
    /// Every queue the controller granted is taken.
    #[error("all {0} I/O queues are in use")]
    NoQueue(u16),
}

impl QueueAsk {
    /// The opened queue, once the thread has tried.
    pub fn take(&self) -> Option<Result<Link, AskError>> {
        self.result.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

struct Shared {
    stop: bool,
    /// A channel's report that a queue of this generation failed, and why.
    failed: Option<(u64, String)>,
    asks: Vec<Arc<QueueAsk>>,
    /// I/O queues open in the current generation: qid → the thread holding it.
    queues: BTreeMap<u16, String>,
    cntlid: u16,
    /// What the controller granted at the last (re)connect: I/O queues, and entries each.
    io_queues: u16,
    io_queue_entries: u16,
    last_error: Option<String>,
    /// When the controller went down (None while up).
    down_since: Option<Instant>,
}

struct Inner {
    name: String,
    settings: Settings,
    identity: IdentifyController,
    namespaces: Vec<Namespace>,
    max_command_bytes: u32,
    /// generation << 2 | state.
    health: AtomicU64,
    shared: Mutex<Shared>,
    wake: Condvar,
    reconnects: AtomicU64,
}

/// One attached NVMe/TCP controller.
pub struct TcpController {
    inner: Arc<Inner>,
    thread: Option<JoinHandle<()>>,
}

fn identify(admin: &mut Link, cns: u32, nsid: u32) -> Result<Box<[u8; IDENTIFY_BYTES]>, TcpError> {
    let sqe = SubmissionEntry::identify(cns, nsid, 0);
    let (_, data) = admin.command("Identify", sqe, &[], IDENTIFY_BYTES as u32)?;
    let mut page = Box::new([0u8; IDENTIFY_BYTES]);
    let n = data.len().min(IDENTIFY_BYTES);
    page[..n].copy_from_slice(&data[..n]);
    Ok(page)
}

/// Connects the admin queue and brings the controller up (NVMe over Fabrics 1.1, 3.5 and the
/// base specification's 3.5.1 without the register set-up a fabric does not have).
fn bring_up(s: &Settings) -> Result<(Link, Facts), TcpError> {
    let ep = &s.endpoint;
    let mut admin = Link::open(
        ep,
        QueueRequest {
            qid: 0,
            entries: ADMIN_ENTRIES,
            cntlid: 0,
            kato_ms: s.kato_ms,
        },
    )?;
    let cap = Cap(admin.property_get(crate::nvmf::fabrics::property::CAP, true)?);
    admin.property_set(crate::nvmf::fabrics::property::CC, Cc::enabled(12).0)?;
    let ready_by = Instant::now() + Duration::from_millis(cap.timeout_ms().max(500));
    loop {
        let csts = Csts(admin.property_get(crate::nvmf::fabrics::property::CSTS, false)? as u32);
        if csts.ready() {
            break;
        }
        if csts.fatal() || Instant::now() > ready_by {
            return Err(TcpError::Protocol {
                addr: ep.addr,
                what: format!("CSTS.RDY not set within CAP.TO ({} ms)", cap.timeout_ms()),
            });
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let identity = IdentifyController::parse(&*identify(&mut admin, cns::CONTROLLER, 0)?);
    let (cqe, _) = admin.command(
        "Number of Queues",
        SubmissionEntry::set_number_of_queues(IO_QUEUES_WANTED, IO_QUEUES_WANTED),
        &[],
        0,
    )?;
    let io_queues = ((cqe.dw0 & 0xffff) as u16)
        .min((cqe.dw0 >> 16) as u16)
        .saturating_add(1);
    let list = identify(&mut admin, cns::ACTIVE_NAMESPACES, 0)?;
    let mut namespaces = Vec::new();
    for nsid in tidepool_bindings::nvme::spec::parse_namespace_list(&list) {
        let ns = IdentifyNamespace::parse(&*identify(&mut admin, cns::NAMESPACE, nsid)?);
        let block_size = ns.block_size();
        if ns.metadata_bytes != 0
            || crate::bdev::check_block_size(block_size as u32).is_err()
            || ns.nsze == 0
        {
            log::warn!(
                "nvme {}: namespace {nsid} skipped (block size {block_size}, metadata {})",
                ep.addr,
                ns.metadata_bytes
            );
            continue;
        }
        namespaces.push(Namespace {
            nsid,
            num_blocks: ns.nsze,
            block_size: block_size as u32,
        });
    }
    let max_entries = (cap.max_queue_entries().min(u16::MAX as u32)) as u16;
    Ok((
        admin,
        Facts {
            identity,
            namespaces,
            io_queues,
            max_entries,
        },
    ))
}

fn lock(m: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl TcpController {
    /// Brings the controller up and starts its thread; fails, touching nothing, if the
    /// controller cannot be reached or refuses.
    pub fn attach(name: &str, settings: Settings) -> Result<TcpController, TcpError> {
        let (admin, facts) = bring_up(&settings)?;
        let entries = facts.queue_entries(settings.io_queue_entries);
        let max_command_bytes = match facts.identity.mdts {
            0 => MAX_COMMAND_BYTES,
            m => (4096u32 << m.min(8)).min(MAX_COMMAND_BYTES),
        };
        let inner = Arc::new(Inner {
            name: name.to_string(),
            identity: facts.identity,
            namespaces: facts.namespaces,
            max_command_bytes,
            health: AtomicU64::new(UP),
            shared: Mutex::new(Shared {
                stop: false,
                failed: None,
                asks: Vec::new(),
                queues: BTreeMap::new(),
                cntlid: admin.cntlid,
                io_queues: facts.io_queues,
                io_queue_entries: entries,
                last_error: None,
                down_since: None,
            }),
            wake: Condvar::new(),
            reconnects: AtomicU64::new(0),
            settings,
        });
        let thread_inner = Arc::clone(&inner);
        let thread = std::thread::Builder::new()
            .name(format!("nvme-tcp {name}"))
            .spawn(move || thread_inner.run(admin))
            .map_err(|err| TcpError::Io {
                addr: inner.settings.endpoint.addr,
                op: "starting the controller's thread",
                err,
            })?;
        Ok(TcpController {
            inner,
            thread: Some(thread),
        })
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }
    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }
    pub fn identity(&self) -> &IdentifyController {
        &self.inner.identity
    }
    pub fn namespaces(&self) -> &[Namespace] {
        &self.inner.namespaces
    }
    pub fn max_command_bytes(&self) -> u32 {
        self.inner.max_command_bytes
    }
    /// The transport address as `bdev_nvme_attach_controller` took it, for duplicate checks.
    pub fn address(&self) -> String {
        let ep = &self.inner.settings.endpoint;
        format!("{} {}", ep.addr, ep.subnqn)
    }

    pub fn health(&self) -> Health {
        let w = self.inner.health.load(Ordering::Acquire);
        match w & 3 {
            UP => Health::Up { generation: w >> 2 },
            RECONNECTING => Health::Reconnecting,
            FAILING_IO => Health::FailingIo,
            _ => Health::Lost,
        }
    }

    /// Asks the controller's thread for an I/O queue in `generation`.
    pub fn ask_queue(&self, generation: u64) -> Arc<QueueAsk> {
        let ask = Arc::new(QueueAsk {
            generation,
            thread: std::thread::current()
                .name()
                .unwrap_or("unnamed")
                .to_string(),
            result: Mutex::new(None),
        });
        let mut s = lock(&self.inner.shared);
        s.asks.push(Arc::clone(&ask));
        self.inner.wake.notify_all();
        ask
    }

    /// A channel gives its queue back (its socket is closed).
    pub fn release_queue(&self, generation: u64, qid: u16) {
        // Under the lock: a reconnect clears the table under it, and a newer generation's
        // channel may hold the same qid.
        let mut s = lock(&self.inner.shared);
        if self.health() == (Health::Up { generation }) {
            s.queues.remove(&qid);
        }
    }

    /// Detach: the thread ends (closing the admin queue) and every request fails with
    /// ENODEV from now on, so that the channels drain and close. Never blocks.
    pub fn detach(&self) {
        let mut s = lock(&self.inner.shared);
        s.stop = true;
        self.inner.set_health(self.inner.generation(), LOST);
        self.inner.wake.notify_all();
    }

    /// A queue of `generation` failed: the controller goes down and reconnects.
    pub fn report_failure(&self, generation: u64, why: String) {
        let mut s = lock(&self.inner.shared);
        if self.health() == (Health::Up { generation }) && s.failed.is_none() {
            s.failed = Some((generation, why));
            self.inner.wake.notify_all();
        }
    }

    /// `bdev_nvme_get_controllers`' entry.
    pub fn report(&self) -> Value {
        let i = &self.inner;
        let ep = &i.settings.endpoint;
        let s = lock(&i.shared);
        let state = match self.health() {
            Health::Up { .. } => "enabled",
            Health::Reconnecting => "resetting",
            Health::FailingIo => "resetting (I/O failing)",
            Health::Lost => "failed",
        };
        let queues: Vec<Value> = s
            .queues
            .iter()
            .map(|(qid, thread)| json!({"qid": qid, "thread": thread}))
            .collect();
        let id = &i.identity;
        json!({
            "name": i.name,
            "ctrlrs": [{
                "state": state,
                "trid": {"trtype": "TCP", "adrfam": if ep.addr.is_ipv4() { "IPv4" } else { "IPv6" },
                    "traddr": ep.addr.ip().to_string(), "trsvcid": ep.addr.port().to_string(),
                    "subnqn": ep.subnqn},
                "host": {"nqn": ep.hostnqn},
                "cntlid": s.cntlid,
                "model_number": id.model,
                "serial_number": id.serial,
                "firmware_revision": id.firmware,
                "max_transfer_bytes": i.max_command_bytes,
                "namespaces": i.namespaces,
                "io_queues_granted": s.io_queues,
                "io_queue_entries": s.io_queue_entries,
                "io_qpairs": queues,
                "digests": {"header": ep.digests.header, "data": ep.digests.data},
                "reconnects": i.reconnects.load(Ordering::Relaxed),
                "last_error": s.last_error,
            }]
        })
    }
}

impl Drop for TcpController {
    /// Not joined: the last reference may go on a reactor, which must not wait for a
    /// connect or a Keep Alive in flight. The thread sees `stop` and ends by itself.
    fn drop(&mut self) {
        self.detach();
        drop(self.thread.take());
    }
}

impl Inner {
    /// Sets the health word; lost is for good (a detach, or the loss timeout, made it so).
    fn set_health(&self, generation: u64, state: u64) {
        let _ = self
            .health
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                (w & 3 != LOST).then_some(generation << 2 | state)
            });
    }

    fn generation(&self) -> u64 {
        self.health.load(Ordering::Acquire) >> 2
    }

    /// The controller's thread: Keep Alive, queue openings and reconnects, until detached.
    fn run(self: Arc<Self>, admin: Link) {
        let s = &self.settings;
        // Keep Alive every half KATO; with no KATO, none (the loop still wakes hourly).
        let keep_alive_every = Duration::from_millis((s.kato_ms / 2).max(1) as u64);
        let keep_alive = s.kato_ms != 0;
        let idle_wait = if keep_alive {
            keep_alive_every
        } else {
            Duration::from_secs(3600)
        };
        let delay = Duration::from_secs(s.reconnect.reconnect_delay_sec);
        let mut admin = Some(admin);
        let mut next_keep_alive = Instant::now() + idle_wait;
        let mut next_try = Instant::now();
        loop {
            let mut g = lock(&self.shared);
            if g.stop {
                return;
            }
            let generation = self.generation();
            match self.health.load(Ordering::Acquire) & 3 {
                UP => {
                    let failed = g.failed.take().filter(|(gen, _)| *gen == generation);
                    let asks = std::mem::take(&mut g.asks);
                    let now = Instant::now();
                    let mut down = failed.map(|(_, why)| why);
                    if down.is_none() && asks.is_empty() && now < next_keep_alive {
                        let _ = self.wake.wait_timeout(g, next_keep_alive - now);
                        continue;
                    }
                    drop(g);
                    let link = admin.as_mut().expect("up means an admin link");
                    for ask in asks {
                        if down.is_some() {
                            ask.fail(AskError::NotUp);
                            continue;
                        }
                        if let Err(AskError::Connection(why)) = self.open_queue(&ask) {
                            down = Some(why);
                        }
                        // Between openings too: many of them must not starve Keep Alive.
                        if down.is_none() && keep_alive && Instant::now() >= next_keep_alive {
                            down = Self::send_keep_alive(link).err();
                            next_keep_alive = Instant::now() + keep_alive_every;
                        }
                    }
                    if down.is_none() && Instant::now() >= next_keep_alive {
                        if keep_alive {
                            down = Self::send_keep_alive(link).err();
                        }
                        next_keep_alive = Instant::now() + idle_wait;
                    }
                    if let Some(why) = down {
                        log::warn!("nvme {}: controller down: {why}", self.name);
                        admin = None;
                        let mut g = lock(&self.shared);
                        g.last_error = Some(why);
                        g.down_since = Some(Instant::now());
                        g.queues.clear();
                        self.set_health(generation, RECONNECTING);
                        next_try = Instant::now();
                    }
                }
                LOST => {
                    for ask in std::mem::take(&mut g.asks) {
                        ask.fail(AskError::NotUp);
                    }
                    let _ = self.wake.wait_timeout(g, Duration::from_secs(1));
                }
                state => {
                    for ask in std::mem::take(&mut g.asks) {
                        ask.fail(AskError::NotUp);
                    }
                    let since = g.down_since.unwrap_or_else(Instant::now);
                    let now = Instant::now();
                    if now < next_try {
                        let _ = self
                            .wake
                            .wait_timeout(g, (next_try - now).min(Duration::from_millis(100)));
                        self.check_deadlines(generation, since, state);
                        continue;
                    }
                    drop(g);
                    match bring_up(s) {
                        Ok((link, facts)) => {
                            if facts.namespaces != self.namespaces {
                                log::warn!(
                                    "nvme {}: namespaces changed across the reconnect; keeping the attached ones",
                                    self.name
                                );
                            }
                            let mut g = lock(&self.shared);
                            g.cntlid = link.cntlid;
                            g.io_queues = facts.io_queues;
                            g.io_queue_entries = facts.queue_entries(s.io_queue_entries);
                            g.down_since = None;
                            g.failed = None;
                            admin = Some(link);
                            self.reconnects.fetch_add(1, Ordering::Relaxed);
                            self.set_health(generation + 1, UP);
                            log::info!("nvme {}: reconnected", self.name);
                            next_keep_alive = Instant::now() + idle_wait;
                        }
                        Err(e) => {
                            lock(&self.shared).last_error = Some(e.to_string());
                            log::debug!("nvme {}: reconnect failed: {e}", self.name);
                            next_try = Instant::now() + delay;
                            if s.reconnect.ctrlr_loss_timeout_sec == 0 {
                                self.lose(generation, &e.to_string());
                            } else {
                                self.check_deadlines(generation, since, state);
                            }
                        }
                    }
                }
            }
        }
    }

    fn send_keep_alive(admin: &mut Link) -> Result<(), String> {
        let ka = SubmissionEntry::keep_alive();
        admin
            .command("Keep Alive", ka, &[], 0)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// Moves a down controller to failing I/O or lost once its times have passed.
    fn check_deadlines(&self, generation: u64, since: Instant, state: u64) {
        let r = &self.settings.reconnect;
        let down = since.elapsed();
        if r.ctrlr_loss_timeout_sec > 0
            && down >= Duration::from_secs(r.ctrlr_loss_timeout_sec as u64)
        {
            self.lose(generation, "ctrlr_loss_timeout_sec passed");
        } else if state == RECONNECTING
            && r.fast_io_fail_timeout_sec > 0
            && down >= Duration::from_secs(r.fast_io_fail_timeout_sec)
        {
            log::warn!(
                "nvme {}: fast_io_fail_timeout_sec passed: failing I/O",
                self.name
            );
            self.set_health(generation, FAILING_IO);
        }
    }

    fn lose(&self, generation: u64, why: &str) {
        log::error!("nvme {}: controller lost: {why}", self.name);
        self.set_health(generation, LOST);
    }

    /// Opens one I/O queue for `ask` (the admin queue's thread, blocking).
    fn open_queue(&self, ask: &QueueAsk) -> Result<(), AskError> {
        let generation = self.generation();
        let result = (|| {
            if self.health.load(Ordering::Acquire) & 3 != UP || ask.generation != generation {
                return Err(AskError::NotUp);
            }
            let (qid, cntlid, entries) = {
                let mut g = lock(&self.shared);
                let free = (1..=g.io_queues).find(|q| !g.queues.contains_key(q));
                let qid = free.ok_or(AskError::NoQueue(g.io_queues))?;
                g.queues.insert(qid, ask.thread.clone());
                (qid, g.cntlid, g.io_queue_entries)
            };
            let q = QueueRequest {
                qid,
                entries,
                cntlid,
                kato_ms: 0,
            };
            let opened = Link::open(&self.settings.endpoint, q).and_then(|link| {
                link.stream
                    .set_nonblocking(true)
                    .map_err(|err| TcpError::Io {
                        addr: link.addr,
                        op: "O_NONBLOCK",
                        err,
                    })?;
                Ok(link)
            });
            opened.map_err(|e| {
                lock(&self.shared).queues.remove(&qid);
                AskError::Connection(e.to_string())
            })
        })();
        let out = result.as_ref().map(|_| ()).map_err(Clone::clone);
        *ask.result.lock().unwrap_or_else(|p| p.into_inner()) = Some(result);
        out
    }
}

impl QueueAsk {
    fn fail(&self, e: AskError) {
        *self.result.lock().unwrap_or_else(|p| p.into_inner()) = Some(Err(e));
    }
}
