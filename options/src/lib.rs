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

/// An error and its causes on one line (`error: cause: cause`), for a
/// binary's one-line failure. A cause is written only when the text before
/// it does not already hold it: sqlx's and thiserror's messages embed their
/// source, which `{:#}` would print again ("database error: relation …:
/// relation …: relation …").
pub fn one_line(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

/// Writes `text` to standard output and flushes it. A reader that left
/// early (`headroom-train inspect | head`) is not an error: like the
/// standard Unix tools, the command stops writing and succeeds, where
/// `print!` would panic on the broken pipe. Other write errors are
/// returned.
pub fn print_out(text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// One item of a comma-separated list of names (`--services "a, b"`):
/// trimmed of the spaces around it, refused when empty ("a,,b" or a
/// trailing comma), so a name never carries a stray space into a lookup.
/// Use as `value_parser = headroom_options::list_item` beside
/// `value_delimiter = ','`.
pub fn list_item(s: &str) -> Result<String, String> {
    let t = s.trim();
    if t.is_empty() {
        Err("empty item in a comma-separated list (two commas in a row, or one at an end)".into())
    } else {
        Ok(t.to_string())
    }
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

    #[test]
    fn list_items_are_trimmed_and_empty_ones_refused() {
        assert_eq!(list_item(" vm-1 ").unwrap(), "vm-1");
        assert!(list_item("  ").unwrap_err().contains("empty item"));
    }

    #[test]
    fn one_line_names_each_cause_once() {
        #[derive(Debug)]
        struct E(&'static str, Option<Box<E>>);
        impl std::fmt::Display for E {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.0)
            }
        }
        impl std::error::Error for E {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                self.1.as_deref().map(|e| e as _)
            }
        }
        // A message that embeds its source, as sqlx's does.
        let e = E(
            "database error: relation \"tasks\" does not exist",
            Some(Box::new(E("relation \"tasks\" does not exist", None))),
        );
        assert_eq!(
            one_line(&e),
            "database error: relation \"tasks\" does not exist"
        );
        let e = E("while reading x", Some(Box::new(E("no such file", None))));
        assert_eq!(one_line(&e), "while reading x: no such file");
    }
}
