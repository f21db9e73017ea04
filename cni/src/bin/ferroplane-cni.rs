//! `ferroplane-cni`: the CNI plugin binary. Invoked by the container runtime with `CNI_*`
//! in the environment and the network configuration on stdin; prints the result (or the
//! spec's error JSON and exits non-zero).

use std::collections::HashMap;
use std::io::{Read, Write};

fn main() {
    let env: HashMap<String, String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("CNI_"))
        .collect();
    let mut stdin = Vec::new();
    // VERSION may come without stdin; any read error leaves an empty (invalid) config,
    // which the plugin reports as a decoding failure.
    if std::io::stdin().read_to_end(&mut stdin).is_err() {
        stdin.clear();
    }
    let outcome = ferroplane_cni::plugin::run(&env, &stdin);
    if let Some(v) = outcome.stdout {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{v}");
        let _ = out.flush();
    }
    std::process::exit(outcome.exit_code);
}
