//! The `sipedge` command line.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clap::Parser;
use mimalloc::MiMalloc;
use sipedge::config::{
    BackendConfig, Config, DEFAULT_TOML, Driver, Listener, LogFormat, Scheduling,
};

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

/// A thread-per-core SIP edge proxy and load balancer.
///
/// With no arguments it runs on the built-in default configuration (see
/// `--print-default-config`). Command-line options override the configuration file.
#[derive(Debug, Clone, Parser)]
#[command(name = "sipedge", version, about, long_about = None)]
struct Cli {
    /// Read the configuration from this TOML file.
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,

    /// Validate a configuration file and exit (0 when valid, 2 with the error otherwise).
    #[arg(long, value_name = "FILE", conflicts_with = "print_default_config")]
    check_config: Option<PathBuf>,

    /// Print the built-in default configuration (TOML) and exit.
    #[arg(long)]
    print_default_config: bool,

    /// A SIP listener, `udp:IP:PORT` or `tcp:IP:PORT` (repeatable; replaces the file's list).
    #[arg(long, value_name = "PROTO:IP:PORT", value_parser = parse_listener)]
    listen: Vec<Listener>,

    /// A backend SIP URI such as `sip:10.0.0.7:5060;transport=tcp` (repeatable; replaces the
    /// file's list).
    #[arg(long, value_name = "SIP-URI", value_parser = parse_backend)]
    backend: Vec<BackendConfig>,

    /// Number of shards (threads, one per core); 0 means one per online CPU.
    #[arg(long, value_name = "N")]
    shards: Option<u16>,

    /// I/O driver: auto, io_uring or epoll.
    #[arg(long, value_name = "DRIVER", value_parser = parse_driver)]
    driver: Option<Driver>,

    /// CPU scheduling of the shard threads: batch or normal.
    #[arg(long, value_name = "POLICY", value_parser = parse_scheduling)]
    scheduling: Option<Scheduling>,

    /// Address of the metrics and admin HTTP endpoint.
    #[arg(long, value_name = "IP:PORT")]
    metrics: Option<SocketAddr>,

    /// Log level or tracing filter (error, warn, info, debug, trace, `sipedge=debug,info`).
    #[arg(long, value_name = "LEVEL")]
    log_level: Option<String>,

    /// Log format: text or json.
    #[arg(long, value_name = "FORMAT", value_parser = parse_log_format)]
    log_format: Option<LogFormat>,

    /// Seconds to keep serving dialogs after SIGTERM before exiting.
    #[arg(long, value_name = "SECS")]
    drain_grace: Option<u64>,

    /// Do not watch the configuration file: reload it only on SIGHUP.
    #[arg(long)]
    no_config_watch: bool,
}

/// Fingerprint (FNV-1a) of the configuration file's bytes as last loaded or tried, shared by
/// the reload path and the file watcher so that the same bytes are never loaded twice (a
/// SIGHUP sent right after an edit must not be followed by a second reload from the watcher).
static LAST_CONFIG_BYTES: AtomicU64 = AtomicU64::new(0);

/// How often the watcher looks at the configuration file.
const CONFIG_WATCH_INTERVAL: Duration = Duration::from_secs(1);

fn config_fingerprint(path: &Path) -> Option<u64> {
    std::fs::read(path)
        .ok()
        .map(|bytes| sipedge::shard::fnv1a64(&bytes))
}

/// Watches the configuration file and reloads it through the SIGHUP path when its bytes
/// change, so a reload by file edit is validated, applied and counted exactly like one by
/// signal (a broken file is refused and the running configuration stays). A change is acted
/// on only when two looks a second apart agree, so a file caught half-written is not loaded.
fn watch_config(path: PathBuf) {
    let mut previous = config_fingerprint(&path);
    loop {
        std::thread::sleep(CONFIG_WATCH_INTERVAL);
        let current = config_fingerprint(&path);
        if let Some(bytes) = current {
            if current == previous && bytes != LAST_CONFIG_BYTES.load(Ordering::SeqCst) {
                LAST_CONFIG_BYTES.store(bytes, Ordering::SeqCst);
                tracing::info!(file = %path.display(), "configuration file changed: reloading");
                if let Err(e) = signal_hook::low_level::raise(signal_hook::consts::SIGHUP) {
                    tracing::error!(error = %e, "cannot signal the reload");
                }
            }
        }
        previous = current;
    }
}

fn parse_listener(s: &str) -> Result<Listener, String> {
    s.parse()
}
fn parse_backend(s: &str) -> Result<BackendConfig, String> {
    s.parse()
}
fn parse_driver(s: &str) -> Result<Driver, String> {
    s.parse()
}
fn parse_scheduling(s: &str) -> Result<Scheduling, String> {
    s.parse()
}
fn parse_log_format(s: &str) -> Result<LogFormat, String> {
    s.parse()
}

impl Cli {
    /// Reads the file (if any), applies the command-line overrides and validates the result.
    fn load(&self) -> Result<Config, String> {
        let mut config = match &self.config {
            Some(path) => read_config(path)?,
            None => Config::default(),
        };
        if !self.listen.is_empty() {
            config.listen.clone_from(&self.listen);
        }
        if !self.backend.is_empty() {
            config.backends.clone_from(&self.backend);
        }
        if let Some(n) = self.shards {
            config.shards = (n != 0).then_some(n);
        }
        if let Some(d) = self.driver {
            config.driver = d;
        }
        if let Some(p) = self.scheduling {
            config.scheduling = p;
        }
        if let Some(m) = self.metrics {
            config.metrics = m;
        }
        if let Some(l) = &self.log_level {
            config.log.level.clone_from(l);
        }
        if let Some(f) = self.log_format {
            config.log.format = f;
        }
        if let Some(g) = self.drain_grace {
            config.drain_grace = std::time::Duration::from_secs(g);
        }
        config.validate().map_err(|e| e.to_string())?;
        Ok(config)
    }
}

fn read_config(path: &PathBuf) -> Result<Config, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Config::from_toml(&text).map_err(|e| format!("{}: {e}", path.display()))
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log.level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only on a terminal, and never when NO_COLOR is set (https://no-color.org):
    // journald and log shippers get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

fn main() -> ExitCode {
    // Before anything else allocates; logging is not up yet, so a refusal is reported below.
    let huge_pages = sipedge::runtime::disable_transparent_huge_pages();
    let cli = Cli::parse();
    if cli.print_default_config {
        print!("{DEFAULT_TOML}");
        return ExitCode::SUCCESS;
    }
    if let Some(path) = &cli.check_config {
        return match read_config(path) {
            Ok(_) => {
                println!("{}: configuration is valid", path.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
        };
    }
    let config = match cli.load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sipedge: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(&config);
    if let Err(e) = huge_pages {
        tracing::debug!(error = %e, "transparent huge pages stay on");
    }
    let reload_cli = cli.clone();
    let reloader: sipedge::runtime::Reloader = Box::new(move || {
        if let Some(bytes) = reload_cli.config.as_deref().and_then(config_fingerprint) {
            LAST_CONFIG_BYTES.store(bytes, Ordering::SeqCst);
        }
        reload_cli.load()
    });
    if let Some(path) = cli.config.clone().filter(|_| !cli.no_config_watch) {
        if let Some(bytes) = config_fingerprint(&path) {
            LAST_CONFIG_BYTES.store(bytes, Ordering::SeqCst);
        }
        let spawned = std::thread::Builder::new()
            .name("config-watch".into())
            .spawn(move || watch_config(path));
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot watch the configuration file; reload with SIGHUP");
        }
    }
    match sipedge::runtime::run(config, reloader) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "sipedge cannot run");
            eprintln!("sipedge: {e}");
            ExitCode::FAILURE
        }
    }
}
