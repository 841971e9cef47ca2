//! `headroom-options`: what every Headroom binary's command line shares.
//! A default is written once, in its `#[arg(default_value…)]`, and
//! [`clap_defaults`] gives it to `Default` impls; every option is also an
//! environment variable, which [`options_without_env`] checks.

/// The defaults of a set of options as its clap attributes declare them,
/// ignoring the environment: `Default` impls call this instead of
/// repeating the values. Fails naming the first option without a default.
pub fn clap_defaults<T: clap::Args + clap::FromArgMatches>() -> Result<T, String> {
    let command = T::augment_args(clap::Command::new("defaults"))
        .mut_args(|a| a.env(None::<&str>))
        .no_binary_name(true);
    let matches = command
        .try_get_matches_from(std::iter::empty::<String>())
        .map_err(|e| e.to_string())?;
    T::from_arg_matches(&matches).map_err(|e| e.to_string())
}

/// Every option of `command` and of its subcommands, walked recursively,
/// that cannot be set from an environment variable, as
/// `"headroom-x sub --flag"`. Positional arguments, `--help` and
/// `--version` are exempt (they are not settings). Empty when the README's
/// promise, "every option is a flag and an environment variable", holds.
pub fn options_without_env(command: &clap::Command) -> Vec<String> {
    let mut missing = Vec::new();
    walk(command, command.get_name(), &mut missing);
    missing
}

/// Panics, listing them, when an option of `command` (or of a subcommand)
/// has no environment variable: the test every binary runs on its `Cli`.
pub fn assert_every_option_has_env(command: &clap::Command) {
    let missing = options_without_env(command);
    assert!(
        missing.is_empty(),
        "options without an environment variable (add `env = \"HEADROOM_…\"`): {missing:#?}"
    );
}

fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
    for arg in command.get_arguments() {
        let is_flag = arg.get_long().is_some() || arg.get_short().is_some();
        let builtin = matches!(arg.get_id().as_str(), "help" | "version");
        if is_flag && !builtin && arg.get_env().is_none() {
            let name = arg.get_long().map_or_else(
                || format!("-{}", arg.get_short().unwrap_or('?')),
                |l| format!("--{l}"),
            );
            missing.push(format!("{path} {name}"));
        }
    }
    for sub in command.get_subcommands() {
        if sub.get_name() == "help" {
            continue;
        }
        walk(sub, &format!("{path} {}", sub.get_name()), missing);
    }
}

#[cfg(test)]
mod tests {
    use clap::{Args, Parser, Subcommand};

    use super::*;

    #[derive(Debug, Args, PartialEq)]
    struct Limits {
        #[arg(long, env = "T_LIMIT", default_value_t = 7)]
        limit: u32,
        #[arg(long, env = "T_NAME", default_value = "x")]
        name: String,
    }

    #[derive(Debug, Parser)]
    #[command(name = "t")]
    struct Cli {
        #[arg(long, env = "T_GLOBAL")]
        global: Option<String>,
        #[command(subcommand)]
        command: Sub,
    }

    #[derive(Debug, Subcommand)]
    enum Sub {
        Run {
            #[arg(long)]
            forgotten: bool,
            #[arg(long, env = "T_KEPT")]
            kept: bool,
            /// A positional file is not a setting.
            file: Option<String>,
        },
    }

    #[test]
    fn defaults_come_from_the_attributes() {
        let l: Limits = clap_defaults().unwrap();
        assert_eq!(
            l,
            Limits {
                limit: 7,
                name: "x".into()
            }
        );
    }

    #[test]
    fn options_without_an_environment_variable_are_named() {
        use clap::CommandFactory as _;
        let missing = options_without_env(&Cli::command());
        assert_eq!(missing, vec!["t run --forgotten".to_string()]);
    }
}
