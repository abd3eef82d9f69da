//! What the `nvmf_*` methods take, each with its checks: NQNs, the transport's options, a
//! listener's address, a namespace and a subsystem. A checked value is in the one spelling
//! the registry stores and reports (`TCP`, `IPv4`, an address in its canonical text).

use super::{invalid, NvmfError, MAX_NQN_BYTES, UUID_NQN_PREFIX};
use crate::bdev::check_uuid;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::net::{Ipv4Addr, Ipv6Addr};

/// Checks an NQN (subsystem or host) against the NVMe base specification, 4.7: at most
/// [`MAX_NQN_BYTES`] of UTF-8, and either `nqn.2014-08.org.nvmexpress:uuid:` followed by a
/// UUID, or `nqn.yyyy-mm.` followed by a reverse domain name (labels of letters, digits and
/// hyphens, starting with a letter), optionally then `:` and any string.
pub fn check_nqn(param: &'static str, nqn: &str) -> Result<(), NvmfError> {
    let bad = |why: String| invalid(param, format!("'{nqn}' is not a valid NQN: {why}"));
    if nqn.len() > MAX_NQN_BYTES {
        return Err(bad(format!(
            "it is {} bytes, at most {MAX_NQN_BYTES}",
            nqn.len()
        )));
    }
    if nqn.chars().any(char::is_control) {
        return Err(bad("it holds a control character".into()));
    }
    if let Some(uuid) = nqn.strip_prefix(UUID_NQN_PREFIX) {
        return check_uuid(uuid).map_err(|_| {
            bad(format!(
                "after '{UUID_NQN_PREFIX}' must come a UUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)"
            ))
        });
    }
    let Some(rest) = nqn.strip_prefix("nqn.") else {
        return Err(bad("it must start with 'nqn.'".into()));
    };
    let date = rest.as_bytes();
    let date_ok = date.len() > 8
        && date[..4].iter().all(u8::is_ascii_digit)
        && date[4] == b'-'
        && date[5..7].iter().all(u8::is_ascii_digit)
        && date[7] == b'.'
        && matches!(
            &rest[5..7],
            "01" | "02" | "03" | "04" | "05" | "06" | "07" | "08" | "09" | "10" | "11" | "12"
        );
    if !date_ok {
        return Err(bad(
            "'nqn.' must be followed by a date yyyy-mm and '.' (as in nqn.2016-06.io.example:disk1)"
                .into(),
        ));
    }
    let domain = rest[8..].split(':').next().unwrap_or("");
    if domain.is_empty() {
        return Err(bad("the reverse domain name after the date is empty".into()));
    }
    for label in domain.split('.') {
        let ok = label
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic())
            && !label.ends_with('-')
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        if !ok {
            return Err(bad(format!(
                "'{domain}' is not a reverse domain name (each label letters, digits and \
                 hyphens, starting with a letter)"
            )));
        }
    }
    Ok(())
}

/// The transport's options: SPDK's `nvmf_create_transport` parameters for TCP, with its
/// defaults. The protocol code sizes queues, capsules and buffers from these.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransportOptions {
    pub trtype: String,
    pub max_queue_depth: u32,
    pub max_io_qpairs_per_ctrlr: u32,
    pub in_capsule_data_size: u32,
    pub max_io_size: u32,
    pub io_unit_size: u32,
    pub max_aq_depth: u32,
    pub num_shared_buffers: u32,
    pub buf_cache_size: u32,
    pub dif_insert_or_strip: bool,
    pub c2h_success: bool,
    pub sock_priority: u32,
    pub abort_timeout_sec: u32,
    pub zcopy: bool,
}

impl Default for TransportOptions {
    fn default() -> TransportOptions {
        TransportOptions {
            trtype: String::new(),
            max_queue_depth: 128,
            max_io_qpairs_per_ctrlr: 127,
            in_capsule_data_size: 4096,
            max_io_size: 131_072,
            io_unit_size: 131_072,
            max_aq_depth: 128,
            num_shared_buffers: 511,
            buf_cache_size: u32::MAX,
            dif_insert_or_strip: false,
            c2h_success: true,
            sock_priority: 0,
            abort_timeout_sec: 1,
            zcopy: false,
        }
    }
}

impl TransportOptions {
    /// Checks every option and spells `trtype` as SPDK reports it ("TCP").
    pub fn checked(mut self) -> Result<TransportOptions, NvmfError> {
        if self.trtype.is_empty() {
            return Err(invalid("trtype", "missing: the transport type, TCP"));
        }
        if !self.trtype.eq_ignore_ascii_case("tcp") {
            return Err(invalid(
                "trtype",
                format!("'{}': only TCP is supported", self.trtype),
            ));
        }
        self.trtype = "TCP".into();
        let range = |param: &'static str, v: u32, lo: u32, hi: u32| {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(invalid(param, format!("{v} is not within {lo}..={hi}")))
            }
        };
        range("max_queue_depth", self.max_queue_depth, 2, 4096)?;
        range("max_aq_depth", self.max_aq_depth, 2, 4096)?;
        range(
            "max_io_qpairs_per_ctrlr",
            self.max_io_qpairs_per_ctrlr,
            1,
            1024,
        )?;
        range(
            "in_capsule_data_size",
            self.in_capsule_data_size,
            0,
            131_072,
        )?;
        range("max_io_size", self.max_io_size, 4096, 4 << 20)?;
        range("io_unit_size", self.io_unit_size, 512, self.max_io_size)?;
        range("num_shared_buffers", self.num_shared_buffers, 1, 1 << 20)?;
        range("sock_priority", self.sock_priority, 0, 6)?;
        range("abort_timeout_sec", self.abort_timeout_sec, 0, 3600)?;
        if !self.in_capsule_data_size.is_multiple_of(16) {
            return Err(invalid(
                "in_capsule_data_size",
                format!(
                    "{} is not a multiple of 16 (Identify reports it in 16-byte units)",
                    self.in_capsule_data_size
                ),
            ));
        }
        if !self.max_io_size.is_multiple_of(self.io_unit_size)
            || self.max_io_size / self.io_unit_size > 16
        {
            return Err(invalid(
                "io_unit_size",
                format!(
                    "max_io_size {} must be 1 to 16 whole units of io_unit_size {}",
                    self.max_io_size, self.io_unit_size
                ),
            ));
        }
        Ok(self)
    }
}

/// A listener: SPDK's `listen_address` object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenAddress {
    pub trtype: String,
    #[serde(default = "default_adrfam")]
    pub adrfam: String,
    pub traddr: String,
    pub trsvcid: String,
}

fn default_adrfam() -> String {
    "IPv4".into()
}

impl ListenAddress {
    /// Checks the address and spells `trtype` and `adrfam` as SPDK reports them.
    pub fn checked(mut self) -> Result<ListenAddress, NvmfError> {
        if !self.trtype.eq_ignore_ascii_case("tcp") {
            return Err(invalid(
                "listen_address.trtype",
                format!("'{}': only TCP is supported", self.trtype),
            ));
        }
        self.trtype = "TCP".into();
        let v6 = match self.adrfam.to_ascii_lowercase().as_str() {
            "ipv4" => false,
            "ipv6" => true,
            _ => {
                return Err(invalid(
                    "listen_address.adrfam",
                    format!("'{}': TCP listens on IPv4 or IPv6", self.adrfam),
                ))
            }
        };
        self.adrfam = if v6 { "IPv6" } else { "IPv4" }.into();
        // In its canonical text, so that one address is one listener however it was written.
        let parsed = if v6 {
            self.traddr.parse::<Ipv6Addr>().map(|a| a.to_string())
        } else {
            self.traddr.parse::<Ipv4Addr>().map(|a| a.to_string())
        };
        match parsed {
            Ok(canonical) => self.traddr = canonical,
            Err(_) => {
                return Err(invalid(
                    "listen_address.traddr",
                    format!("'{}' is not an {} address", self.traddr, self.adrfam),
                ))
            }
        }
        match self.trsvcid.parse::<u16>() {
            Ok(port) if port > 0 && port.to_string() == self.trsvcid => Ok(self),
            _ => Err(invalid(
                "listen_address.trsvcid",
                format!("'{}' is not a TCP port (1 to 65535)", self.trsvcid),
            )),
        }
    }

    /// `traddr:trsvcid`, with IPv6 addresses in brackets: what a socket binds.
    pub fn socket_address(&self) -> String {
        if self.adrfam == "IPv6" {
            format!("[{}]:{}", self.traddr, self.trsvcid)
        } else {
            format!("{}:{}", self.traddr, self.trsvcid)
        }
    }

    pub(super) fn to_json(&self) -> Value {
        json!({"trtype": self.trtype, "adrfam": self.adrfam, "traddr": self.traddr,
            "trsvcid": self.trsvcid})
    }
}

/// What `nvmf_subsystem_add_ns` takes in its `namespace` object.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceParams {
    pub bdev_name: String,
    #[serde(default)]
    pub nsid: Option<u32>,
    #[serde(default)]
    pub uuid: Option<String>,
    /// tidepool's: the namespace refuses writes (SPDK has no such parameter).
    #[serde(default)]
    pub read_only: bool,
}

/// What `nvmf_create_subsystem` takes.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubsystemParams {
    pub nqn: String,
    #[serde(default)]
    pub serial_number: Option<String>,
    #[serde(default)]
    pub model_number: Option<String>,
    #[serde(default)]
    pub allow_any_host: bool,
    #[serde(default)]
    pub max_namespaces: Option<u32>,
}
