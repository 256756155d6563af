//! Debian's own kernels, fetched from Debian's archive with apt through a
//! private sources list and lists directory (the system's apt is never
//! touched), extracted with `dpkg-deb -x` (never installed), and cached
//! under `target/vm/kernels/`.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::util::{exec, root};

/// The kernels the matrix knows, as `--kernel` names them.
#[derive(Debug)]
pub struct KernelSpec {
    pub name: &'static str,
    /// The Debian suite whose `linux-image-FLAVOR` picks the version.
    pub suite: &'static str,
    /// `amd64`; `cloud-amd64`, the smaller configuration Debian's cloud
    /// images boot (fewer modules); `rt-amd64`, PREEMPT_RT.
    pub flavor: &'static str,
}

const fn k(name: &'static str, suite: &'static str, flavor: &'static str) -> KernelSpec {
    KernelSpec { name, suite, flavor }
}

pub const KERNELS: &[KernelSpec] = &[
    k("5.10", "bullseye", "amd64"),
    k("6.1", "bookworm", "amd64"),
    k("6.12", "trixie", "amd64"),
    k("sid", "sid", "amd64"),
    k("6.1-cloud", "bookworm", "cloud-amd64"),
    k("6.12-cloud", "trixie", "cloud-amd64"),
    k("6.12-rt", "trixie", "rt-amd64"),
];

/// A kernel ready to boot.
#[derive(Debug, Clone)]
pub struct Kernel {
    pub name: String,
    /// `uname -r` of the kernel, e.g. `6.1.0-50-amd64`.
    pub release: String,
    pub vmlinuz: PathBuf,
    /// The directory that becomes `/lib/modules/<release>` in the guest.
    pub modules: PathBuf,
    /// Whether the kernel can mount a 9p share over virtio (its config
    /// says). Debian's cloud flavor cannot: its guest's root is virtio-fs.
    pub has_9p: bool,
}

pub fn spec(name: &str) -> Result<&'static KernelSpec> {
    KERNELS.iter().find(|k| k.name == name).with_context(|| {
        let known: Vec<&str> = KERNELS.iter().map(|k| k.name).collect();
        format!("unknown kernel {name:?}: one of {}", known.join(", "))
    })
}

fn cache_dir() -> PathBuf {
    root().join("target/vm/kernels")
}

/// apt with its own sources list, lists and cache under `target/vm/apt`:
/// Debian's archive is the package registry, and its signatures are checked
/// against the machine's Debian keyring as for any apt download.
pub(crate) fn apt(suite: &str, tool: &str) -> Result<Command> {
    let dir = root().join("target/vm/apt").join(suite);
    for sub in ["lists/partial", "cache/archives/partial"] {
        fs::create_dir_all(dir.join(sub))?;
    }
    let list = dir.join("sources.list");
    fs::write(
        &list,
        format!("deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian {suite} main\n"),
    )?;
    let mut c = Command::new(tool);
    for (k, v) in [
        ("Dir::Etc::SourceList", list.display().to_string()),
        ("Dir::Etc::SourceParts", "/dev/null".into()),
        ("Dir::State::Lists", dir.join("lists").display().to_string()),
        ("Dir::Cache", dir.join("cache").display().to_string()),
        ("Dir::State::status", "/dev/null".into()),
        ("APT::Architecture", "amd64".into()),
        // Only the package lists: no translations, no AppStream metadata.
        ("Acquire::Languages", "none".into()),
        ("Acquire::IndexTargets::deb::DEP-11::DefaultEnabled", "false".into()),
        ("Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled", "false".into()),
        ("Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled", "false".into()),
        ("Acquire::IndexTargets::deb::Contents-deb::DefaultEnabled", "false".into()),
    ] {
        c.arg("-o").arg(format!("{k}={v}"));
    }
    Ok(c)
}

/// The packages named in a `Depends:` line (alternatives and versions dropped).
fn depends(show: &str) -> Vec<String> {
    show.lines()
        .find_map(|l| l.strip_prefix("Depends:"))
        .map(|d| {
            d.split(',').filter_map(|p| p.split('|').next()?.split_whitespace().next().map(str::to_owned)).collect()
        })
        .unwrap_or_default()
}

fn show(suite: &str, pkg: &str) -> Result<String> {
    let out = apt(suite, "apt-cache")?.args(["show", pkg]).output().context("cannot run apt-cache")?;
    if !out.status.success() {
        bail!("apt-cache show {pkg}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    // Several versions may be listed: the first stanza is the candidate.
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text.split("\n\n").next().unwrap_or_default().to_owned())
}

/// The kernel `--kernel NAME` means, fetched and extracted if not cached.
pub fn fetch(name: &str) -> Result<Kernel> {
    let spec = spec(name)?;
    let dir = cache_dir().join(spec.name);
    if let Ok(k) = cached(spec.name, &dir) {
        return Ok(k);
    }
    eprintln!("xtask: fetching Debian's {} kernel ({}, linux-image-{})", spec.name, spec.suite, spec.flavor);
    exec(apt(spec.suite, "apt-get")?.args(["-q", "update"]))?;
    let meta = show(spec.suite, &format!("linux-image-{}/{}", spec.flavor, spec.suite))?;
    let image = depends(&meta)
        .into_iter()
        .find(|p| p.starts_with("linux-image-"))
        .with_context(|| format!("linux-image-{} depends on no linux-image package", spec.flavor))?;
    let release = image.trim_start_matches("linux-image-").to_owned();
    // Newer packaging splits the kernel (sid: linux-binary-V, linux-modules-V).
    let mut pkgs = vec![image.clone()];
    pkgs.extend(
        depends(&show(spec.suite, &image)?)
            .into_iter()
            .filter(|p| p.ends_with(&release) && (p.starts_with("linux-binary-") || p.starts_with("linux-modules-"))),
    );
    let debs = dir.join("debs");
    let tree = dir.join("root");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&debs)?;
    fs::create_dir_all(&tree)?;
    exec(apt(spec.suite, "apt-get")?.arg("-q").arg("download").args(&pkgs).current_dir(&debs))?;
    for deb in fs::read_dir(&debs)?.flatten().map(|e| e.path()) {
        exec(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree))?;
    }
    fs::remove_dir_all(&debs)?;
    let k = locate(spec.name, &release, &tree)?;
    // modules.dep and friends, so that modprobe in the guest resolves dependencies.
    let base = k.modules.parent().and_then(Path::parent).and_then(Path::parent).context("modules path")?;
    exec(Command::new("depmod").arg("-b").arg(base).arg(&release))?;
    fs::write(dir.join("release"), &release)?;
    Ok(k)
}

fn cached(name: &str, dir: &Path) -> Result<Kernel> {
    let release = fs::read_to_string(dir.join("release"))?;
    locate(name, release.trim(), &dir.join("root"))
}

/// vmlinuz and modules in either layout (`boot/` + `lib/modules/`, or all
/// under `usr/lib/modules/<release>/`).
fn locate(name: &str, release: &str, tree: &Path) -> Result<Kernel> {
    let candidates = [
        (tree.join(format!("boot/vmlinuz-{release}")), tree.join(format!("lib/modules/{release}"))),
        (tree.join(format!("usr/lib/modules/{release}/vmlinuz")), tree.join(format!("usr/lib/modules/{release}"))),
        (tree.join(format!("boot/vmlinuz-{release}")), tree.join(format!("usr/lib/modules/{release}"))),
    ];
    for (vmlinuz, modules) in candidates {
        if vmlinuz.is_file() && modules.is_dir() {
            // sid's split packaging (linux-binary, linux-modules) ships no
            // config: such a kernel is taken to have 9p, as sid's has.
            let has_9p = [tree.join(format!("boot/config-{release}")), modules.join("config")]
                .iter()
                .find_map(|p| fs::read_to_string(p).ok())
                .is_none_or(|c| has_9p(&c));
            return Ok(Kernel { name: name.to_owned(), release: release.to_owned(), vmlinuz, modules, has_9p });
        }
    }
    bail!("no vmlinuz-{release} and modules in {}", tree.display())
}

/// A 9p root needs the filesystem and its virtio transport, built in or
/// as modules (virtme-ng loads them).
fn has_9p(config: &str) -> bool {
    let set = |opt: &str| config.lines().any(|l| l == format!("{opt}=y") || l == format!("{opt}=m"));
    set("CONFIG_9P_FS") && set("CONFIG_NET_9P_VIRTIO")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nine_p_is_read_from_the_config() {
        assert!(has_9p("CONFIG_NET_9P=m\nCONFIG_NET_9P_VIRTIO=m\nCONFIG_9P_FS=m\n"));
        assert!(has_9p("CONFIG_NET_9P_VIRTIO=y\nCONFIG_9P_FS=y\n"));
        // Debian's cloud flavor.
        assert!(!has_9p("# CONFIG_NET_9P is not set\nCONFIG_VIRTIO_FS=y\n"));
        assert!(!has_9p("CONFIG_9P_FS=m\n# CONFIG_NET_9P_VIRTIO is not set\n"));
    }

    #[test]
    fn depends_lists_package_names() {
        let s = "Package: linux-image-7.2.13+deb14-amd64\nDepends: dracut | initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool, linux-binary-7.2.13+deb14-amd64 (= 7.2.13-1), linux-modules-7.2.13+deb14-amd64 (= 7.2.13-1)\n";
        assert_eq!(
            depends(s),
            ["dracut", "linux-binary-7.2.13+deb14-amd64", "linux-modules-7.2.13+deb14-amd64"].map(String::from)
        );
        assert!(depends("Package: x\n").is_empty());
    }

    #[test]
    fn every_kernel_name_is_known() {
        assert_eq!(spec("6.1").unwrap().suite, "bookworm");
        assert_eq!(spec("6.12-rt").unwrap().flavor, "rt-amd64");
        assert!(spec("4.19").unwrap_err().to_string().contains("one of 5.10, 6.1, 6.12, sid, 6.1-cloud"));
    }
}
