//! `ferrohsm tenant ...` and `ferrohsm audit show`: the tenants of a daemon's home, their
//! grants, and their usage logs (`bridge::tenant`).

use std::path::{Path, PathBuf};

use bridge::tenant::{self, Role, Tenant, Tenants};

#[derive(clap::Subcommand)]
pub(crate) enum TenantCommand {
    /// Add a tenant: its own slots and tokens, reached by the identities granted to it.
    Add {
        /// The daemon's home.
        #[arg(long, value_name = "DIR")]
        home: PathBuf,
        /// The tenant's name (letters, digits, '.', '_', '-').
        #[arg(long)]
        name: String,
        /// Let crypto users create, change and destroy token objects (default: officers only).
        #[arg(long)]
        users_create_keys: bool,
        #[command(flatten)]
        limits: LimitFlags,
    },
    /// Change a tenant's share of the daemon (from its next connections); 0 removes a limit.
    Set {
        #[arg(long, value_name = "DIR")]
        home: PathBuf,
        #[arg(long)]
        name: String,
        /// Let crypto users create token objects (true or false).
        #[arg(long, value_name = "BOOL")]
        users_create_keys: Option<bool>,
        #[command(flatten)]
        limits: LimitFlags,
    },
    /// Grant a role in a tenant to an identity (a TLS client certificate's NAME, or uid:N on
    /// the local socket); an identity may hold several roles, in one tenant only.
    Grant {
        #[arg(long, value_name = "DIR")]
        home: PathBuf,
        /// The tenant.
        #[arg(long)]
        name: String,
        /// The identity.
        #[arg(long)]
        identity: String,
        /// crypto-officer, crypto-user or auditor.
        #[arg(long)]
        role: String,
    },
    /// Take a role (or, without --role, every role) from an identity; its next connection
    /// gets the rest.
    Revoke {
        #[arg(long, value_name = "DIR")]
        home: PathBuf,
        #[arg(long)]
        name: String,
        #[arg(long)]
        identity: String,
        #[arg(long)]
        role: Option<String>,
    },
    /// List the tenants and their grants.
    List {
        #[arg(long, value_name = "DIR")]
        home: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove a tenant from the list; its tokens stay on disk (in HOME/tenants/NAME) unless
    /// --delete-tokens is given.
    Remove {
        #[arg(long, value_name = "DIR")]
        home: PathBuf,
        #[arg(long)]
        name: String,
        /// Also delete the tenant's tokens and usage log (cannot be undone).
        #[arg(long)]
        delete_tokens: bool,
    },
}

/// A tenant's limits (`bridge::tenant::Limits`), counted over all its connections.
#[derive(clap::Args)]
pub(crate) struct LimitFlags {
    /// Sessions open at once (one more: CKR_SESSION_COUNT).
    #[arg(long, value_name = "N")]
    max_sessions: Option<u32>,
    /// Operations running at once; more wait their turn (up to 10 s, then CKR_DEVICE_MEMORY).
    #[arg(long, value_name = "N")]
    max_concurrent: Option<u32>,
    /// Operations started per second on average; faster callers are slowed down.
    #[arg(long, value_name = "N")]
    ops_per_sec: Option<u32>,
    /// Operations that may start at once above the rate [default: --ops-per-sec].
    #[arg(long, value_name = "N")]
    burst: Option<u32>,
}

impl LimitFlags {
    /// `limits` with the flags given applied (0: no limit).
    fn apply(&self, limits: &mut tenant::Limits) {
        let set = |slot: &mut Option<u32>, flag: Option<u32>| {
            if let Some(n) = flag {
                *slot = (n > 0).then_some(n);
            }
        };
        set(&mut limits.max_sessions, self.max_sessions);
        set(&mut limits.max_concurrent, self.max_concurrent);
        set(&mut limits.ops_per_sec, self.ops_per_sec);
        set(&mut limits.burst, self.burst);
    }
}

fn describe(l: &tenant::Limits) -> String {
    let mut parts = Vec::new();
    for (name, v) in [
        ("max_sessions", l.max_sessions),
        ("max_concurrent", l.max_concurrent),
        ("ops_per_sec", l.ops_per_sec),
        ("burst", l.burst),
    ] {
        if let Some(v) = v {
            parts.push(format!("{name} {v}"));
        }
    }
    if parts.is_empty() {
        "no limits".into()
    } else {
        parts.join(", ")
    }
}

fn load(home: &Path) -> Result<Tenants, String> {
    if !home.is_dir() {
        return Err(format!(
            "{}: not a directory (give the daemon's --home)",
            home.display()
        ));
    }
    Tenants::load(home).map_err(|e| e.to_string())
}

fn save(home: &Path, t: &Tenants) -> Result<(), String> {
    t.save(home).map_err(|e| e.to_string())
}

fn role(text: &str) -> Result<Role, String> {
    Role::parse(text).ok_or_else(|| {
        format!("--role {text}: not a role (crypto-officer, crypto-user or auditor)")
    })
}

fn existing<'a>(t: &'a mut Tenants, name: &str) -> Result<&'a mut Tenant, String> {
    t.tenants.get_mut(name).ok_or_else(|| {
        format!("no tenant {name:?} (ferrohsm tenant list shows them; tenant add makes one)")
    })
}

pub(crate) fn run(command: TenantCommand) -> Result<(), String> {
    match command {
        TenantCommand::Add {
            home,
            name,
            users_create_keys,
            limits,
        } => {
            let mut t = load(&home)?;
            if !tenant::valid_name(&name) {
                return Err(format!(
                    "--name {name:?}: 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"
                ));
            }
            if t.tenants.contains_key(&name) {
                return Err(format!("tenant {name} exists already"));
            }
            let mut tenant = Tenant {
                users_create_keys,
                ..Tenant::default()
            };
            limits.apply(&mut tenant.limits);
            t.tenants.insert(name.clone(), tenant);
            tenant::prepare_home(&home, &name).map_err(|e| e.to_string())?;
            save(&home, &t)?;
            println!(
                "tenant {name} added; grant it identities with `ferrohsm tenant grant --home {} --name {name} --identity ID --role crypto-officer`",
                home.display()
            );
            Ok(())
        }
        TenantCommand::Set {
            home,
            name,
            users_create_keys,
            limits,
        } => {
            let mut t = load(&home)?;
            let tenant = existing(&mut t, &name)?;
            if let Some(yes) = users_create_keys {
                tenant.users_create_keys = yes;
            }
            limits.apply(&mut tenant.limits);
            let now = describe(&tenant.limits);
            save(&home, &t)?;
            println!("tenant {name}: {now} (from its next connections)");
            Ok(())
        }
        TenantCommand::Grant {
            home,
            name,
            identity,
            role: r,
        } => {
            let r = role(&r)?;
            let mut t = load(&home)?;
            if !tenant::valid_identity(&identity) {
                return Err(format!(
                    "--identity {identity:?}: a certificate NAME (letters, digits, '.', '_', '-') or uid:N"
                ));
            }
            if let Some((other, _, _)) = t.of(&identity).filter(|(o, _, _)| *o != name) {
                return Err(format!(
                    "{identity} belongs to tenant {other}: an identity serves one tenant (revoke it there first)"
                ));
            }
            existing(&mut t, &name)?
                .grants
                .entry(identity.clone())
                .or_default()
                .insert(r);
            save(&home, &t)?;
            println!(
                "{identity} is {} in tenant {name} (from its next connection)",
                r.name()
            );
            Ok(())
        }
        TenantCommand::Revoke {
            home,
            name,
            identity,
            role: r,
        } => {
            let r = r.as_deref().map(role).transpose()?;
            let mut t = load(&home)?;
            let tenant = existing(&mut t, &name)?;
            let Some(roles) = tenant.grants.get_mut(&identity) else {
                return Err(format!("{identity} holds no role in tenant {name}"));
            };
            match r {
                Some(r) => {
                    roles.remove(&r);
                }
                None => roles.clear(),
            }
            if roles.is_empty() {
                tenant.grants.remove(&identity);
            }
            save(&home, &t)?;
            println!("done (from {identity}'s next connection)");
            Ok(())
        }
        TenantCommand::List { home, json } => {
            let t = load(&home)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&t).map_err(|e| e.to_string())?
                );
                return Ok(());
            }
            if !t.any() {
                println!("no tenants: the daemon serves the home to every allowed peer");
            }
            for (name, tenant) in &t.tenants {
                println!(
                    "{name} ({}){}",
                    describe(&tenant.limits),
                    if tenant.users_create_keys {
                        " (crypto users may create token keys)"
                    } else {
                        ""
                    }
                );
                for (id, roles) in &tenant.grants {
                    let r: Vec<&str> = roles.iter().map(|r| r.name()).collect();
                    println!("  {id}: {}", r.join(", "));
                }
            }
            Ok(())
        }
        TenantCommand::Remove {
            home,
            name,
            delete_tokens,
        } => {
            let mut t = load(&home)?;
            existing(&mut t, &name)?;
            t.tenants.remove(&name);
            save(&home, &t)?;
            let dir = tenant::home_of(&home, &name);
            if delete_tokens {
                std::fs::remove_dir_all(&dir)
                    .or_else(|e| {
                        if e.kind() == std::io::ErrorKind::NotFound {
                            Ok(())
                        } else {
                            Err(e)
                        }
                    })
                    .map_err(|e| format!("{}: cannot delete: {e}", dir.display()))?;
                println!("tenant {name} removed, with its tokens and usage log");
            } else {
                println!(
                    "tenant {name} removed; its tokens stay in {} (tenant add {name} serves them again)",
                    dir.display()
                );
            }
            Ok(())
        }
    }
}

/// `ferrohsm audit show --home H --tenant T [--key LABEL] [--json]`: the tenant's usage log,
/// checked first (a broken chain is an error naming the line), then listed.
pub(crate) fn audit_show(
    home: &Path,
    name: &str,
    key: Option<&str>,
    json: bool,
) -> Result<(), String> {
    let path = tenant::audit_log_of(home, name);
    if !path.exists() {
        return Err(format!(
            "{}: no usage log (tenant {name} has not been used yet, or the --home is not the daemon's)",
            path.display()
        ));
    }
    bridge::audit::verify(&path).map_err(|(line, why)| {
        format!(
            "{}: line {line}: {why}: the log was changed after it was written",
            path.display()
        )
    })?;
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut rows = Vec::new();
    for line in text.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| format!("{}: {e}", path.display()))?;
        if let Some(k) = key {
            if v.get("label").and_then(serde_json::Value::as_str) != Some(k) {
                continue;
            }
        }
        rows.push(v);
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).map_err(|e| e.to_string())?
        );
        return Ok(());
    }
    let field = |v: &serde_json::Value, k: &str| {
        v.get(k)
            .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_owned))
            .unwrap_or_else(|| "-".into())
    };
    for v in &rows {
        println!(
            "{}\t{}\t{}\t{}\t{}\t{}",
            field(v, "time"),
            field(v, "who"),
            field(v, "function"),
            field(v, "mechanism"),
            field(v, "label"),
            field(v, "rv")
        );
    }
    Ok(())
}
