//! The tasks: what a run trains and evaluates on, each a [`Workload`](crate::trainer::Workload)
//! of the trainer's one session. Encoder classification on the built-in GLUE-style tasks
//! ([`classification`], with k-fold cross-validation for the dev-only ones), decoder multiple
//! choice on the commonsense suite ([`multiple_choice`]), and GSM8K evaluation ([`gsm8k`]);
//! [`train`] and [`eval`] run any of them.

mod builtin;
pub mod classification;
pub mod gsm8k;
pub mod multiple_choice;
mod run;

pub use builtin::{TASKS, Task, TaskData};
pub use classification::{ClassifierWorkload, evaluate, load_head, pad_id, save_head, tokenize};
pub use multiple_choice::{MC_TASKS, McTask, MultipleChoiceWorkload, evaluate_mc, mc_tasks};
pub use run::{Finished, eval, train, validate};
