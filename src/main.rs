//! The `petrel` command: `serve` runs the broker, `passwd` edits a password
//! file, `streams` and `dlq` show a running broker's streams and dead
//! letters through its admin API, `ctl` its clients, sessions,
//! subscriptions, retained messages and bridges, `bench` runs the load
//! generator.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use petrel::Broker;
use petrel::config::{
    ADMIN_ADDRESS_VARIABLE, ADMIN_TOKEN_VARIABLE, DEFAULT_ADMIN_BIND, LogFormat, Settings,
};

#[derive(Parser)]
#[command(name = "petrel", version, about = "An MQTT 3.1.1 and 5.0 broker")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker.
    Serve(ServeArgs),
    /// Show a running broker's streams: partitions, end offsets, consumer
    /// groups, committed offsets and lag (through its admin API).
    Streams(AdminArgs),
    /// List consumer groups' dead letters, show one group's, or re-drive
    /// them into their stream (through the admin API).
    Dlq(DlqArgs),
    /// Inspect a running broker's clients, sessions, subscriptions,
    /// retained messages and bridges, disconnect clients and delete what is
    /// stale (through its admin API).
    Ctl(CtlArgs),
    /// Generate load against a running broker and report throughput and latency.
    Bench(petrel_bench::BenchArgs),
    /// Add a user to a password file, change its password or delete it, like
    /// mosquitto_passwd; new entries are argon2id plus SCRAM-SHA-256
    /// credentials.
    Passwd(PasswdArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Configuration file; without it the embedded default is used.
    #[arg(short, long)]
    config: Option<PathBuf>,
    /// Port of the first listener, overriding the configuration.
    #[arg(short, long)]
    port: Option<u16>,
    /// Directory for durable state, overriding the configuration.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[derive(clap::Args)]
struct DlqArgs {
    /// The consumer group, to show (or re-drive) its dead letters.
    #[arg(requires = "stream")]
    group: Option<String>,
    /// The stream of those dead letters.
    stream: Option<String>,
    /// Append the selected dead letters to the stream again and drop them
    /// from the queue (all of them unless narrowed down).
    #[arg(long, requires = "group")]
    redrive: bool,
    /// Only the dead letters of this key.
    #[arg(long, requires = "redrive")]
    key: Option<String>,
    /// Only those of this partition.
    #[arg(long, requires = "redrive")]
    partition: Option<u32>,
    /// Only offsets from this one on.
    #[arg(long, requires = "redrive")]
    from: Option<u64>,
    /// Only offsets up to this one.
    #[arg(long, requires = "redrive")]
    to: Option<u64>,
    #[command(flatten)]
    admin: AdminArgs,
}

#[derive(clap::Args)]
struct CtlArgs {
    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(Subcommand)]
enum CtlCommand {
    /// The broker at a glance: connections, sessions, message counts, the
    /// most subscribed filters, stream lag.
    Overview(AdminArgs),
    /// List clients: connected or not, user, subscriptions, queues.
    Clients(ListArgs),
    /// Show one client and its subscriptions.
    Client(ClientArgs),
    /// Disconnect a client (MQTT 5: DISCONNECT 0x98, Administrative
    /// action); its session stays.
    Kick(ClientArgs),
    /// List sessions: expiry, when they expire, queues.
    Sessions(ListArgs),
    /// Show one session: subscriptions, inflight messages, will.
    Session(ClientArgs),
    /// Delete a session as its expiry would, disconnecting its client
    /// first.
    DropSession(ClientArgs),
    /// List subscriptions, every client's or one client's.
    Subscriptions(SubscriptionArgs),
    /// List retained messages.
    Retained(RetainedArgs),
    /// Delete the retained message of a topic.
    DropRetained(TopicArgs),
    /// List bridges (`[[bridges]]`), or show one: connected or not,
    /// address, last error, queued, sent, received, dropped.
    Bridges(BridgeArgs),
}

#[derive(clap::Args)]
struct ListArgs {
    /// Connected clients only.
    #[arg(long, conflicts_with = "offline")]
    online: bool,
    /// Disconnected clients (kept sessions) only.
    #[arg(long)]
    offline: bool,
    /// Client ids starting with this.
    #[arg(long)]
    prefix: Option<String>,
    /// Rows at most, by client id (the broker shows 1000 unless told).
    #[arg(long)]
    limit: Option<usize>,
    #[command(flatten)]
    admin: AdminArgs,
}

#[derive(clap::Args)]
struct ClientArgs {
    /// The client id.
    client_id: String,
    #[command(flatten)]
    admin: AdminArgs,
}

#[derive(clap::Args)]
struct SubscriptionArgs {
    /// One client's subscriptions only.
    #[arg(long, value_name = "CLIENT_ID")]
    client: Option<String>,
    /// Rows at most.
    #[arg(long)]
    limit: Option<usize>,
    #[command(flatten)]
    admin: AdminArgs,
}

#[derive(clap::Args)]
struct RetainedArgs {
    /// Topics starting with this.
    #[arg(long)]
    prefix: Option<String>,
    /// Rows at most, by topic.
    #[arg(long)]
    limit: Option<usize>,
    #[command(flatten)]
    admin: AdminArgs,
}

#[derive(clap::Args)]
struct TopicArgs {
    /// The topic, exactly (no wildcards).
    topic: String,
    #[command(flatten)]
    admin: AdminArgs,
}

#[derive(clap::Args)]
struct BridgeArgs {
    /// One bridge only, by name.
    name: Option<String>,
    #[command(flatten)]
    admin: AdminArgs,
}

#[derive(clap::Args)]
struct PasswdArgs {
    /// Create the file, replacing any that exists.
    #[arg(short = 'c', long, conflicts_with = "delete")]
    create: bool,
    /// Take the password as the last argument instead of prompting for it;
    /// other users can see a command's arguments, so prefer the prompt.
    #[arg(short = 'b', long, conflicts_with = "delete")]
    batch: bool,
    /// Delete the user instead of setting its password.
    #[arg(short = 'D', long)]
    delete: bool,
    /// The password file.
    file: PathBuf,
    /// The user name; it may not contain ':'.
    user: String,
    /// The password, with -b.
    #[arg(required_if_eq("batch", "true"), requires = "batch")]
    password: Option<String>,
}

/// Where the admin API is, for the commands that use it.
#[derive(clap::Args)]
struct AdminArgs {
    /// Address of the broker's admin API (its `[admin] bind`).
    #[arg(long, value_name = "HOST:PORT", env = ADMIN_ADDRESS_VARIABLE,
          default_value_t = DEFAULT_ADMIN_BIND.to_string())]
    admin: String,
    /// Bearer token the admin API asks for (its `[admin] token`); prefer the
    /// environment variable, as other users can see a command's arguments.
    #[arg(long, env = ADMIN_TOKEN_VARIABLE, hide_env_values = true)]
    token: Option<String>,
    /// Print the API's JSON instead of tables.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match petrel::server::runtime() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("petrel: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Serve(args) => runtime.block_on(serve(args)),
        Command::Streams(args) => runtime.block_on(streams(args)),
        Command::Dlq(args) => runtime.block_on(dlq(args)),
        Command::Ctl(args) => runtime.block_on(ctl(args.command)),
        Command::Bench(args) => runtime
            .block_on(petrel_bench::run(args))
            .map_err(|error| error.to_string()),
        Command::Passwd(args) => passwd(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("petrel: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: ServeArgs) -> Result<(), String> {
    let mut settings = Settings::load(args.config.as_deref()).map_err(|e| e.to_string())?;
    if let Some(port) = args.port
        && let Some(first) = settings.listeners.first_mut()
    {
        first.bind.set_port(port);
    }
    if let Some(dir) = args.data_dir {
        settings.data_dir = dir;
    }
    let log_level = init_logging(&settings);
    std::fs::create_dir_all(&settings.data_dir).map_err(|error| {
        format!(
            "cannot create data_dir {}: {error}",
            settings.data_dir.display()
        )
    })?;
    let settings_for_reload = settings.clone();
    let broker = Broker::start(settings).await.map_err(|e| e.to_string())?;
    for addr in broker.local_addrs() {
        tracing::info!(%addr, "listening");
    }
    if let Some(addr) = broker.admin_addr() {
        tracing::info!(%addr, "admin API listening");
    }
    let reload = Reload {
        config: args.config.clone(),
        level: std::sync::Mutex::new(settings_for_reload.log.level.clone()),
        running: settings_for_reload,
        log_level,
    };
    wait_for_stop(&broker, &reload).await;
    tracing::info!("shutting down");
    broker.shutdown().await;
    Ok(())
}

async fn streams(args: AdminArgs) -> Result<(), String> {
    let body = petrel::admin::client::get(&args.admin, args.token.as_deref(), "/v1/streams")
        .await
        .map_err(|error| error.to_string())?;
    let text = render_or_json(args.json, &body, petrel::admin::render::streams)?;
    // Written rather than printed: `petrel streams | head` must end with an
    // error message, not a panic.
    std::io::stdout()
        .lock()
        .write_all(text.as_bytes())
        .map_err(|error| format!("cannot write the output: {error}"))
}

async fn dlq(args: DlqArgs) -> Result<(), String> {
    use petrel::admin::{client, render};
    let admin = &args.admin;
    let token = admin.token.as_deref();
    let failed = |error: client::ClientError| error.to_string();
    let text = match (&args.group, &args.stream) {
        (Some(group), Some(stream)) if args.redrive => {
            let mut query = Vec::new();
            if let Some(key) = &args.key {
                query.push(format!("key={}", percent_encode(key)));
            }
            for (name, value) in [
                ("partition", args.partition.map(u64::from)),
                ("from", args.from),
                ("to", args.to),
            ] {
                if let Some(value) = value {
                    query.push(format!("{name}={value}"));
                }
            }
            let path = format!(
                "/v1/dlq/{}/{}/redrive?{}",
                percent_encode(group),
                percent_encode(stream),
                query.join("&")
            );
            let body = client::post(&admin.admin, token, &path)
                .await
                .map_err(failed)?;
            if admin.json {
                format!("{}\n", String::from_utf8_lossy(&body))
            } else {
                let done: petrel::admin::dlq::Redriven =
                    serde_json::from_slice(&body).map_err(|error| {
                        format!("the admin API answered JSON this petrel cannot read: {error}")
                    })?;
                format!("re-drove {} dead letter(s) into {stream}\n", done.redriven)
            }
        }
        (Some(group), Some(stream)) => {
            let path = format!(
                "/v1/dlq/{}/{}",
                percent_encode(group),
                percent_encode(stream)
            );
            let body = client::get(&admin.admin, token, &path)
                .await
                .map_err(failed)?;
            render_or_json(admin.json, &body, render::dead_letters)?
        }
        _ => {
            let body = client::get(&admin.admin, token, "/v1/dlq")
                .await
                .map_err(failed)?;
            render_or_json(admin.json, &body, render::dead_letter_queues)?
        }
    };
    std::io::stdout()
        .lock()
        .write_all(text.as_bytes())
        .map_err(|error| format!("cannot write the output: {error}"))
}

/// `petrel ctl`: one request to the admin API, its answer as a table or
/// as the JSON it came as.
async fn ctl(command: CtlCommand) -> Result<(), String> {
    use petrel::admin::{client, render};
    enum Verb {
        Get,
        Post,
        Delete,
    }
    type Render = fn(&[u8]) -> Result<String, serde_json::Error>;
    let (admin, verb, path, render): (&AdminArgs, Verb, String, Render) = match &command {
        CtlCommand::Overview(admin) => (admin, Verb::Get, "/v1/overview".into(), render::overview),
        CtlCommand::Clients(list) => {
            let path = format!("/v1/clients{}", list.query());
            (&list.admin, Verb::Get, path, render::clients)
        }
        CtlCommand::Client(one) => {
            let path = format!("/v1/clients/{}", percent_encode(&one.client_id));
            (&one.admin, Verb::Get, path, render::client)
        }
        CtlCommand::Kick(one) => {
            let path = format!("/v1/clients/{}/disconnect", percent_encode(&one.client_id));
            (&one.admin, Verb::Post, path, render::disconnected)
        }
        CtlCommand::Sessions(list) => {
            let path = format!("/v1/sessions{}", list.query());
            (&list.admin, Verb::Get, path, render::sessions)
        }
        CtlCommand::Session(one) => {
            let path = format!("/v1/sessions/{}", percent_encode(&one.client_id));
            (&one.admin, Verb::Get, path, render::session)
        }
        CtlCommand::DropSession(one) => {
            let path = format!("/v1/sessions/{}", percent_encode(&one.client_id));
            (&one.admin, Verb::Delete, path, render::session_deleted)
        }
        CtlCommand::Subscriptions(args) => {
            let query = query(&[
                ("client", args.client.clone()),
                ("limit", args.limit.map(|n| n.to_string())),
            ]);
            let path = format!("/v1/subscriptions{query}");
            (&args.admin, Verb::Get, path, render::subscriptions)
        }
        CtlCommand::Retained(args) => {
            let query = query(&[
                ("prefix", args.prefix.clone()),
                ("limit", args.limit.map(|n| n.to_string())),
            ]);
            let path = format!("/v1/retained{query}");
            (&args.admin, Verb::Get, path, render::retained)
        }
        CtlCommand::DropRetained(args) => {
            let path = format!(
                "/v1/retained{}",
                query(&[("topic", Some(args.topic.clone()))])
            );
            (&args.admin, Verb::Delete, path, render::retained_deleted)
        }
        CtlCommand::Bridges(args) => match &args.name {
            Some(name) => {
                let path = format!("/v1/bridges/{}", percent_encode(name));
                (&args.admin, Verb::Get, path, render::bridge)
            }
            None => (
                &args.admin,
                Verb::Get,
                "/v1/bridges".into(),
                render::bridges,
            ),
        },
    };
    let (addr, token) = (admin.admin.as_str(), admin.token.as_deref());
    let body = match verb {
        Verb::Get => client::get(addr, token, &path).await,
        Verb::Post => client::post(addr, token, &path).await,
        Verb::Delete => client::delete(addr, token, &path).await,
    }
    .map_err(|error| error.to_string())?;
    let text = render_or_json(admin.json, &body, render)?;
    std::io::stdout()
        .lock()
        .write_all(text.as_bytes())
        .map_err(|error| format!("cannot write the output: {error}"))
}

impl ListArgs {
    fn query(&self) -> String {
        let online = match (self.online, self.offline) {
            (true, _) => Some("true".to_string()),
            (_, true) => Some("false".to_string()),
            _ => None,
        };
        query(&[
            ("online", online),
            ("prefix", self.prefix.clone()),
            ("limit", self.limit.map(|n| n.to_string())),
        ])
    }
}

/// `?name=value&...` of the pairs that have a value, values escaped; empty
/// when none has.
fn query(pairs: &[(&str, Option<String>)]) -> String {
    let given: Vec<String> = pairs
        .iter()
        .filter_map(|(name, value)| Some(format!("{name}={}", percent_encode(value.as_ref()?))))
        .collect();
    if given.is_empty() {
        String::new()
    } else {
        format!("?{}", given.join("&"))
    }
}

/// `petrel passwd`: changes one user and writes the whole file back in one
/// step, keeping every other line as it was.
fn passwd(args: PasswdArgs) -> Result<(), String> {
    use petrel::auth::password::{self, Credentials, PasswordFile, PasswordFileError};
    let path = args.file.display();
    password::check_user_name(&args.user).map_err(|error| format!("{path}: {error}"))?;
    let mut file = if args.create {
        PasswordFile::new()
    } else {
        PasswordFile::load(&args.file).map_err(|error| match error {
            PasswordFileError::Read { source, .. }
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                format!("password file {path} does not exist (-c creates it)")
            }
            other => other.to_string(),
        })?
    };
    if args.delete {
        if !file.delete(&args.user) {
            return Err(format!("user {:?} is not in {path}", args.user));
        }
    } else {
        let password = match args.password {
            Some(password) => password,
            None => read_password()?,
        };
        if password.is_empty() {
            return Err("refusing an empty password".to_string());
        }
        let credentials = Credentials::new(password.as_bytes()).map_err(|e| e.to_string())?;
        file.set(&args.user, credentials)
            .map_err(|error| format!("{path}: {error}"))?;
    }
    file.write(&args.file).map_err(|error| error.to_string())
}

/// Prompts twice on a terminal, without echo; otherwise reads one line, so
/// that a script can pipe the password in.
fn read_password() -> Result<String, String> {
    use std::io::{BufRead, IsTerminal};
    let read_line = || {
        let mut line = String::new();
        let read = std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|error| format!("cannot read the password: {error}"))?;
        if read == 0 {
            return Err("no password on standard input".to_string());
        }
        let end = line.trim_end_matches(['\n', '\r']).len();
        line.truncate(end);
        Ok(line)
    };
    if !std::io::stdin().is_terminal() {
        return read_line();
    }
    let prompt = |text: &str| {
        // Echo goes off before the prompt shows, so nothing typed after
        // seeing it can appear.
        #[cfg(unix)]
        let _echo_off = EchoOff::new()
            .map_err(|error| format!("cannot turn off the terminal's echo: {error}"))?;
        let mut stderr = std::io::stderr();
        let _ = write!(stderr, "{text}");
        let _ = stderr.flush();
        read_line()
    };
    let password = prompt("Password: ")?;
    if prompt("Reenter password: ")? != password {
        return Err("the passwords do not match".to_string());
    }
    Ok(password)
}

/// Standard input's terminal with echo off (but the newline still echoed),
/// restored when dropped.
#[cfg(unix)]
struct EchoOff(libc::termios);

#[cfg(unix)]
impl EchoOff {
    fn new() -> std::io::Result<EchoOff> {
        // SAFETY: termios is plain data, and tcgetattr fills it in before
        // anything reads it.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: the pointer is to a live termios; a bad descriptor is
        // reported through the return value.
        if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut saved) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut quiet = saved;
        quiet.c_lflag &= !libc::ECHO;
        quiet.c_lflag |= libc::ECHONL;
        // SAFETY: as above, with a termios the terminal itself gave.
        if unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &quiet) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(EchoOff(saved))
    }
}

#[cfg(unix)]
impl Drop for EchoOff {
    fn drop(&mut self) {
        // SAFETY: restores the settings read in `new`, on the same descriptor.
        unsafe {
            libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &self.0);
        }
    }
}

/// The API's JSON as it came, or rendered as tables.
fn render_or_json(
    json: bool,
    body: &[u8],
    render: fn(&[u8]) -> Result<String, serde_json::Error>,
) -> Result<String, String> {
    if json {
        return Ok(format!("{}\n", String::from_utf8_lossy(body)));
    }
    render(body)
        .map_err(|error| format!("the admin API answered JSON this petrel cannot read: {error}"))
}

/// A path segment or query value with everything but unreserved characters
/// escaped.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// Changes the log filter of the running process (SIGHUP).
type LogLevelHandle = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

fn init_logging(settings: &Settings) -> Option<LogLevelHandle> {
    let from_environment = std::env::var(petrel::config::LOG_FILTER_VARIABLE).is_ok();
    let filter = tracing_subscriber::EnvFilter::try_from_env(petrel::config::LOG_FILTER_VARIABLE)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&settings.log.level));
    // Colour only where a person reads it: escapes in a file or in the
    // journal are noise.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let base = tracing_subscriber::fmt().with_ansi(colour);
    let set_level = match settings.log.format {
        LogFormat::Human => {
            let builder = base.with_env_filter(filter).with_filter_reloading();
            let handle = builder.reload_handle();
            builder.init();
            level_setter(handle)
        }
        LogFormat::Json => {
            let builder = base.json().with_env_filter(filter).with_filter_reloading();
            let handle = builder.reload_handle();
            builder.init();
            level_setter(handle)
        }
    };
    // PETREL_LOG wins over the file, at start and on reload alike.
    (!from_environment).then_some(set_level)
}

fn level_setter<S: 'static>(
    handle: tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, S>,
) -> LogLevelHandle {
    Box::new(move |level: &str| {
        let filter = tracing_subscriber::EnvFilter::try_new(level).map_err(|e| e.to_string())?;
        handle.reload(filter).map_err(|e| e.to_string())
    })
}

/// What SIGHUP needs: where the configuration came from, what is running,
/// and the log filter's handle.
struct Reload {
    config: Option<PathBuf>,
    /// As started: what differs from it needs a restart.
    running: Settings,
    /// The log level in force.
    level: std::sync::Mutex<String>,
    log_level: Option<LogLevelHandle>,
}

impl Reload {
    /// Reads the configuration again and applies what can change while
    /// serving: the log level, certificates, the password file and the ACL.
    /// Other changes are refused until a restart; the log says which.
    fn apply(&self, broker: &Broker) {
        match Settings::load(self.config.as_deref()) {
            Err(error) => {
                tracing::error!(%error, "configuration not reloaded; nothing changed");
                return;
            }
            Ok(new) => {
                let mut level = self.level.lock().unwrap_or_else(|e| e.into_inner());
                if new.log.level != *level {
                    match &self.log_level {
                        Some(set) => match set(&new.log.level) {
                            Ok(()) => {
                                *level = new.log.level.clone();
                                tracing::info!(level = %new.log.level, "log level applied");
                            }
                            Err(error) => {
                                tracing::error!(%error, level = %new.log.level, "log level refused")
                            }
                        },
                        None => {
                            tracing::warn!("log level set by PETREL_LOG: the file's is not applied")
                        }
                    }
                }
                let restart_only = restart_only_changes(&self.running, &new);
                if !restart_only.is_empty() {
                    tracing::warn!(keys = ?restart_only, "changed in the configuration but applied only at the next start");
                }
            }
        }
        broker.reload();
    }
}

/// The settings that differ between `running` and `new` and cannot change
/// while serving.
fn restart_only_changes(running: &Settings, new: &Settings) -> Vec<&'static str> {
    let differs =
        |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") != format!("{b:?}");
    let mut keys = Vec::new();
    for (key, changed) in [
        ("listeners", differs(&running.listeners, &new.listeners)),
        ("limits", differs(&running.limits, &new.limits)),
        ("streams", differs(&running.streams, &new.streams)),
        ("bridges", differs(&running.bridges, &new.bridges)),
        ("durability", differs(&running.durability, &new.durability)),
        ("data_dir", differs(&running.data_dir, &new.data_dir)),
        ("admin", differs(&running.admin, &new.admin)),
        (
            "allow_anonymous",
            running.allow_anonymous != new.allow_anonymous,
        ),
        ("password_file", running.password_file != new.password_file),
        ("acl_file", running.acl_file != new.acl_file),
        ("log.format", differs(&running.log.format, &new.log.format)),
    ] {
        if changed {
            keys.push(key);
        }
    }
    keys
}

/// Waits for SIGTERM or SIGINT (Ctrl-C); each SIGHUP in between reloads
/// what can change at runtime.
async fn wait_for_stop(broker: &Broker, reload: &Reload) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut hangup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::hangup()),
        ) else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => return,
                _ = term.recv() => return,
                _ = hangup.recv() => reload.apply(broker),
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (broker, reload);
        let _ = tokio::signal::ctrl_c().await;
    }
}
