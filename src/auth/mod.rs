//! Who may connect and what they may do: the password file (and the
//! SCRAM-SHA-256 exchange that runs against it) and the ACL file. No I/O
//! beyond reading the files; the broker asks, these answer.

pub mod acl;
pub mod password;
pub mod scram;
pub mod throttle;
