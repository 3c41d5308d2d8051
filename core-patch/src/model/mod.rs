//! The userspace model of the livepatch core (feature `model`): a model kernel that runs the
//! real algorithm of [`crate::module_notifier`], the scenario format, and the explorer that
//! runs every interleaving of a scenario and checks the invariants after every step.

pub mod explore;
pub mod kernel;
pub mod scenario;

pub use explore::{Explorer, Report, Violation};
pub use kernel::Binding;
pub use scenario::Scenario;
