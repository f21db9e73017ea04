//! Watchers: the sources of the agent's events. Each turns something that changed outside
//! the agent into a message on a channel the agent's event loop selects on; the loop
//! applies it to the node state and hands the [`crate::reconcile::Changes`] to the
//! reconciler.
//!
//! - [`spec`]: the standalone spec file, through inotify on its directory;
//! - [`netlink`]: the kernel's link deletions (pods whose veth vanished,
//!   [`crate::vanish`]) and neighbour changes on the uplink, through rtnetlink multicast;
//!
//! and, watched where they live: the Kubernetes reflectors ([`crate::k8s::K8sSource`]'s
//! `desired` watch channel), BGP's forwarding changes (the speaker's `fib_watch`), CNI
//! requests ([`crate::cni_server::PodOp`] on a channel).

pub mod netlink;
pub mod spec;
