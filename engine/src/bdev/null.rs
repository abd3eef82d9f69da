//! The `null` bdev: completes every I/O at once and moves no data. Reads leave the buffer as
//! it was. It measures the framework's own cost per I/O.

use super::{
    check_block_size, check_num_blocks, check_uuid, new_uuid, Bdev, BdevChannel, BdevError,
    BdevInfo, Completion, DoneQueue, IoRequest, IoStatus, IoTypeSet,
};
use crate::time::Nanos;
use serde::Deserialize;
use serde_json::json;

/// SPDK's product name for this backend; `bdev_get_bdevs` shows it and delete methods check it.
pub const PRODUCT_NAME: &str = "Null disk";

/// `bdev_null_create` parameters (SPDK's names).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NullCreateParams {
    pub name: String,
    pub num_blocks: u64,
    pub block_size: u32,
    #[serde(default)]
    pub uuid: Option<String>,
}

pub struct NullBdev {
    info: BdevInfo,
}

impl NullBdev {
    pub fn create(p: &NullCreateParams) -> Result<NullBdev, BdevError> {
        if p.name.is_empty() {
            return Err(BdevError::invalid("name", "must not be empty"));
        }
        check_block_size(p.block_size)?;
        check_num_blocks(p.num_blocks, p.block_size)?;
        if let Some(u) = &p.uuid {
            check_uuid(u)?;
        }
        Ok(NullBdev {
            info: BdevInfo {
                name: p.name.clone(),
                product_name: PRODUCT_NAME,
                block_size: p.block_size,
                num_blocks: p.num_blocks,
                uuid: p.uuid.clone().unwrap_or_else(new_uuid),
                supported: IoTypeSet::all(),
            },
        })
    }
}

impl Bdev for NullBdev {
    fn info(&self) -> &BdevInfo {
        &self.info
    }

    fn open_channel(&self) -> Result<Box<dyn BdevChannel>, BdevError> {
        Ok(Box::new(NullChannel {
            done: DoneQueue::with_capacity(256),
        }))
    }

    fn config_entry(&self) -> serde_json::Value {
        json!({"method": "bdev_null_create", "params": {
            "name": self.info.name, "num_blocks": self.info.num_blocks,
            "block_size": self.info.block_size, "uuid": self.info.uuid}})
    }
}

struct NullChannel {
    done: DoneQueue,
}

impl BdevChannel for NullChannel {
    #[inline]
    fn submit(&mut self, io: IoRequest, _now: Nanos) -> Result<(), IoRequest> {
        self.done.push(io, IoStatus::Success);
        Ok(())
    }

    #[inline]
    fn poll(&mut self, _now: Nanos, max: usize, out: &mut Vec<Completion>) -> usize {
        self.done.drain_into(max, out)
    }

    fn inflight(&self) -> usize {
        self.done.len()
    }
}
