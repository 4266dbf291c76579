//! Where a published message goes: the subscription index (`+`, `#`,
//! `$share` groups) and the retained store.

mod index;
mod retained;

pub use index::{Match, Subscriber, SubscriptionIndex};
pub use retained::{Retained, RetainedTrie};
