//! What every ShardFS program does the same way at start and stop: logging to stderr through
//! `RUST_LOG`, the allocator setting, an error line and exit status, and shutdown on SIGTERM or
//! Ctrl-C.

use std::fmt::Display;
use std::process::ExitCode;
use tokio::sync::watch;

/// Log to stderr, filtered by `RUST_LOG` (else `default`), colored only on a terminal.
pub fn init(default: &str) {
    crate::tune_allocator();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default.into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Print `program: error: …` for a failure and turn the result into an exit status.
pub fn exit<E: Display>(program: &str, r: Result<(), E>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{program}: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A channel that turns true on SIGTERM or Ctrl-C. Call inside a tokio runtime.
pub fn shutdown_signal() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        let _ = tx.send(true);
    });
    rx
}
