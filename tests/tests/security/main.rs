//! Security suite: the dataplane as a security boundary on a node set up the way Kubernetes
//! nodes are (`net.ipv4.ip_forward=1`): fail closed while the agent is away, no spoofed
//! sources, no martians, conntrack that survives a SYN flood, no address hijack, listeners
//! that cannot be starved, CNI input refused before anything is allocated.
//! Root only (each test skips with a message otherwise). One module per concern.
mod cni_input;
mod fail_closed;
mod hijack;
mod listeners;
mod martians;
mod spoofing;
mod syn_flood;
