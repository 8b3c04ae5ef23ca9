//! Why a service could not start: the flag at fault and the cause, which decide the exit code.

/// `EX_USAGE` from sysexits.h: the command was used incorrectly (a bad flag, env var or file).
pub const EXIT_USAGE: i32 = 64;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a service could not start, or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Bad configuration (a flag, an env var, a file it names): the binary exits 64.
    #[error("{flag}: {source}")]
    Config {
        /// The flag (or flags) at fault, e.g. `--tls-ca`.
        flag: &'static str,
        /// What is wrong with it.
        source: BoxError,
    },
    /// A runtime failure (a port in use, an unreachable issuer): the binary exits 1.
    #[error("{what}: {source}")]
    Runtime {
        /// What was being done, e.g. `bind 0.0.0.0:50052`.
        what: String,
        /// Why it failed.
        source: BoxError,
    },
}

impl StartError {
    /// A configuration error about `flag`.
    pub fn config(flag: &'static str, source: impl Into<BoxError>) -> Self {
        Self::Config {
            flag,
            source: source.into(),
        }
    }

    /// A runtime failure while doing `what`.
    pub fn runtime(what: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self::Runtime {
            what: what.into(),
            source: source.into(),
        }
    }

    /// Whether this is the operator's configuration (exit 64).
    pub fn is_config(&self) -> bool {
        matches!(self, Self::Config { .. })
    }

    /// The process exit code: 64 for configuration, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        if self.is_config() { EXIT_USAGE } else { 1 }
    }
}

/// Prints a start-up error and exits with its code.
pub fn exit_on_start_error(error: StartError) -> ! {
    eprintln!("error: {error}");
    std::process::exit(error.exit_code())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_errors_name_the_flag_and_exit_64() {
        let error = StartError::config("--db", "not a file");
        assert_eq!(error.to_string(), "--db: not a file");
        assert_eq!(error.exit_code(), 64);
        let error = StartError::runtime("bind 127.0.0.1:1", "address in use");
        assert_eq!(error.to_string(), "bind 127.0.0.1:1: address in use");
        assert_eq!(error.exit_code(), 1);
    }
}
