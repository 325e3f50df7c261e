//! `keyless`: flags and environment -> tracing -> Config -> run until SIGTERM/SIGINT.
#![forbid(unsafe_code)]
// Start-up code, but it reports every failure by name all the same (STYLE.md 11).
#![deny(clippy::unwrap_used, clippy::expect_used)]

use clap::{Parser, Subcommand};
use keyless::config::{Config, Flags, LogFormat, Target};
use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// Connections the kernel may queue before keyless accepts them: a burst of a thousand
/// clients must not meet tokio's default of 1,024 (each overflow costs its client a
/// one-second SYN retransmission). The kernel caps it at `net.core.somaxconn`.
const LISTEN_BACKLOG: u32 = 4096;

/// Binds `addr` with [`LISTEN_BACKLOG`].
fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Every stream holds two descriptors (the client's and Azure's): lift the soft open-files
/// limit to the hard one, then grow the kernel's descriptor table once, now, rather than
/// stall every accept while it grows past 256, 512, 1,024 descriptors under load (an RCU
/// grace period each time in a multi-threaded process).
fn prepare_descriptors() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => {
            let high = limit.min(8192).saturating_sub(1);
            if let Ok(high) = i32::try_from(high)
                && high > 64
            {
                // The duplicate is closed at once; the grown table stays.
                let _ = rustix::io::fcntl_dupfd_cloexec(std::io::stderr(), high);
            }
        }
        Err(e) => eprintln!("keyless: cannot raise the open-files limit: {e}"),
    }
}

/// Any OpenAI client -> Azure OpenAI, with Microsoft Entra ID tokens instead of keys.
#[derive(Parser)]
#[command(name = "keyless", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Serve(Flags),
    /// Check the configuration, the credential and the endpoint, and explain what is wrong.
    Check(keyless::check::CheckArgs),
    /// Read an app key on stdin and print its SHA-256 (64 lowercase hex digits), the
    /// `key_sha256` of an `[[apps]]` entry. A trailing newline is not part of the key.
    HashKey,
    /// Run only the Azure OpenAI simulator (a fake upstream for tests and benchmarks).
    Simulator {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8788")]
        listen: SocketAddr,
        /// Also serve an App Service-style managed identity endpoint at /msi/token that
        /// requires this `x-identity-header` value.
        #[arg(
            long,
            env = "KEYLESS_SIMULATOR_IDENTITY_HEADER",
            value_name = "SECRET",
            hide_env_values = true
        )]
        identity_header: Option<String>,
        /// A deployment the simulated resource has (repeatable). With none, every name is a
        /// deployment; with some, any other is Azure's 404 `DeploymentNotFound`.
        #[arg(long = "deployment", value_name = "NAME")]
        deployments: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `serve` relays requests on worker threads of its own (`--workers`); this runtime
    // only accepts connections, refreshes tokens, answers the admin listener and (with
    // `--simulate`) runs the simulator: one thread is plenty.
    let runtime = match &cli.command {
        Command::Serve(_) => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    }
    .enable_all()
    .build();
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("keyless: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        match cli.command {
            Command::Serve(flags) => serve(flags).await,
            Command::Check(args) => {
                init_tracing(args.flags.log_format.unwrap_or_default());
                keyless::check::run(&args).await
            }
            Command::HashKey => hash_key(),
            Command::Simulator {
                listen,
                identity_header,
                deployments,
            } => simulator(listen, identity_header, deployments).await,
        }
    })
}

/// `keyless hash-key`: stdin -> SHA-256 hex. The key is never echoed.
fn hash_key() -> ExitCode {
    let mut key = Vec::new();
    if let Err(e) = std::io::Read::read_to_end(&mut std::io::stdin(), &mut key) {
        eprintln!("keyless: cannot read the key from stdin: {e}");
        return ExitCode::FAILURE;
    }
    // `echo KEY |` adds a newline; a key never ends with one.
    while key.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        key.pop();
    }
    if key.is_empty() {
        eprintln!("keyless: no key on stdin (try: printf %s \"$KEY\" | keyless hash-key)");
        return ExitCode::from(2);
    }
    println!("{}", keyless::apps::sha256_hex(&key));
    ExitCode::SUCCESS
}

async fn serve(flags: Flags) -> ExitCode {
    let config = match Config::load(&flags) {
        Ok(config) => config,
        Err(e) => {
            init_tracing(flags.log_format.unwrap_or_default());
            eprint!("keyless: {e}");
            return ExitCode::from(2);
        }
    };
    init_tracing(config.log_format);
    prepare_descriptors();
    let listener = match bind(config.listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("keyless: cannot listen on {}: {e}", config.listen);
            return ExitCode::FAILURE;
        }
    };
    let admin = match config.admin_listen {
        Some(admin_addr) => match bind(admin_addr) {
            Ok(l) => Some(l),
            Err(e) => {
                eprintln!("keyless: cannot listen on {admin_addr} (--admin-listen): {e}");
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    let addr = listener.local_addr().unwrap_or(config.listen);
    banner(
        &config,
        addr,
        admin.as_ref().and_then(|a| a.local_addr().ok()),
    );
    let shutdown = CancellationToken::new();
    tokio::spawn(on_signal(shutdown.clone()));
    let listeners = keyless::Listeners {
        main: listener,
        admin,
    };
    match keyless::run(config, listeners, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "keyless could not start");
            eprintln!("keyless: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn simulator(
    listen: SocketAddr,
    identity_header: Option<String>,
    deployments: Vec<String>,
) -> ExitCode {
    init_tracing(LogFormat::Text);
    prepare_descriptors();
    let listener = match bind(listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("keyless: cannot listen on {listen}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let addr = listener.local_addr().unwrap_or(listen);
    println!("keyless simulator listening on http://{addr}");
    let _ = std::io::stdout().flush();
    let shutdown = CancellationToken::new();
    tokio::spawn(on_signal(shutdown.clone()));
    let options = keyless::simulate::Options {
        deployments: (!deployments.is_empty()).then(|| deployments.into_iter().collect()),
    };
    match keyless::simulate::serve_with(listener, identity_header, options, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keyless: simulator failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// What a person (and a test reading stdout) needs to start using keyless.
fn banner(config: &Config, addr: SocketAddr, admin: Option<SocketAddr>) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "keyless listening on http://{addr}");
    if let Some(admin) = admin {
        let _ = writeln!(out, "keyless admin listening on http://{admin}");
    }
    if let Target::Simulate = config.target {
        let _ = writeln!(
            out,
            "\nSimulated Azure OpenAI with an in-process identity: no Azure account needed. Try:\n\n  \
             curl http://{addr}/v1/chat/completions -H 'content-type: application/json' \\\n    \
             -d '{{\"model\":\"gpt-4o-mini\",\"messages\":[{{\"role\":\"user\",\"content\":\"Hello\"}}]}}'\n\n  \
             python -c \"from openai import OpenAI; print(OpenAI(base_url='http://{addr}/v1', api_key='unused')\
             .chat.completions.create(model='gpt-4o-mini', messages=[{{'role':'user','content':'Hello'}}]).choices[0].message.content)\"\n"
        );
    }
    let _ = out.flush();
}

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_env("KEYLESS_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // tungstenite traces each WebSocket upgrade request whole, the Entra bearer included:
    // its trace level stays off whatever KEYLESS_LOG asks.
    let filter = match "tungstenite=debug".parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    };
    use std::io::IsTerminal;
    // Colours only for a person at a terminal: never in journald, `docker logs` or files.
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

async fn on_signal(shutdown: CancellationToken) {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
    tracing::info!("shutdown requested: draining");
    shutdown.cancel();
}
