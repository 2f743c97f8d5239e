//! esfleet's wire formats. This crate only knows bytes and messages: no business logic.
//!
//! - [`etcdserverpb`] and [`mvccpb`]: the subset of etcd's v3 API that the coordinator
//!   serves, with etcd's package names and field numbers, so etcd clients interoperate.
//! - [`raft`]: the coordinators' private peer protocol.
//! - [`fleet`]: the esfleet API the CLI uses (`esfleet.v1.Fleet`).
//! - [`agent`]: what each agent serves (status, journal), reached through the coordinator.

#![allow(clippy::large_enum_variant, clippy::doc_lazy_continuation)]

pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}

pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}

/// The generated module tree must mirror the proto package (`esfleet.raft.v1`) for the
/// generated cross-package paths to resolve.
pub mod esfleet {
    pub mod raft {
        pub mod v1 {
            tonic::include_proto!("esfleet.raft.v1");
        }
    }
    pub mod v1 {
        tonic::include_proto!("esfleet.v1");
    }
    pub mod agent {
        pub mod v1 {
            tonic::include_proto!("esfleet.agent.v1");
        }
    }
}

pub use esfleet::agent::v1 as agent;
pub use esfleet::raft::v1 as raft;
pub use esfleet::v1 as fleet;
