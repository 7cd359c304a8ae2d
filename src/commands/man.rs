//! `lvmsync-rs completions SHELL` and `lvmsync-rs man [DIR]`: the shell
//! completion scripts and the manual pages, made from the same argument
//! definitions as `--help`, so that they cannot say otherwise.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use clap::{CommandFactory, ValueEnum};
use clap_mangen::roff::{roman, Roff};
use clap_mangen::Man;

use lvmsync::error::Kind;
use lvmsync::Error;

#[derive(clap::Args, Debug)]
pub struct CompletionArgs {
    /// The shell to complete for
    #[arg(value_enum, value_name = "SHELL")]
    pub shell: Shell,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

#[derive(clap::Args, Debug)]
pub struct ManArgs {
    /// Write lvmsync-rs.1 and a page per subcommand into DIR (created if
    /// missing) instead of printing the main page on stdout
    #[arg(value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// The exit statuses: each status, its `error_kind` in `--json` output
/// (none for success), and what it means.
pub fn exit_statuses() -> Vec<(u8, Option<&'static str>, &'static str)> {
    let kinds = [
        (
            Kind::Failed,
            "anything else: an I/O error, a tool that failed",
        ),
        (Kind::Usage, "the command line is wrong"),
        (
            Kind::Differ,
            "the copies differ (verify) or the archive is damaged (archive check)",
        ),
        (
            Kind::Refused,
            "refused, nothing written: another base, a device in use, another writer, \
             DEST too small, a restricted far end, no such point",
        ),
        (Kind::Damaged, "a damaged delta, archive object or report"),
        (
            Kind::Unreachable,
            "the far end or the object store cannot be reached",
        ),
        (
            Kind::Interrupted,
            "a transfer cut or stalled midway: the same command completes it",
        ),
        (
            Kind::Source,
            "the snapshot or change table cannot be read as asked: not a snapshot, \
             invalidated, merging",
        ),
    ];
    let mut all = vec![(0, None, "success")];
    all.extend(
        kinds
            .into_iter()
            .map(|(kind, what)| (kind.exit_code(), Some(kind.name()), what)),
    );
    all
}

pub fn completions(args: CompletionArgs) -> Result<(), Error> {
    let shell = match args.shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut crate::Cli::command(), "lvmsync-rs", &mut script);
    if let Shell::Bash = args.shell {
        // clap_complete 4.6 spells the states of a hyphenated program's
        // subcommands one way where it sets them (lvmsync__rs__subcmd__sync)
        // and another where it matches them (lvmsync__subcmd__rs__subcmd__sync),
        // so nothing past a subcommand completed (clap-rs/clap#6421): one
        // spelling for both. Once clap_complete agrees with itself, this
        // finds nothing to replace.
        let text = String::from_utf8(script).expect("the script is UTF-8");
        script = text
            .replace("lvmsync__subcmd__rs", "lvmsync__rs")
            .into_bytes();
    }
    let mut out = io::stdout().lock();
    out.write_all(&script)
        .and_then(|()| out.flush())
        .map_err(Error::Output)
}

pub fn man(args: ManArgs) -> Result<(), Error> {
    let cli = without_help_subcommands(crate::Cli::command());
    let Some(dir) = args.dir else {
        let mut out = io::stdout().lock();
        return out
            .write_all(&page(&cli, true))
            .and_then(|()| out.flush())
            .map_err(Error::Output);
    };
    let create = |path: &Path, source: io::Error| Error::Create {
        path: path.display().to_string(),
        source,
    };
    std::fs::create_dir_all(&dir).map_err(|e| create(&dir, e))?;
    let mut pages = vec![(page_name(&cli), page(&cli, true))];
    let mut stack: Vec<clap::Command> = cli.get_subcommands().cloned().collect();
    while let Some(cmd) = stack.pop() {
        if cmd.is_hide_set() {
            continue;
        }
        pages.push((page_name(&cmd), page(&cmd, false)));
        stack.extend(cmd.get_subcommands().cloned());
    }
    for (name, body) in &pages {
        let path = dir.join(name);
        lvmsync::files::replace(&path, body, 0o644).map_err(|e| create(&path, e))?;
    }
    eprintln!(
        "lvmsync-rs man: wrote lvmsync-rs.1 and {} pages of its subcommands to {}",
        pages.len() - 1,
        dir.display()
    );
    Ok(())
}

/// The command with no `help` subcommand at any level (built, so that
/// every subcommand knows its full name): it would have no page.
fn without_help_subcommands(cmd: clap::Command) -> clap::Command {
    fn strip(cmd: clap::Command) -> clap::Command {
        let names: Vec<String> = cmd
            .get_subcommands()
            .map(|c| c.get_name().to_string())
            .collect();
        names
            .iter()
            .fold(cmd.disable_help_subcommand(true), |cmd, name| {
                cmd.mut_subcommand(name, strip)
            })
    }
    let mut cmd = strip(cmd);
    cmd.build();
    cmd
}

/// `lvmsync-rs-sync.1`.
fn page_name(cmd: &clap::Command) -> String {
    format!("{}.1", cmd.get_display_name().unwrap_or(cmd.get_name()))
}

/// The manual page of `cmd`: the sections clap_mangen makes from the
/// argument definitions, then the text after the options, split into
/// paragraphs and examples; for the main page, the exit statuses and the
/// other pages.
fn page(cmd: &clap::Command, main: bool) -> Vec<u8> {
    let man = Man::new(cmd.clone());
    type Section = fn(&Man, &mut dyn Write) -> io::Result<()>;
    let mut sections: Vec<Section> = vec![
        Man::render_name_section,
        Man::render_synopsis_section,
        Man::render_description_section,
    ];
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        sections.push(Man::render_options_section);
    }
    if cmd.get_subcommands().any(|c| !c.is_hide_set()) {
        sections.push(Man::render_subcommands_section);
    }
    // Each rendering starts with the same preamble: the page needs it once.
    let preamble = Roff::new().render();
    let mut out = preamble.clone().into_bytes();
    // The title line, written here: clap_mangen leaves out an empty date,
    // and the fields after it then shift.
    let title = page_name(cmd);
    let title = title.strip_suffix(".1").unwrap_or(&title);
    out.extend_from_slice(
        format!(
            ".TH {} 1 \"\" \"{}\" \"User Commands\"\n",
            title.to_uppercase().replace('-', "\\-"),
            lvmsync::TOOL
        )
        .as_bytes(),
    );
    let mut add = |text: String| {
        out.extend_from_slice(text.strip_prefix(&preamble).unwrap_or(&text).as_bytes())
    };
    for render in sections {
        let mut text = Vec::new();
        render(&man, &mut text).expect("writing to memory");
        add(String::from_utf8(text).expect("roff renders UTF-8"));
    }
    let mut roff = Roff::new();
    if main {
        roff.control("SH", ["EXIT STATUS"]);
        for (code, kind, what) in exit_statuses() {
            roff.control("TP", []);
            match kind {
                Some(kind) => roff.text([roman(format!("{code} ({kind})"))]),
                None => roff.text([roman(code.to_string())]),
            };
            roff.text([roman(what)]);
        }
        roff.control("PP", []);
        roff.text([roman(crate::JSON_FAILURE)]);
        roff.control("SH", ["NOTES"]);
        roff.text([roman(crate::SHORTHAND)]);
    } else if let Some(text) = cmd.get_after_help() {
        roff.control("SH", ["NOTES"]);
        notes(&mut roff, &text.to_string());
    }
    roff.control("SH", ["SEE ALSO"]);
    let others: Vec<String> = if main {
        let mut names: Vec<String> = cmd
            .get_subcommands()
            .filter(|c| !c.is_hide_set())
            .map(|c| format!("{}(1)", c.get_display_name().unwrap_or(c.get_name())))
            .collect();
        names.sort();
        names
    } else {
        vec!["lvmsync-rs(1)".into()]
    };
    roff.text([roman(others.join(", "))]);
    add(roff.render());
    out
}

/// Text as `--help` shows it after the options: paragraphs between empty
/// lines, and lines indented by two spaces (examples) kept as they are.
fn notes(roff: &mut Roff, text: &str) {
    let mut verbatim = false;
    for line in text.lines() {
        let example = line.starts_with("  ");
        if example && !verbatim {
            roff.control("RS", ["4"]).control("nf", []);
        } else if !example && verbatim {
            roff.control("fi", []).control("RE", []);
        }
        verbatim = example;
        if line.trim().is_empty() {
            roff.control("PP", []);
        } else {
            roff.text([roman(line.trim_start())]);
        }
    }
    if verbatim {
        roff.control("fi", []).control("RE", []);
    }
}
