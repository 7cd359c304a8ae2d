//! Running the system tools lvmsync-rs relies on (`lvs`, `dmsetup`,
//! `lvcreate`, ...): one way to start them, in the C locale, and one way to
//! turn their failure into a one-line error naming the tool and its last
//! words.

use std::ffi::OsStr;
use std::io;
use std::process::{Command, Stdio};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum ToolError {
    #[error("{tool} not found: install the {package} package")]
    Missing {
        tool: &'static str,
        package: &'static str,
    },
    #[error("{tool} failed: {message}")]
    Failed { tool: String, message: String },
}

/// Runs `tool` (from Debian package `package`) with `args` and returns its
/// stdout. A non-zero exit status is an error carrying the last non-empty
/// line of its stderr.
pub fn run(
    tool: &'static str,
    package: &'static str,
    args: &[&OsStr],
) -> Result<String, ToolError> {
    let out = Command::new(tool)
        .args(args)
        .env("LC_ALL", "C")
        .env("LVM_SUPPRESS_FD_WARNINGS", "1")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                ToolError::Missing { tool, package }
            } else {
                ToolError::Failed {
                    tool: tool.into(),
                    message: e.to_string(),
                }
            }
        })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let msg = last_line(&err).unwrap_or("no message").to_string();
        let command = match args.first() {
            Some(first) => format!("{tool} {}", first.to_string_lossy()),
            None => tool.to_string(),
        };
        return Err(ToolError::Failed {
            tool: command,
            message: format!("{msg} ({})", out.status),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// [`run`] with arguments given as text.
pub fn run_str(
    tool: &'static str,
    package: &'static str,
    args: &[&str],
) -> Result<String, ToolError> {
    let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    run(tool, package, &args)
}

/// The last non-empty line of `text`, trimmed.
fn last_line(text: &str) -> Option<&str> {
    text.lines().map(str::trim).rfind(|l| !l.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_tool_names_its_package_and_a_failure_its_last_words() {
        let err = run_str("lvmsync-no-such-tool", "some-package", &[]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "lvmsync-no-such-tool not found: install the some-package package"
        );
        let err = run_str(
            "sh",
            "dash",
            &["-c", "echo first >&2; echo 'last words' >&2; exit 3"],
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("sh -c failed: last words ("), "{err}");
        assert_eq!(run_str("sh", "dash", &["-c", "echo hi"]).unwrap(), "hi\n");
    }
}
