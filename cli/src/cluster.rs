//! `ferrohsm cluster init | status` and `ferrohsm domain join`: a cluster of nodes whose tokens
//! live in etcd, sealed under a key derived from the security domain (docs/architecture.md §6).

use std::path::Path;
use std::sync::Arc;

use firmware_sim::cluster::{self, Cluster};
use firmware_sim::domain;

/// The etcd endpoints of `--etcd`: client URLs (`http://127.0.0.1:2379`), a bare `host:port`
/// meaning `http://host:port`.
pub(crate) fn endpoints(list: &[String]) -> Result<Vec<String>, String> {
    let out: Vec<String> = list
        .iter()
        .map(|e| e.trim())
        .filter(|e| !e.is_empty())
        .map(|e| {
            if e.contains("://") {
                e.to_owned()
            } else {
                format!("http://{e}")
            }
        })
        .collect();
    if let Some(bad) = out.iter().find(|e| !e.starts_with("http://")) {
        return Err(format!(
            "--etcd {bad}: use etcd's client URLs over http:// (bind etcd to loopback or a \
             private network; the values it holds are sealed, see the README)"
        ));
    }
    if out.is_empty() {
        return Err("--etcd: give the etcd members' client URLs, comma-separated".into());
    }
    Ok(out)
}

/// The home's domain key, or what to do to get one.
fn domain_key(home: &Path, why: &str) -> Result<domain::DomainKey, String> {
    domain::load(home)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("{} has no security domain: {why}", home.display()))
}

/// Joins the cluster `name` as this home's domain allows (checks the cluster's marker).
pub(crate) fn connect(home: &Path, etcd: &[String], name: &str) -> Result<Arc<Cluster>, String> {
    let key = domain_key(
        home,
        "a node unseals nothing without the cluster's domain; bring it with `ferrohsm domain \
         join --home NODEHOME --domain domain.json --key h1.key --key h2.key \
         --expect-fingerprint FP`",
    )?;
    Cluster::connect(&endpoints(etcd)?, name, &key).map_err(|e| e.to_string())
}

/// `cluster init`.
pub(crate) fn init(home: &Path, etcd: &[String], name: &str) -> Result<(), String> {
    let key = domain_key(
        home,
        "run `ferrohsm domain init` first (a cluster's keys derive from its domain, and new \
         nodes join with the holders' quorum)",
    )?;
    let created =
        Cluster::create(&endpoints(etcd)?, name, &key, home).map_err(|e| e.to_string())?;
    println!(
        "cluster {name}: created in etcd, domain {}; imported {} tokens from {}",
        key.id_hex(),
        created.imported.len(),
        home.display()
    );
    for slot in &created.imported {
        println!("  slot {slot}");
    }
    println!(
        "  nodes: `ferrohsm domain join` (with M holder keys), then `ferrohsm serve --cluster \
         {name} --etcd ...`"
    );
    Ok(())
}

/// `cluster status`.
pub(crate) fn status(etcd: &[String], name: &str, json: bool) -> Result<(), String> {
    let s = cluster::status(&endpoints(etcd)?, name).map_err(|e| e.to_string())?;
    if json {
        let members: Vec<_> = s
            .members
            .iter()
            .map(|m| match &m.status {
                Ok(version) => serde_json::json!({
                    "endpoint": m.endpoint, "healthy": true, "version": version,
                    "raft_index": m.raft_index, "leader": m.leader,
                }),
                Err(e) => serde_json::json!({
                    "endpoint": m.endpoint, "healthy": false, "error": e,
                }),
            })
            .collect();
        let nodes: Vec<_> = s
            .nodes
            .iter()
            .map(|n| {
                serde_json::json!({
                    "name": n.name, "applied": n.applied, "at": n.at, "listen": n.listen,
                })
            })
            .collect();
        let tokens: Vec<_> = s
            .tokens
            .iter()
            .map(|t| {
                serde_json::json!({
                    "slot": t.slot, "objects": t.objects, "revision": t.revision,
                })
            })
            .collect();
        let out = serde_json::json!({
            "cluster": name, "exists": s.domain.is_some(), "domain": s.domain,
            "revision": s.revision, "members": members, "nodes": nodes, "tokens": tokens,
        });
        println!("{out:#}");
        return Ok(());
    }
    match &s.domain {
        Some(d) => println!("cluster {name}: domain {d}, etcd revision {}", s.revision),
        None => println!("cluster {name}: not in etcd (create it with `ferrohsm cluster init`)"),
    }
    println!("etcd members:");
    for m in &s.members {
        match &m.status {
            Ok(v) => println!(
                "  {}: healthy, etcd {v}, raft index {}{}",
                m.endpoint,
                m.raft_index,
                if m.leader { ", leader" } else { "" }
            ),
            Err(e) => println!("  {}: DOWN ({e})", m.endpoint),
        }
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0));
    // What a node has to have applied: the latest change to any token.
    let latest = s.tokens.iter().map(|t| t.revision).max().unwrap_or(0);
    println!("nodes:");
    if s.nodes.is_empty() {
        println!("  (none has written a heartbeat)");
    }
    for n in &s.nodes {
        println!(
            "  {}: applied revision {} ({} revisions behind the tokens), heartbeat {}s ago, listening on {}",
            n.name,
            n.applied,
            (latest - n.applied).max(0),
            (now - n.at).max(0),
            if n.listen.is_empty() {
                "-".to_owned()
            } else {
                n.listen.join(", ")
            }
        );
    }
    println!("tokens:");
    if s.tokens.is_empty() {
        println!("  (none initialized)");
    }
    for t in &s.tokens {
        println!(
            "  slot {}: {} objects, last change at revision {}",
            t.slot, t.objects, t.revision
        );
    }
    Ok(())
}
