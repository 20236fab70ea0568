//! The tasks: what a run trains and evaluates on, each a [`Workload`](crate::trainer::Workload)
//! of the trainer's one session. Encoder classification on the built-in GLUE-style tasks
//! ([`classification`], with k-fold cross-validation for the dev-only ones), decoder multiple
//! choice on the commonsense suite ([`multiple_choice`]), and GSM8K evaluation ([`gsm8k`]);
//! supervised fine-tuning of a decoder on the user's file ([`sft`]) — the user's labelled files
//! train a classifier through [`classification`] too; [`train`] and [`eval`] run any of them.

mod builtin;
pub mod classification;
pub mod gsm8k;
pub mod multiple_choice;
pub mod regression;
mod run;
pub mod sft;

pub use builtin::{TASKS, Task, TaskData};
pub use classification::{
    ClassifierWorkload, Labels, class_probabilities, class_scores, evaluate, load_head, pad_id,
    save_head, tokenize,
};
pub use multiple_choice::{MC_TASKS, McTask, MultipleChoiceWorkload, evaluate_mc, mc_tasks};
pub use run::{Finished, eval, eval_file, train, validate};
pub use sft::{Sample, SftEncoder, SftWorkload, Truncation, evaluate_lm, pack, pack_items};
