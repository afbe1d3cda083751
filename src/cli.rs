//! The command line (SPEC §2.1) and its offline commands. Exit codes: 0 ok, 2 bad config or
//! usage, 1 runtime failure. `keys …` and `tokens …` work on the store directly (WAL and a busy
//! timeout let them run beside a live server); a running server picks their changes up at its
//! next start — use the admin API for changes that must take effect at once.

use crate::admin::ops::{Control, OpError};
use crate::config::units::parse_duration;
use crate::config::Loaded;
use crate::fleet::WireChange;
use crate::pool::clock::rfc3339;
use crate::pool::{Clock, Reason, Status, SystemClock};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(name = "ollama-pool", version, about = "Pools many upstream LLM API keys behind one endpoint")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct ConfigArg {
    /// Config file (YAML).
    #[arg(short = 'c', long = "config", default_value = "conf/ollama-pool.yaml")]
    pub config: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy.
    Serve {
        #[command(flatten)]
        config: ConfigArg,
        /// Detach and run in the background (pingora daemon mode; see server.pid_file).
        #[arg(short, long)]
        daemon: bool,
        /// Take over the listeners of a running instance (zero-downtime upgrade; see server.upgrade_sock).
        #[arg(short, long)]
        upgrade: bool,
    },
    /// Validate a config file: exit 0, or print every problem with its YAML path and exit 2.
    Check {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Ask the running server to re-read its config file (through its admin API): prints what
    /// applied and what needs a restart, or the problems (exit 2; nothing changed).
    Reload {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Manage upstream keys in the store.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Manage client tokens in the store.
    #[command(subcommand)]
    Tokens(TokensCommand),
    /// Work on stores as a whole.
    #[command(subcommand)]
    Store(StoreCommand),
    /// Usage report from the store: requests, errors and tokens by day, client, provider and
    /// model. While a server runs, the store is up to `store.flush_interval` behind it (the
    /// admin API's `GET /admin/usage` is not).
    Usage {
        #[command(flatten)]
        config: ConfigArg,
        /// First day (YYYY-MM-DD, UTC); default: 29 days before --to.
        #[arg(long)]
        from: Option<String>,
        /// Last day (YYYY-MM-DD, UTC); default: today.
        #[arg(long)]
        to: Option<String>,
        /// Group by these fields (comma-separated: day, client, provider, model); default: all.
        #[arg(long)]
        by: Option<String>,
        #[arg(long)]
        client: Option<String>,
        #[arg(long)]
        provider: Option<String>,
        #[arg(long)]
        model: Option<String>,
        #[arg(long, value_enum, default_value_t = UsageFormat::Table)]
        format: UsageFormat,
    },
    /// See it work without upstream keys: the proxy in front of a simulated upstream, a
    /// scripted burst explained in plain words, then serving on loopback until Ctrl-C.
    Demo {
        /// The proxy's port on 127.0.0.1 (0 = any free port).
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// The admin API's port on 127.0.0.1 (default: the proxy's port + 1).
        #[arg(long)]
        admin_port: Option<u16>,
        /// Exit after the scripted burst instead of serving until Ctrl-C.
        #[arg(long)]
        exit_after_script: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Copy keys (provider, labels, state, counters), tokens and usage from the store of one
    /// config to the store of another (e.g. SQLite to Redis). Running it again changes nothing.
    Migrate {
        /// The config whose store is read.
        #[arg(long)]
        from: PathBuf,
        /// The config whose store is written.
        #[arg(long)]
        to: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum UsageFormat {
    Table,
    Csv,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Import a key file (ollama.txt formats or JSON).
    Import {
        #[command(flatten)]
        config: ConfigArg,
        /// Probe each new key (GET /api/tags as the key) and add only valid ones.
        #[arg(long)]
        validate: bool,
        /// Report what would happen; write nothing.
        #[arg(long)]
        dry_run: bool,
        /// The provider the keys belong to (default: the first / `default`).
        #[arg(long)]
        provider: Option<String>,
        path: PathBuf,
    },
    /// List stored keys (masked).
    List {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Disable a key, for a while (--for 2h) or until enabled.
    Disable {
        #[command(flatten)]
        config: ConfigArg,
        id: String,
        #[arg(long = "for")]
        for_: Option<String>,
    },
    /// Enable a disabled key.
    Enable {
        #[command(flatten)]
        config: ConfigArg,
        id: String,
    },
    /// Remove a key from the store.
    Remove {
        #[command(flatten)]
        config: ConfigArg,
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokensCommand {
    /// Create a client token and print it (the only time it is shown).
    Create {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        name: String,
        /// e.g. 30d, 12h
        #[arg(long)]
        expires_in: Option<String>,
        /// Comma-separated model allow-list.
        #[arg(long, value_delimiter = ',')]
        models: Vec<String>,
        /// Requests per minute.
        #[arg(long)]
        rpm: Option<u32>,
        /// Budget: tokens (prompt + completion) per minute.
        #[arg(long)]
        tpm: Option<u64>,
        /// Budget: tokens per UTC day.
        #[arg(long)]
        daily_tokens: Option<u64>,
        /// Budget: tokens per UTC calendar month.
        #[arg(long)]
        monthly_tokens: Option<u64>,
    },
    /// List client tokens (names and ids; never the tokens).
    List {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Revoke a client token.
    Revoke {
        #[command(flatten)]
        config: ConfigArg,
        id: String,
    },
}

/// Loads a config, printing each problem on its own line.
pub fn load(path: &std::path::Path) -> Option<Loaded> {
    match crate::config::load(path) {
        Ok(l) => Some(l),
        Err(errors) => {
            print_problems(path, &errors);
            None
        }
    }
}

/// `check`'s second half: the files the config points at must be readable; then the warnings.
pub fn report_files(path: &std::path::Path, loaded: &Loaded) -> ExitCode {
    let errors = loaded.check_files();
    if errors.is_empty() {
        let warnings = loaded.config.warnings();
        for w in &warnings {
            eprintln!("{}: warning: {w}", path.display());
        }
        match warnings.len() {
            0 => println!("{}: ok", path.display()),
            n => println!("{}: ok, {n} warning(s)", path.display()),
        }
        return ExitCode::SUCCESS;
    }
    print_problems(path, &errors);
    ExitCode::from(2)
}

fn print_problems(path: &std::path::Path, errors: &[crate::config::ConfigError]) {
    for e in errors {
        eprintln!("{}: {e}", path.display());
    }
    eprintln!("{}: {} problem(s)", path.display(), errors.len());
}

fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("ollama-pool: {message}");
    ExitCode::from(1)
}

fn usage(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("ollama-pool: {message}");
    ExitCode::from(2)
}

fn control(loaded: &Loaded) -> Result<Control, ExitCode> {
    let store = crate::app::open_store(loaded).map_err(fail)?;
    Ok(Control {
        store,
        runtime: None,
        providers: loaded.config.provider_entries().into_iter().map(|(_, p)| p.name).collect(),
        clients: None,
        clock: Arc::new(SystemClock),
        max_key_bytes: loaded.config.keys.max_key_bytes,
        fleet: None,
    })
}

fn duration(s: &Option<String>, flag: &str) -> Result<Option<Duration>, ExitCode> {
    s.as_deref().map(|s| parse_duration(s).map_err(|e| usage(format!("--{flag}: {e}")))).transpose()
}

fn op(e: OpError) -> ExitCode {
    match e {
        OpError::Invalid(m) => usage(m),
        e => fail(e),
    }
}

pub fn run_keys(cmd: KeysCommand) -> ExitCode {
    let (KeysCommand::Import { config, .. }
    | KeysCommand::List { config }
    | KeysCommand::Disable { config, .. }
    | KeysCommand::Enable { config, .. }
    | KeysCommand::Remove { config, .. }) = &cmd;
    let Some(loaded) = load(&config.config) else { return ExitCode::from(2) };
    let c = match control(&loaded) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let found = |ok: Result<bool, OpError>, id: &str, what: &str| match ok {
        Ok(true) => {
            println!("{id}: {what}");
            ExitCode::SUCCESS
        }
        Ok(false) => fail(format!("no key with id {id}")),
        Err(e) => op(e),
    };
    let now = SystemClock.now_ms();
    let moved = |id: &str, to: Status, until: u64| {
        vec![(
            stored_provider(&c, id),
            id.to_string(),
            WireChange::Moved { to: to as u8, reason: Reason::Manual as u8, until_ms: until },
        )]
    };
    match cmd {
        KeysCommand::Import { validate, dry_run, path, provider, .. } => {
            let code = import(&loaded, &c, &path, validate, dry_run, provider.as_deref());
            if code == ExitCode::SUCCESS && !dry_run {
                announce(&loaded, resync());
            }
            code
        }
        KeysCommand::List { .. } => list_keys(&c),
        KeysCommand::Disable { id, for_, .. } => match duration(&for_, "for") {
            Ok(d) => {
                let code = found(c.disable_key(&id, d), &id, "disabled");
                if code == ExitCode::SUCCESS {
                    announce(&loaded, moved(&id, Status::Disabled, d.map_or(0, |d| now + d.as_millis() as u64)));
                }
                code
            }
            Err(code) => code,
        },
        KeysCommand::Enable { id, .. } => {
            let code = found(c.enable_key(&id), &id, "enabled");
            if code == ExitCode::SUCCESS {
                announce(&loaded, moved(&id, Status::Active, 0));
            }
            code
        }
        KeysCommand::Remove { id, .. } => {
            let code = found(c.remove_key(&id), &id, "removed");
            if code == ExitCode::SUCCESS {
                announce(&loaded, resync());
            }
            code
        }
    }
}

/// The provider name a stored key's pool has (a key without one is the home provider's).
fn stored_provider(c: &Control, id: &str) -> String {
    let recorded = c.store.key(id).ok().flatten().map(|k| k.provider).unwrap_or_default();
    if !recorded.is_empty() {
        return recorded;
    }
    let home = c.providers.iter().find(|p| *p == crate::config::DEFAULT_PROVIDER).or(c.providers.first());
    home.cloned().unwrap_or_default()
}

/// "Reconcile with the store": what a change the instances cannot be told piece by piece
/// announces.
fn resync() -> Vec<(String, String, WireChange)> {
    vec![(String::new(), String::new(), WireChange::Resync)]
}

/// With a Redis store, tells the running instances what this command changed, so they apply it
/// now instead of at their next start. The change is in the store either way.
fn announce(loaded: &Loaded, changes: Vec<(String, String, WireChange)>) {
    let s = &loaded.config.store;
    let (crate::config::StoreKind::Redis, Some(url)) = (&s.kind, &s.url) else { return };
    if let Err(e) = crate::fleet::announce(url, &s.prefix, &changes) {
        eprintln!("ollama-pool: warning: the change is stored, but running instances were not told ({e}); they apply it when they next reconcile");
    }
}

fn import(
    loaded: &Loaded,
    c: &Control,
    path: &std::path::Path,
    validate: bool,
    dry_run: bool,
    provider: Option<&str>,
) -> ExitCode {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => return fail(format!("cannot read {}: {e}", path.display())),
    };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(e),
    };
    let result = rt.block_on(async {
        let stored_as = c.provider_name(provider)?;
        let prober = if validate {
            let entries = loaded.config.provider_entries();
            let (path, entry) =
                if stored_as.is_empty() { entries.first() } else { entries.iter().find(|(_, p)| p.name == stored_as) }
                    .cloned()
                    .ok_or_else(|| OpError::UnknownProvider(stored_as.clone()))?;
            let pool = Arc::new(crate::pool::Pool::new(Default::default(), Arc::new(SystemClock)));
            let p = crate::provider::Provider::build(&path, &entry, &loaded.config.health_check.probe, pool, None)
                .map_err(|e| OpError::Invalid(e.to_string()))?;
            p.upstream.resolve_now().await.map_err(|e| OpError::Invalid(format!("{path}: {e}")))?;
            let connector = Arc::new(pingora::connectors::http::Connector::new(None));
            Some(crate::health::Prober::for_provider(&p, connector, loaded.config.health_check.timeout.0))
        } else {
            None
        };
        let bar = indicatif::ProgressBar::hidden();
        if validate {
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            bar.set_style(
                indicatif::ProgressStyle::with_template("validating {bar:40} {pos}/{len} keys ({eta} left)")
                    .expect("valid template"),
            );
        }
        let progress = |done: usize, total: usize| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        };
        let r = c.import(&text, prober.as_ref(), dry_run, provider, &progress).await;
        bar.finish_and_clear();
        r
    });
    let report = match result {
        Ok(r) => r,
        Err(e) => return op(e),
    };
    let verb = if dry_run { "would add" } else { "added" };
    println!("{:<22} {}", verb, report.added);
    println!("{:<22} {}", "duplicates", report.duplicates);
    println!("{:<22} {}", "invalid lines", report.invalid.len());
    for bad in &report.invalid {
        println!("  line {:>6}: {}", bad.line, bad.reason);
    }
    if let Some(v) = &report.validated {
        println!("{:<22} {} valid, {} invalid", "validated", v.valid, v.invalid);
        for (cat, n) in &v.by_category {
            println!("  {cat:<20} {n}");
        }
    }
    ExitCode::SUCCESS
}

fn list_keys(c: &Control) -> ExitCode {
    let keys = match c.store.keys() {
        Ok(k) => k,
        Err(e) => return fail(e),
    };
    let now = SystemClock.now_ms();
    println!(
        "{:<12}  {:<9}  {:<11}  {:<20}  {:<10}  {:>9}  CREATED",
        "ID", "STATE", "KEY", "LABEL", "CATEGORY", "REQUESTS"
    );
    for k in &keys {
        let state = match (k.disabled_until_ms, k.expires_at_ms) {
            (_, Some(e)) if e <= now => "expired",
            (Some(0), _) => "disabled",
            (Some(u), _) if u > now => "disabled",
            _ => "enabled",
        };
        println!(
            "{:<12}  {:<9}  {:<11}  {:<20}  {:<10}  {:>9}  {}",
            k.id,
            state,
            k.secret.masked(),
            k.label.as_deref().unwrap_or("-"),
            k.category.as_deref().unwrap_or("-"),
            k.counters.requests,
            rfc3339(k.created_at_ms)
        );
    }
    println!("{} keys (parks and cooldowns live in the running server: see GET /admin/keys)", keys.len());
    ExitCode::SUCCESS
}

pub fn run_tokens(cmd: TokensCommand) -> ExitCode {
    let (TokensCommand::Create { config, .. } | TokensCommand::List { config } | TokensCommand::Revoke { config, .. }) =
        &cmd;
    let Some(loaded) = load(&config.config) else { return ExitCode::from(2) };
    let c = match control(&loaded) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match cmd {
        TokensCommand::Create { name, expires_in, models, rpm, tpm, daily_tokens, monthly_tokens, .. } => {
            let expires_in = match duration(&expires_in, "expires-in") {
                Ok(d) => d,
                Err(code) => return code,
            };
            let models: Vec<String> =
                models.into_iter().map(|m| m.trim().to_string()).filter(|m| !m.is_empty()).collect();
            let budgets = crate::usage::Limits { tpm, daily_tokens, monthly_tokens };
            match c.create_token(crate::admin::ops::TokenSpec { name, expires_in, models, rpm, budgets }) {
                Ok((t, token)) => {
                    announce(&loaded, resync());
                    eprintln!("token {} ({}) created; it is shown only this once:", t.id, t.name);
                    println!("{}", token.expose());
                    ExitCode::SUCCESS
                }
                Err(e) => op(e),
            }
        }
        TokensCommand::List { .. } => match c.store.tokens() {
            Ok(tokens) => {
                println!(
                    "{:<12}  {:<20}  {:<20}  {:<20}  {:>5}  {:<24}  MODELS",
                    "ID", "NAME", "CREATED", "EXPIRES", "RPM", "BUDGETS"
                );
                for t in &tokens {
                    let budgets: Vec<String> = crate::usage::BudgetKind::ALL
                        .iter()
                        .filter_map(|k| t.budgets.get(*k).map(|v| format!("{}={v}", k.as_str())))
                        .collect();
                    println!(
                        "{:<12}  {:<20}  {:<20}  {:<20}  {:>5}  {:<24}  {}",
                        t.id,
                        t.name,
                        rfc3339(t.created_at_ms),
                        t.expires_at_ms.map(rfc3339).unwrap_or_else(|| "never".into()),
                        t.rpm.map(|r| r.to_string()).unwrap_or_else(|| "-".into()),
                        if budgets.is_empty() { "-".to_string() } else { budgets.join(",") },
                        if t.models.is_empty() { "*".to_string() } else { t.models.join(",") }
                    );
                }
                ExitCode::SUCCESS
            }
            Err(e) => fail(e),
        },
        TokensCommand::Revoke { id, .. } => match c.revoke_token(&id) {
            Ok(true) => {
                announce(&loaded, resync());
                println!("{id}: revoked");
                ExitCode::SUCCESS
            }
            Ok(false) => fail(format!("no token with id {id}")),
            Err(e) => op(e),
        },
    }
}

/// `ollama-pool store migrate --from A --to B`.
pub fn run_store(cmd: StoreCommand) -> ExitCode {
    let StoreCommand::Migrate { from, to } = cmd;
    let (Some(a), Some(b)) = (load(&from), load(&to)) else { return ExitCode::from(2) };
    let (sa, sb) = (&a.config.store, &b.config.store);
    let same = sa.kind == sb.kind
        && match sa.kind {
            crate::config::StoreKind::Sqlite => a.resolve(&sa.path) == b.resolve(&sb.path),
            crate::config::StoreKind::Redis => sa.url == sb.url && sa.prefix == sb.prefix,
        };
    if same {
        return usage("--from and --to name the same store");
    }
    let (src, dst) = match (crate::app::open_store(&a), crate::app::open_store(&b)) {
        (Ok(s), Ok(d)) => (s, d),
        (Err(e), _) => return fail(format!("--from {}: {e}", from.display())),
        (_, Err(e)) => return fail(format!("--to {}: {e}", to.display())),
    };
    match crate::store::migrate::migrate(&*src, &*dst) {
        Ok(m) => {
            println!(
                "copied {} keys ({} new), {} tokens ({} new), {} usage rows the target lacked",
                m.keys, m.keys_new, m.tokens, m.tokens_new, m.usage_rows
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(format!("{e}; what was copied before stays, and running it again finishes the copy")),
    }
}

/// `ollama-pool usage -c FILE …`: the usage report, offline, from the store.
pub struct UsageArgs {
    pub from: Option<String>,
    pub to: Option<String>,
    pub by: Option<String>,
    pub client: Option<String>,
    pub provider: Option<String>,
    pub model: Option<String>,
    pub format: UsageFormat,
}

pub fn run_usage(loaded: &Loaded, a: UsageArgs) -> ExitCode {
    use crate::pool::calendar;
    use crate::usage::report;
    let today = calendar::day_of(SystemClock.now_ms());
    let filters = [a.client.as_deref(), a.provider.as_deref(), a.model.as_deref()];
    let q = match report::Query::parse(a.from.as_deref(), a.to.as_deref(), a.by.as_deref(), filters, today) {
        Ok(q) => q,
        Err(e) => {
            let flag = if e.param == "group_by" { "by" } else { e.param };
            return usage(format!("--{flag}: {}", e.message));
        }
    };
    let c = match control(loaded) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let rows = match c.store.usage(q.from, q.to) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    let r = report::build(&q, &rows);
    match a.format {
        UsageFormat::Table => print!("{}", r.to_table()),
        UsageFormat::Csv => print!("{}", r.to_csv()),
        UsageFormat::Json => println!("{}", serde_json::to_string_pretty(&r.to_json(&q)).unwrap_or_default()),
    }
    ExitCode::SUCCESS
}

/// `ollama-pool reload -c FILE`: `POST /admin/reload` on the running server's admin listener
/// (from the same config), and its answer in words.
pub fn run_reload(loaded: &Loaded) -> ExitCode {
    let Some(admin) = &loaded.config.admin else {
        return usage("reload needs the admin API (admin.listen, admin.token); or send the server SIGHUP");
    };
    let Some(token) = &admin.token else { return usage("admin.token: required") };
    let answer = match admin_post(&admin.listen, "/admin/reload", token) {
        Ok(a) => a,
        Err(e) => return fail(format!("cannot reach the admin API at {}: {e}", admin.listen)),
    };
    let (status, body) = answer;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    match status {
        200 => {
            println!("generation        {}", v["generation"]);
            let list = |k: &str| {
                v[k].as_array()
                    .map(|a| a.iter().filter_map(|s| s.as_str()).collect::<Vec<_>>().join(", "))
                    .unwrap_or_default()
            };
            println!("applied           {}", list("applied"));
            println!("restart required  {}", list("restart_required"));
            println!("keys joined       {}", v["keys_added"]);
            println!("keys left         {}", v["keys_removed"]);
            ExitCode::SUCCESS
        }
        400 => {
            for p in v["problems"].as_array().into_iter().flatten() {
                eprintln!("{}: {}", p["path"].as_str().unwrap_or(""), p["message"].as_str().unwrap_or(""));
            }
            eprintln!("ollama-pool: the config has problems; nothing changed");
            ExitCode::from(2)
        }
        s => fail(format!("the admin API answered {s}: {}", v["error"].as_str().unwrap_or(&body))),
    }
}

/// One `POST` with an empty body over plain HTTP/1.1 (the admin listener is loopback HTTP).
fn admin_post(addr: &str, path: &str, token: &crate::secret::Secret) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        token.expose()
    );
    s.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    // A chunked body: join the chunks (the admin API answers small JSON documents).
    let body = if text.to_ascii_lowercase().contains("transfer-encoding: chunked") { unchunk(&body) } else { body };
    Ok((status, body))
}

fn unchunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else { break };
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    out
}
