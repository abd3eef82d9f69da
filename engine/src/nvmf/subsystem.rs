//! The NVMe-oF target's control-plane state: the TCP transport's options, the subsystems
//! with their namespaces, allowed hosts and listeners, and the controllers and queue pairs
//! connected to each (issue 29). The JSON-RPC methods (`nvmf_*`, SPDK's names and shapes) and
//! `save_config` work on it; the protocol code reads it through the plain lookups below.
//!
//! Contract:
//! - Everything sits behind one `RwLock`; a lookup returns cloned small values, never a
//!   reference into the table. [`Subsystems::generation`] changes with every change, so a
//!   connection may cache what it looked up and look again when the number moves.
//! - Every change is checked in full before anything is touched: bad input gets a typed
//!   [`NvmfError`] and leaves the state (and the bdev registry) as it was.
//! - A namespace claims its bdev in the registry, as an NBD export does, so a served bdev
//!   cannot be deleted or served twice; removing the namespace (or its subsystem) releases it.
//! - The discovery subsystem, [`DISCOVERY_NQN`], always exists; it takes listeners only.
//! - The control plane never pulls state from under a live connection: deleting a subsystem,
//!   removing a namespace, a host or a listener that a connected controller or queue pair
//!   uses, is refused (-EBUSY) until the protocol code has disconnected it.
//! - Limits: [`MAX_SUBSYSTEMS`], [`MAX_NAMESPACES`] (per subsystem, below its own
//!   `max_namespaces`), [`MAX_HOSTS`], [`MAX_LISTENERS`], [`MAX_CONTROLLERS`] per subsystem,
//!   and the transport's `max_io_qpairs_per_ctrlr`.
//!
//! [`params`] holds what the methods take, each with its checks; [`target`] makes the
//! registry the target's Connect directory and the target the registry's listener binder.

mod connections;
pub mod params;
pub mod target;

pub use params::{check_nqn, ListenAddress, NamespaceParams, SubsystemParams, TransportOptions};

use crate::bdev::{check_uuid, BdevError, BdevId, BdevRegistry, IoTypeSet};
use serde_json::{json, Value};
use std::sync::{Arc, RwLock};

/// The well-known NQN of the discovery subsystem (NVMe base specification, 4.7).
pub const DISCOVERY_NQN: &str = "nqn.2014-08.org.nvmexpress.discovery";
/// The prefix of a UUID-based NQN (NVMe base specification, 4.7, second format).
pub const UUID_NQN_PREFIX: &str = "nqn.2014-08.org.nvmexpress:uuid:";
/// Longest NQN, in bytes (NVMe base specification, 4.7).
pub const MAX_NQN_BYTES: usize = 223;
/// Most subsystems, the discovery subsystem included (SPDK's default `max_subsystems`).
pub const MAX_SUBSYSTEMS: usize = 1024;
/// `max_namespaces` when none is given (SPDK's `nvmf_create_subsystem` default).
pub const DEFAULT_MAX_NAMESPACES: u32 = 32;
/// The largest `max_namespaces` a subsystem may have.
pub const MAX_NAMESPACES: u32 = 1024;
/// Most allowed hosts per subsystem.
pub const MAX_HOSTS: usize = 256;
/// Most listeners per subsystem.
pub const MAX_LISTENERS: usize = 16;
/// Most controllers connected to one subsystem at once.
pub const MAX_CONTROLLERS: usize = 128;
/// Highest controller ID a static controller may have (NVMe base specification: FFF0h and
/// above are reserved); SPDK's `max_cntlid`.
pub const MAX_CNTLID: u16 = 0xffef;
/// Serial number field of Identify Controller, in bytes.
pub const SERIAL_NUMBER_BYTES: usize = 20;
/// Model number field of Identify Controller, in bytes.
pub const MODEL_NUMBER_BYTES: usize = 40;
pub const DEFAULT_SERIAL_NUMBER: &str = "00000000000000000000";
pub const DEFAULT_MODEL_NUMBER: &str = "tidepool bdev Controller";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NvmfError {
    #[error("invalid parameter {param}: {reason}")]
    InvalidParam { param: &'static str, reason: String },
    #[error("{0} already exists")]
    Exists(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Busy(String),
    #[error("{0}")]
    Limit(String),
    #[error("no {0} transport: create it first (nvmf_create_transport -t TCP)")]
    NoTransport(String),
    #[error(
        "host '{host}' may not connect to '{nqn}' (nvmf_subsystem_add_host, or allow_any_host)"
    )]
    HostNotAllowed { nqn: String, host: String },
    #[error("listening on {address}: {reason}")]
    Listen { address: String, reason: String },
    #[error("{0}")]
    Bdev(#[from] BdevError),
}

pub(super) fn invalid(param: &'static str, reason: impl Into<String>) -> NvmfError {
    NvmfError::InvalidParam {
        param,
        reason: reason.into(),
    }
}

/// Opens and closes the sockets behind listeners; the transport implements it and
/// installs it with [`Subsystems::set_binder`]. [`Subsystems`] calls `listen` when an address
/// gets its first listener (in any subsystem) and `stop_listening` when it loses its last,
/// with its own lock held: an implementation must not call back into [`Subsystems`]. Until
/// one is installed, listeners are recorded (and saved) but nothing listens.
pub trait ListenerBinder: Send + Sync {
    fn listen(&self, address: &ListenAddress) -> Result<(), String>;
    fn stop_listening(&self, address: &ListenAddress);
}

/// Makes the transport's socket side (the target) when the transport is created, from its
/// options: the daemon's services install one (`rpc::Services`), so that a transport made
/// by RPC or by a `--json` config serves hosts; a registry without one only keeps state.
pub type BinderFactory =
    Box<dyn Fn(&TransportOptions) -> Result<Arc<dyn ListenerBinder>, String> + Send + Sync>;

/// One namespace as the protocol code sees it: the bdev and its geometry when it was added.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamespaceView {
    pub nsid: u32,
    pub bdev: BdevId,
    pub bdev_name: String,
    pub uuid: String,
    pub block_size: u32,
    pub num_blocks: u64,
    pub supported: IoTypeSet,
    pub read_only: bool,
}

impl NamespaceView {
    fn to_json(&self) -> Value {
        json!({"nsid": self.nsid, "bdev_name": self.bdev_name, "name": self.bdev_name,
            "uuid": self.uuid, "read_only": self.read_only})
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Subtype {
    Discovery,
    Nvme,
}

impl Subtype {
    pub fn name(self) -> &'static str {
        match self {
            Subtype::Discovery => "Discovery",
            Subtype::Nvme => "NVMe",
        }
    }
}

/// A connected controller, as the protocol code reports it ([`Subsystems::connect_controller`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControllerInfo {
    pub cntlid: u16,
    pub hostnqn: String,
    pub hostid: String,
}

/// A connected queue pair ([`Subsystems::add_qpair`]); qid 0 is the admin queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QpairInfo {
    pub cntlid: u16,
    pub qid: u16,
    pub listen_address: ListenAddress,
    pub peer_address: String,
}

/// One subsystem, cloned out of the table by [`Subsystems::subsystem`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubsystemView {
    pub nqn: String,
    pub subtype: Subtype,
    pub serial_number: String,
    pub model_number: String,
    pub allow_any_host: bool,
    pub max_namespaces: u32,
    pub hosts: Vec<String>,
    pub listeners: Vec<ListenAddress>,
    /// By nsid, ascending.
    pub namespaces: Vec<NamespaceView>,
}

impl SubsystemView {
    /// Whether a host may connect: any host to the discovery subsystem; to an NVM
    /// subsystem, any host when `allow_any_host`, else the listed ones.
    pub fn host_allowed(&self, hostnqn: &str) -> bool {
        self.subtype == Subtype::Discovery
            || self.allow_any_host
            || self.hosts.iter().any(|h| h == hostnqn)
    }
}

/// What the control plane keeps of a subsystem: its settings, and the connections the
/// protocol code reported.
#[derive(Clone)]
struct Subsystem {
    view: SubsystemView,
    controllers: Vec<ControllerInfo>,
    qpairs: Vec<QpairInfo>,
}

impl Subsystem {
    fn new(nqn: &str, subtype: Subtype) -> Subsystem {
        Subsystem {
            view: SubsystemView {
                nqn: nqn.to_string(),
                subtype,
                serial_number: DEFAULT_SERIAL_NUMBER.into(),
                model_number: DEFAULT_MODEL_NUMBER.into(),
                allow_any_host: subtype == Subtype::Discovery,
                max_namespaces: DEFAULT_MAX_NAMESPACES,
                hosts: Vec::new(),
                listeners: Vec::new(),
                namespaces: Vec::new(),
            },
            controllers: Vec::new(),
            qpairs: Vec::new(),
        }
    }

    fn to_json(&self) -> Value {
        let v = &self.view;
        let listen: Vec<Value> = v.listeners.iter().map(ListenAddress::to_json).collect();
        let hosts: Vec<Value> = v.hosts.iter().map(|h| json!({ "nqn": h })).collect();
        if v.subtype == Subtype::Discovery {
            return json!({"nqn": v.nqn, "subtype": v.subtype.name(),
                "listen_addresses": listen, "allow_any_host": true, "hosts": hosts});
        }
        json!({"nqn": v.nqn, "subtype": v.subtype.name(), "listen_addresses": listen,
            "allow_any_host": v.allow_any_host, "hosts": hosts,
            "serial_number": v.serial_number, "model_number": v.model_number,
            "max_namespaces": v.max_namespaces, "min_cntlid": 1, "max_cntlid": MAX_CNTLID,
            "namespaces": v.namespaces.iter().map(NamespaceView::to_json).collect::<Vec<_>>()})
    }

    fn claim_user(nqn: &str, nsid: u32) -> String {
        format!("NVMe-oF subsystem '{nqn}' nsid {nsid}")
    }

    fn busy_if_connected(&self, what: &str) -> Result<(), NvmfError> {
        if self.controllers.is_empty() {
            return Ok(());
        }
        Err(NvmfError::Busy(format!(
            "{what}: {} controller(s) are connected to '{}'; disconnect them first",
            self.controllers.len(),
            self.view.nqn
        )))
    }
}

struct State {
    transport: Option<TransportOptions>,
    /// In creation order; the discovery subsystem first.
    subsystems: Vec<Subsystem>,
    generation: u64,
}

impl State {
    fn find(&self, nqn: &str) -> Result<&Subsystem, NvmfError> {
        self.subsystems
            .iter()
            .find(|s| s.view.nqn == nqn)
            .ok_or_else(|| NvmfError::NotFound(format!("subsystem '{nqn}'")))
    }

    fn find_mut(&mut self, nqn: &str) -> Result<&mut Subsystem, NvmfError> {
        self.subsystems
            .iter_mut()
            .find(|s| s.view.nqn == nqn)
            .ok_or_else(|| NvmfError::NotFound(format!("subsystem '{nqn}'")))
    }

    /// An NVM subsystem by NQN; the discovery subsystem is refused for `what`.
    fn nvm_mut(&mut self, nqn: &str, what: &str) -> Result<&mut Subsystem, NvmfError> {
        if nqn == DISCOVERY_NQN {
            return Err(invalid(
                "nqn",
                format!("the discovery subsystem takes listeners only, not {what}"),
            ));
        }
        self.find_mut(nqn)
    }

    /// How many subsystems listen on `address`.
    fn listening_on(&self, address: &ListenAddress) -> usize {
        self.subsystems
            .iter()
            .filter(|s| s.view.listeners.contains(address))
            .count()
    }
}

/// The NVMe-oF target's subsystems; one per engine, shared as an `Arc`.
pub struct Subsystems {
    registry: Arc<BdevRegistry>,
    state: RwLock<State>,
    binder: RwLock<Option<Arc<dyn ListenerBinder>>>,
    factory: RwLock<Option<BinderFactory>>,
}

impl Subsystems {
    pub fn new(registry: Arc<BdevRegistry>) -> Subsystems {
        Subsystems {
            registry,
            state: RwLock::new(State {
                transport: None,
                subsystems: vec![Subsystem::new(DISCOVERY_NQN, Subtype::Discovery)],
                generation: 0,
            }),
            binder: RwLock::new(None),
            factory: RwLock::new(None),
        }
    }

    /// Installs what makes the target when the transport is created.
    pub fn set_binder_factory(&self, factory: BinderFactory) {
        *self.factory.write().unwrap_or_else(|p| p.into_inner()) = Some(factory);
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Installs the transport's socket side; addresses already listed are opened now (all or
    /// nothing).
    pub fn set_binder(&self, binder: Arc<dyn ListenerBinder>) -> Result<(), NvmfError> {
        let state = self.read();
        let mut opened: Vec<ListenAddress> = Vec::new();
        for address in state.subsystems.iter().flat_map(|s| &s.view.listeners) {
            if opened.contains(address) {
                continue;
            }
            if let Err(reason) = binder.listen(address) {
                for a in &opened {
                    binder.stop_listening(a);
                }
                return Err(NvmfError::Listen {
                    address: address.socket_address(),
                    reason,
                });
            }
            opened.push(address.clone());
        }
        *self.binder.write().unwrap_or_else(|p| p.into_inner()) = Some(binder);
        Ok(())
    }

    fn binder(&self) -> Option<Arc<dyn ListenerBinder>> {
        self.binder
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    // ---- the transport

    /// `nvmf_create_transport`: once, as in SPDK.
    pub fn create_transport(&self, options: TransportOptions) -> Result<(), NvmfError> {
        let options = options.checked()?;
        let mut state = self.write();
        if state.transport.is_some() {
            return Err(NvmfError::Exists(format!(
                "the {} transport",
                options.trtype
            )));
        }
        // The target first: a transport that cannot serve is not created.
        let factory = self.factory.read().unwrap_or_else(|p| p.into_inner());
        let binder = match factory.as_ref().map(|f| f(&options)) {
            Some(Ok(b)) => Some(b),
            Some(Err(reason)) => {
                return Err(NvmfError::Listen {
                    address: format!("the {} transport", options.trtype),
                    reason,
                })
            }
            None => None,
        };
        drop(factory);
        log::info!("nvmf: {} transport created", options.trtype);
        state.transport = Some(options);
        state.generation += 1;
        drop(state);
        if let Some(binder) = binder {
            // No listener exists before the transport: nothing to open yet.
            self.set_binder(binder)?;
        }
        Ok(())
    }

    /// The transport's options, once created.
    pub fn transport(&self) -> Option<TransportOptions> {
        self.read().transport.clone()
    }

    // ---- subsystems

    pub fn create_subsystem(&self, p: SubsystemParams) -> Result<(), NvmfError> {
        check_nqn("nqn", &p.nqn)?;
        if p.nqn == DISCOVERY_NQN {
            return Err(invalid(
                "nqn",
                "the discovery subsystem always exists; it cannot be created",
            ));
        }
        let text = |param: &'static str, v: &str, max: usize| {
            let ok =
                !v.is_empty() && v.len() <= max && v.bytes().all(|b| (0x20..=0x7e).contains(&b));
            if ok {
                Ok(())
            } else {
                Err(invalid(
                    param,
                    format!("'{v}' must be 1 to {max} printable ASCII characters"),
                ))
            }
        };
        if let Some(s) = &p.serial_number {
            text("serial_number", s, SERIAL_NUMBER_BYTES)?;
        }
        if let Some(m) = &p.model_number {
            text("model_number", m, MODEL_NUMBER_BYTES)?;
        }
        let max_namespaces = p.max_namespaces.unwrap_or(DEFAULT_MAX_NAMESPACES);
        if !(1..=MAX_NAMESPACES).contains(&max_namespaces) {
            return Err(invalid(
                "max_namespaces",
                format!("{max_namespaces} is not within 1..={MAX_NAMESPACES}"),
            ));
        }
        let mut state = self.write();
        if state.find(&p.nqn).is_ok() {
            return Err(NvmfError::Exists(format!("subsystem '{}'", p.nqn)));
        }
        if state.subsystems.len() >= MAX_SUBSYSTEMS {
            return Err(NvmfError::Limit(format!(
                "at most {MAX_SUBSYSTEMS} subsystems (the discovery subsystem included)"
            )));
        }
        let mut s = Subsystem::new(&p.nqn, Subtype::Nvme);
        if let Some(serial) = p.serial_number {
            s.view.serial_number = serial;
        }
        if let Some(model) = p.model_number {
            s.view.model_number = model;
        }
        s.view.allow_any_host = p.allow_any_host;
        s.view.max_namespaces = max_namespaces;
        state.subsystems.push(s);
        state.generation += 1;
        log::info!("nvmf: subsystem '{}' created", p.nqn);
        Ok(())
    }

    /// Deletes a subsystem with no controller connected: its listeners close (where no
    /// other subsystem listens on them) and its namespaces' bdevs are released.
    pub fn delete_subsystem(&self, nqn: &str) -> Result<(), NvmfError> {
        if nqn == DISCOVERY_NQN {
            return Err(invalid(
                "nqn",
                "the discovery subsystem always exists; it cannot be deleted",
            ));
        }
        let mut state = self.write();
        let index = state
            .subsystems
            .iter()
            .position(|s| s.view.nqn == nqn)
            .ok_or_else(|| NvmfError::NotFound(format!("subsystem '{nqn}'")))?;
        state.subsystems[index].busy_if_connected("cannot delete it")?;
        let gone = state.subsystems.remove(index);
        if let Some(binder) = self.binder() {
            for address in &gone.view.listeners {
                if state.listening_on(address) == 0 {
                    binder.stop_listening(address);
                }
            }
        }
        for ns in &gone.view.namespaces {
            self.registry
                .release(&ns.bdev_name, &Subsystem::claim_user(nqn, ns.nsid));
        }
        state.generation += 1;
        log::info!("nvmf: subsystem '{nqn}' deleted");
        Ok(())
    }

    // ---- namespaces

    /// Adds a namespace on `bdev_name` (claiming it); returns its nsid, the one asked for or
    /// the lowest free one.
    pub fn add_namespace(&self, nqn: &str, p: NamespaceParams) -> Result<u32, NvmfError> {
        if let Some(uuid) = &p.uuid {
            check_uuid(uuid).map_err(|_| {
                invalid(
                    "namespace.uuid",
                    format!("'{uuid}' is not of the form xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx"),
                )
            })?;
        }
        let mut state = self.write();
        let s = state.nvm_mut(nqn, "namespaces")?;
        let max = s.view.max_namespaces;
        let taken = |nsid: u32| s.view.namespaces.iter().any(|n| n.nsid == nsid);
        let nsid = match p.nsid {
            Some(nsid) if nsid == 0 || nsid > max => {
                return Err(invalid(
                    "namespace.nsid",
                    format!("{nsid} is not within 1..={max} (the subsystem's max_namespaces)"),
                ))
            }
            Some(nsid) if taken(nsid) => {
                return Err(NvmfError::Exists(format!("nsid {nsid} in '{nqn}'")))
            }
            Some(nsid) => nsid,
            None => (1..=max).find(|&n| !taken(n)).ok_or_else(|| {
                NvmfError::Limit(format!(
                    "'{nqn}' has all of its max_namespaces ({max}) namespaces"
                ))
            })?,
        };
        let (bdev, b) = self
            .registry
            .lookup(&p.bdev_name)
            .ok_or_else(|| BdevError::NotFound(p.bdev_name.clone()))?;
        let info = b.info();
        // Said before the uuid clash it would also be.
        if let Some(twin) = s.view.namespaces.iter().find(|n| n.bdev == bdev) {
            return Err(BdevError::InUse {
                name: p.bdev_name,
                user: Subsystem::claim_user(nqn, twin.nsid),
            }
            .into());
        }
        let uuid = p
            .uuid
            .unwrap_or_else(|| info.uuid.clone())
            .to_ascii_lowercase();
        if let Some(twin) = s.view.namespaces.iter().find(|n| n.uuid == uuid) {
            return Err(NvmfError::Exists(format!(
                "uuid {uuid} (nsid {} in '{nqn}')",
                twin.nsid
            )));
        }
        // The last check, and the only step that changes anything outside this table.
        self.registry
            .claim(&p.bdev_name, &Subsystem::claim_user(nqn, nsid))?;
        let ns = NamespaceView {
            nsid,
            bdev,
            bdev_name: p.bdev_name.clone(),
            uuid,
            block_size: info.block_size,
            num_blocks: info.num_blocks,
            supported: info.supported,
            read_only: p.read_only,
        };
        let at = s.view.namespaces.partition_point(|n| n.nsid < nsid);
        s.view.namespaces.insert(at, ns);
        state.generation += 1;
        log::info!("nvmf: '{nqn}' nsid {nsid} serves bdev '{}'", p.bdev_name);
        Ok(nsid)
    }

    pub fn remove_namespace(&self, nqn: &str, nsid: u32) -> Result<(), NvmfError> {
        let mut state = self.write();
        let s = state.nvm_mut(nqn, "namespaces")?;
        let at = s
            .view
            .namespaces
            .iter()
            .position(|n| n.nsid == nsid)
            .ok_or_else(|| NvmfError::NotFound(format!("nsid {nsid} in '{nqn}'")))?;
        s.busy_if_connected("cannot remove a namespace")?;
        let ns = s.view.namespaces.remove(at);
        self.registry
            .release(&ns.bdev_name, &Subsystem::claim_user(nqn, nsid));
        state.generation += 1;
        log::info!("nvmf: '{nqn}' nsid {nsid} removed");
        Ok(())
    }

    // ---- hosts

    pub fn add_host(&self, nqn: &str, host: &str) -> Result<(), NvmfError> {
        check_nqn("host", host)?;
        let mut state = self.write();
        let s = state.nvm_mut(nqn, "hosts")?;
        if s.view.hosts.iter().any(|h| h == host) {
            return Err(NvmfError::Exists(format!("host '{host}' in '{nqn}'")));
        }
        if s.view.hosts.len() >= MAX_HOSTS {
            return Err(NvmfError::Limit(format!(
                "'{nqn}' has {MAX_HOSTS} hosts, the most a subsystem may list"
            )));
        }
        s.view.hosts.push(host.to_string());
        state.generation += 1;
        Ok(())
    }

    pub fn remove_host(&self, nqn: &str, host: &str) -> Result<(), NvmfError> {
        let mut state = self.write();
        let s = state.nvm_mut(nqn, "hosts")?;
        let at = s
            .view
            .hosts
            .iter()
            .position(|h| h == host)
            .ok_or_else(|| NvmfError::NotFound(format!("host '{host}' in '{nqn}'")))?;
        if !s.view.allow_any_host && s.controllers.iter().any(|c| c.hostnqn == host) {
            return Err(NvmfError::Busy(format!(
                "host '{host}' has a controller connected to '{nqn}'; disconnect it first"
            )));
        }
        s.view.hosts.remove(at);
        state.generation += 1;
        Ok(())
    }

    pub fn set_allow_any_host(&self, nqn: &str, allow: bool) -> Result<(), NvmfError> {
        let mut state = self.write();
        let s = state.nvm_mut(nqn, "allow_any_host")?;
        if !allow {
            if let Some(c) = s
                .controllers
                .iter()
                .find(|c| !s.view.hosts.contains(&c.hostnqn))
            {
                return Err(NvmfError::Busy(format!(
                    "host '{}', not listed, has a controller connected to '{nqn}'; disconnect \
                     it or add the host first",
                    c.hostnqn
                )));
            }
        }
        s.view.allow_any_host = allow;
        state.generation += 1;
        Ok(())
    }

    // ---- listeners

    /// Adds a listener (the discovery subsystem takes them too). The TCP transport must
    /// exist, as in SPDK; the binder, if installed, opens the address if no subsystem
    /// listens there yet.
    pub fn add_listener(&self, nqn: &str, address: ListenAddress) -> Result<(), NvmfError> {
        let address = address.checked()?;
        let mut state = self.write();
        if state.transport.is_none() {
            return Err(NvmfError::NoTransport(address.trtype));
        }
        let s = state.find(nqn)?;
        if s.view.listeners.contains(&address) {
            return Err(NvmfError::Exists(format!(
                "listener {} in '{nqn}'",
                address.socket_address()
            )));
        }
        if s.view.listeners.len() >= MAX_LISTENERS {
            return Err(NvmfError::Limit(format!(
                "'{nqn}' has {MAX_LISTENERS} listeners, the most a subsystem may have"
            )));
        }
        if state.listening_on(&address) == 0 {
            if let Some(binder) = self.binder() {
                binder
                    .listen(&address)
                    .map_err(|reason| NvmfError::Listen {
                        address: address.socket_address(),
                        reason,
                    })?;
            }
        }
        log::info!("nvmf: '{nqn}' listens on {}", address.socket_address());
        state.find_mut(nqn)?.view.listeners.push(address);
        state.generation += 1;
        Ok(())
    }

    pub fn remove_listener(&self, nqn: &str, address: ListenAddress) -> Result<(), NvmfError> {
        let address = address.checked()?;
        let mut state = self.write();
        let s = state.find_mut(nqn)?;
        let at = s
            .view
            .listeners
            .iter()
            .position(|l| *l == address)
            .ok_or_else(|| {
                NvmfError::NotFound(format!("listener {} in '{nqn}'", address.socket_address()))
            })?;
        if let Some(q) = s.qpairs.iter().find(|q| q.listen_address == address) {
            return Err(NvmfError::Busy(format!(
                "controller {} has queue pairs on {} in '{nqn}'; disconnect it first",
                q.cntlid,
                address.socket_address()
            )));
        }
        s.view.listeners.remove(at);
        if state.listening_on(&address) == 0 {
            if let Some(binder) = self.binder() {
                binder.stop_listening(&address);
            }
        }
        state.generation += 1;
        Ok(())
    }

    // ---- lookups for the protocol code

    /// Changes with every change to the table (not with connections coming and going).
    pub fn generation(&self) -> u64 {
        self.read().generation
    }

    pub fn subsystem(&self, nqn: &str) -> Option<SubsystemView> {
        self.read().find(nqn).ok().map(|s| s.view.clone())
    }

    /// Whether `hostnqn` may connect to `nqn`: `NotFound` for an unknown subsystem,
    /// `HostNotAllowed` for a host it does not list.
    pub fn check_host(&self, nqn: &str, hostnqn: &str) -> Result<(), NvmfError> {
        let state = self.read();
        if state.find(nqn)?.view.host_allowed(hostnqn) {
            Ok(())
        } else {
            Err(NvmfError::HostNotAllowed {
                nqn: nqn.into(),
                host: hostnqn.into(),
            })
        }
    }

    pub fn namespace(&self, nqn: &str, nsid: u32) -> Option<NamespaceView> {
        let state = self.read();
        let s = state.find(nqn).ok()?;
        s.view.namespaces.iter().find(|n| n.nsid == nsid).cloned()
    }

    /// A subsystem's namespaces, by nsid, ascending.
    pub fn namespaces(&self, nqn: &str) -> Option<Vec<NamespaceView>> {
        self.read()
            .find(nqn)
            .ok()
            .map(|s| s.view.namespaces.clone())
    }

    pub fn listeners(&self, nqn: &str) -> Option<Vec<ListenAddress>> {
        self.read().find(nqn).ok().map(|s| s.view.listeners.clone())
    }

    /// Every address some subsystem listens on, each once.
    pub fn listen_addresses(&self) -> Vec<ListenAddress> {
        let state = self.read();
        let mut all: Vec<ListenAddress> = Vec::new();
        for a in state.subsystems.iter().flat_map(|s| &s.view.listeners) {
            if !all.contains(a) {
                all.push(a.clone());
            }
        }
        all
    }

    /// The discovery log's entries for `hostnqn`: every NVM subsystem it may connect to,
    /// once per listener.
    pub fn discovery_entries(&self, hostnqn: &str) -> Vec<(String, ListenAddress)> {
        let state = self.read();
        state
            .subsystems
            .iter()
            .filter(|s| s.view.subtype == Subtype::Nvme && s.view.host_allowed(hostnqn))
            .flat_map(|s| {
                s.view
                    .listeners
                    .iter()
                    .map(|l| (s.view.nqn.clone(), l.clone()))
            })
            .collect()
    }

    // ---- JSON

    /// `nvmf_get_subsystems`: all, or the one named.
    pub fn subsystems_json(&self, nqn: Option<&str>) -> Result<Value, NvmfError> {
        let state = self.read();
        match nqn {
            Some(n) => Ok(json!([state.find(n)?.to_json()])),
            None => Ok(Value::Array(
                state.subsystems.iter().map(Subsystem::to_json).collect(),
            )),
        }
    }

    /// `nvmf_get_transports`.
    pub fn transports_json(&self) -> Value {
        match &self.read().transport {
            Some(t) => json!([t]),
            None => json!([]),
        }
    }

    /// `nvmf_subsystem_get_controllers`, in SPDK's shape.
    pub fn controllers_json(&self, nqn: &str) -> Result<Value, NvmfError> {
        let state = self.read();
        let s = state.find(nqn)?;
        Ok(Value::Array(
            s.controllers
                .iter()
                .map(|c| {
                    let io = s
                        .qpairs
                        .iter()
                        .filter(|q| q.cntlid == c.cntlid && q.qid > 0)
                        .count();
                    json!({"cntlid": c.cntlid, "hostnqn": c.hostnqn, "hostid": c.hostid,
                        "num_io_qpairs": io})
                })
                .collect(),
        ))
    }

    /// `nvmf_subsystem_get_qpairs`, in SPDK's shape.
    pub fn qpairs_json(&self, nqn: &str) -> Result<Value, NvmfError> {
        let state = self.read();
        Ok(Value::Array(
            state
                .find(nqn)?
                .qpairs
                .iter()
                .map(|q| {
                    json!({"cntlid": q.cntlid, "qid": q.qid, "state": "active",
                        "listen_address": q.listen_address.to_json(),
                        "peer_address": q.peer_address})
                })
                .collect(),
        ))
    }

    /// `nvmf_subsystem_get_listeners`, in SPDK's shape.
    pub fn listeners_json(&self, nqn: &str) -> Result<Value, NvmfError> {
        let state = self.read();
        Ok(Value::Array(
            state
                .find(nqn)?
                .view
                .listeners
                .iter()
                .map(|l| json!({ "address": l.to_json() }))
                .collect(),
        ))
    }

    /// The config entries that recreate the transport and every subsystem, in the order
    /// they must run: the transport, then each subsystem with its hosts, namespaces (with
    /// their nsid and uuid) and listeners, then the discovery subsystem's listeners.
    pub fn config_entries(&self) -> Vec<Value> {
        let state = self.read();
        let mut entries = Vec::new();
        if let Some(t) = &state.transport {
            entries.push(json!({"method": "nvmf_create_transport", "params": t}));
        }
        let mut discovery_listeners = Vec::new();
        for s in &state.subsystems {
            let v = &s.view;
            let listen = |a: &ListenAddress| {
                json!({"method": "nvmf_subsystem_add_listener",
                    "params": {"nqn": v.nqn, "listen_address": a.to_json()}})
            };
            if v.subtype == Subtype::Discovery {
                discovery_listeners.extend(v.listeners.iter().map(listen));
                continue;
            }
            entries.push(json!({"method": "nvmf_create_subsystem", "params": {
                "nqn": v.nqn, "serial_number": v.serial_number,
                "model_number": v.model_number, "allow_any_host": v.allow_any_host,
                "max_namespaces": v.max_namespaces}}));
            for h in &v.hosts {
                entries.push(json!({"method": "nvmf_subsystem_add_host",
                    "params": {"nqn": v.nqn, "host": h}}));
            }
            for n in &v.namespaces {
                entries.push(json!({"method": "nvmf_subsystem_add_ns", "params": {
                    "nqn": v.nqn, "namespace": {"nsid": n.nsid, "bdev_name": n.bdev_name,
                    "uuid": n.uuid, "read_only": n.read_only}}}));
            }
            entries.extend(v.listeners.iter().map(listen));
        }
        entries.extend(discovery_listeners);
        entries
    }
}

impl Drop for Subsystems {
    /// Closes what the binder opened.
    fn drop(&mut self) {
        if let Some(binder) = self.binder() {
            for a in self.listen_addresses() {
                binder.stop_listening(&a);
            }
        }
    }
}

#[cfg(test)]
mod tests;
