//! The hidden `generate DIR` command: man pages (one per subcommand) and
//! shell completions, written from the same clap definition that parses
//! the command line, so they cannot drift from it. `cargo xtask package`
//! runs it on the release binary and puts the files into the .deb.

use std::{fs, path::Path};

use anyhow::{Context, Result};
use clap_complete::Shell;

/// Writes `DIR/man/reclaimscope.1`, `DIR/man/reclaimscope-SUB.1` for every
/// visible subcommand, and `DIR/completions/{reclaimscope.bash,_reclaimscope,reclaimscope.fish}`.
/// Returns the files written.
pub fn write_all(cmd: clap::Command, dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    let mut cmd = cmd;
    cmd.build();
    let man = dir.join("man");
    let comp = dir.join("completions");
    for d in [&man, &comp] {
        fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let mut written = Vec::new();
    let name = cmd.get_name().to_owned();
    let mut page = |c: &clap::Command, file: String| -> Result<()> {
        let mut buf = Vec::new();
        clap_mangen::Man::new(c.clone()).render(&mut buf)?;
        let path = man.join(file);
        fs::write(&path, buf).with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
        Ok(())
    };
    page(&cmd, format!("{name}.1"))?;
    // Not clap's own `help` subcommand: `reclaimscope help` has no page of its own.
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set() && s.get_name() != "help") {
        // The page's title is the full command, as git's are (git-log(1)).
        let full = format!("{name}-{}", sub.get_name());
        let sub = sub.clone().name(full.clone()).bin_name(format!("{name} {}", sub.get_name()));
        page(&sub, format!("{full}.1"))?;
    }
    for (shell, file) in
        [(Shell::Bash, format!("{name}.bash")), (Shell::Zsh, format!("_{name}")), (Shell::Fish, format!("{name}.fish"))]
    {
        let mut buf = Vec::new();
        clap_complete::generate(shell, &mut cmd, &name, &mut buf);
        let path = comp.join(file);
        fs::write(&path, buf).with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}
