//! Per-bdev I/O statistics, what SPDK's `bdev_get_iostat` reports.
//!
//! Each reactor keeps one [`IoStat`] per open channel and records every I/O its channel
//! returns: successful ones by type (count, bytes, latency total, min and max), failed ones
//! as errors. Requests refused before reaching the channel (out of range, unsupported) are
//! not device I/O and are not counted. The control plane sums the reactors' copies.

use super::{Completion, IoType};
use crate::time::Nanos;
use serde_json::{json, Map, Value};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoStat {
    pub ops: [u64; 5],
    pub bytes: [u64; 5],
    pub latency_ns: [u64; 5],
    /// 0 until an I/O of the type completes.
    pub min_latency_ns: [u64; 5],
    pub max_latency_ns: [u64; 5],
    pub errors: u64,
}

impl IoStat {
    /// Records one completion, `latency` after it was submitted (the caller computes it
    /// once for every statistic that needs it).
    #[inline]
    pub fn record(&mut self, c: &Completion, block_size: u32, latency: Nanos) {
        if !c.status.is_success() {
            self.errors += 1;
            return;
        }
        let t = c.io.io_type as usize;
        self.ops[t] += 1;
        self.bytes[t] += c.io.num_blocks as u64 * block_size as u64;
        self.latency_ns[t] += latency;
        if self.min_latency_ns[t] == 0 || latency < self.min_latency_ns[t] {
            self.min_latency_ns[t] = latency.max(1);
        }
        self.max_latency_ns[t] = self.max_latency_ns[t].max(latency);
    }

    /// Adds another reactor's statistics to these.
    pub fn merge(&mut self, other: &IoStat) {
        for t in 0..5 {
            self.ops[t] += other.ops[t];
            self.bytes[t] += other.bytes[t];
            self.latency_ns[t] += other.latency_ns[t];
            if other.min_latency_ns[t] != 0
                && (self.min_latency_ns[t] == 0 || other.min_latency_ns[t] < self.min_latency_ns[t])
            {
                self.min_latency_ns[t] = other.min_latency_ns[t];
            }
            self.max_latency_ns[t] = self.max_latency_ns[t].max(other.max_latency_ns[t]);
        }
        self.errors += other.errors;
    }

    /// SPDK's field names (latency in ticks of 1 ns), plus flush and write-zeroes, which
    /// SPDK does not report, under names of the same shape.
    pub fn to_json(&self, name: &str) -> Value {
        let mut m = Map::new();
        m.insert("name".into(), json!(name));
        for t in IoType::ALL {
            let i = t as usize;
            let (bytes_key, ops_key) = match t {
                IoType::Read => ("bytes_read", "num_read_ops"),
                IoType::Write => ("bytes_written", "num_write_ops"),
                IoType::Unmap => ("bytes_unmapped", "num_unmap_ops"),
                IoType::WriteZeroes => ("bytes_zeroed", "num_write_zeroes_ops"),
                IoType::Flush => ("", "num_flush_ops"),
            };
            if !bytes_key.is_empty() {
                m.insert(bytes_key.into(), json!(self.bytes[i]));
            }
            m.insert(ops_key.into(), json!(self.ops[i]));
            let n = t.name();
            m.insert(format!("{n}_latency_ticks"), json!(self.latency_ns[i]));
            m.insert(
                format!("max_{n}_latency_ticks"),
                json!(self.max_latency_ns[i]),
            );
            m.insert(
                format!("min_{n}_latency_ticks"),
                json!(self.min_latency_ns[i]),
            );
        }
        m.insert("num_io_errors".into(), json!(self.errors));
        Value::Object(m)
    }
}
