//! Readers of the data sources, one file per source: the offline stand-ins that `gralora fetch`
//! puts in the asset cache (pinned PyPI packages), read from there or from any directory
//! laid out the same way. Readers turn files into examples; the tasks in [`crate::tasks`] decide
//! what to train and evaluate on.

mod boolq;
pub mod commonsense;
mod files;
mod glue;
pub mod gsm8k;
mod rotten_tomatoes;
mod snli;

pub use boolq::read_boolq;
pub use commonsense::{McExample, read_mc};
pub use files::{
    BOOLQ_TRAIN, BOOLQ_VAL, Example, MRPC_DEV, RT_FILE, RTE_DEV, SNLI_TEST, SNLI_TRAIN, SST2_DEV,
    seeded_subset,
};
pub use glue::{read_arrow, read_glue_pairs, read_sst2_arrow};
pub use rotten_tomatoes::{normalise, read_rotten_tomatoes, remove_overlap};
pub use snli::read_snli;
