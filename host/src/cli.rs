//! Command-line flags, parsed by clap and then turned into the plain requests the commands
//! take (`pull::Request`, `bundle::Request`, `verify::Request`, `cache::Command`): nothing below this module
//! sees a clap type. What the environment says that changes a build
//! (`$SOURCE_DATE_EPOCH`) is read here too, into the request.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::size::{parse_size, parse_size_arg, SizeArg};
use crate::source::spec::PlatformSpec;

#[derive(Debug, Parser)]
#[command(
    name = "rootbox",
    version,
    about = "Turn container images into bootable ext4 root filesystems, safely: layers are applied inside a sandbox, never on the host."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build an ext4 root filesystem from an image.
    Pull(PullArgs),
    /// Build an ext4 root filesystem and pack it with a manifest into a tar+zstd bundle.
    Bundle(BundleArgs),
    /// Rebuild what a build record (`pull --record`) describes and say whether the output is
    /// byte-identical (exit 0) or differs (exit 6), and what changed since.
    Verify(VerifyArgs),
    /// Report what rootbox found on this machine and which sandboxes can run.
    Doctor(DoctorArgs),
    /// List or prune the registry blob cache ($XDG_CACHE_HOME/rootbox/oci).
    #[command(subcommand)]
    Cache(CacheCommand),
    /// Name the ext4 structures two images differ in (superblock and inode fields with
    /// paths, file blocks, directory blocks, the journal), without mounting them. Exits 0
    /// when identical, 6 when they differ.
    Diff(DiffArgs),
}

#[derive(Debug, clap::Args)]
pub struct DiffArgs {
    pub a: PathBuf,
    pub b: PathBuf,
    /// List every difference, not a few of each kind.
    #[arg(long)]
    pub all: bool,
    #[arg(long)]
    pub json: bool,
}

impl DiffArgs {
    pub fn request(&self) -> crate::compare::Request {
        crate::compare::Request {
            a: self.a.clone(),
            b: self.b.clone(),
            json: self.json,
            all: self.all,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// List the cached images (reference, platform, digest, size, last use).
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Remove images (least recently used first) and every blob no remaining image needs.
    /// Without options only unreferenced blobs and leftovers of interrupted downloads go;
    /// `--older-than 0s` empties the cache.
    Prune {
        /// Remove images last used longer ago than this (30d, 12h, 90m, 3600s, 2w).
        #[arg(long, value_parser = crate::size::parse_duration)]
        older_than: Option<std::time::Duration>,
        /// Then remove the least recently used images until the rest fit in SIZE (10GiB).
        #[arg(long, value_parser = parse_size)]
        max_size: Option<u64>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum IsolationArg {
    /// The microVM when KVM works, else the container when root, else the microVM under
    /// TCG (emulated, slow) as the last resort.
    Auto,
    /// Namespace container (needs root).
    Container,
    /// MicroVM (Firecracker or QEMU).
    Vm,
}

#[derive(Debug, Clone, clap::Args)]
pub struct PullArgs {
    /// oci:DIR[:TAG], docker-archive:FILE, rootfs-tar:FILE (rootfs-tar:- reads stdin),
    /// docker://REGISTRY/REPO[:TAG|@DIGEST] or a bare reference (debian:bookworm)
    pub source: String,
    /// Where to write the ext4 image.
    #[arg(short, long)]
    pub output: PathBuf,
    #[arg(long, value_enum, default_value_t = IsolationArg::Auto)]
    pub isolation: IsolationArg,
    /// `auto` (content + headroom) or an exact size such as 4GiB, 512MiB, 4G, 4096M.
    #[arg(long, default_value = "auto", value_parser = parse_size_arg)]
    pub size: SizeArg,
    /// Free space added by --size auto, in percent of the minimum size.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(0..=1000))]
    pub headroom: u32,
    /// Platform to pick from an image index, and to require of the image.
    #[arg(long, default_value = "linux/amd64", value_parser = PlatformSpec::parse)]
    pub platform: PlatformSpec,
    /// Print one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    /// Print progress lines on stderr even when it is not a terminal.
    #[arg(long)]
    pub progress: bool,
    /// The worker image directory (default: $ROOTBOX_WORKER_IMAGE, then the install location).
    #[arg(long)]
    pub worker_image: Option<PathBuf>,
    /// Refuse images whose layers uncompress to more than this, all layers together.
    #[arg(long, default_value = "64GiB", value_parser = parse_size)]
    pub max_uncompressed: u64,
    /// Refuse images with more tar entries than this, all layers together.
    #[arg(long, default_value_t = 4_000_000)]
    pub max_entries: u64,
    /// Filesystem label.
    #[arg(long, default_value = "rootfs")]
    pub label: String,
    /// Do not inject the default guest assets (see assets/README.md).
    #[arg(long)]
    pub no_default_assets: bool,
    /// Inject this directory tree into the image (modes kept, owned by root).
    #[arg(long, value_name = "DIR")]
    pub inject: Option<PathBuf>,
    /// Talk plain HTTP to the registry (for a registry on loopback).
    #[arg(long)]
    pub plain_http: bool,
    /// Registry credentials (default: $REGISTRY_AUTH_FILE, $DOCKER_CONFIG/config.json,
    /// ~/.docker/config.json, else anonymous).
    #[arg(long, value_name = "USER:PASS", value_parser = crate::source::registry::auth::Creds::parse)]
    pub creds: Option<crate::source::registry::auth::Creds>,
    /// Download (registry pulls) and verify every layer in full before the build starts,
    /// instead of checking each layer's uncompressed bytes as they ship (slower: every byte is
    /// decompressed twice; but the scratch file is sized exactly, for images whose content is
    /// far larger than their compressed size or than their layers declare).
    #[arg(long)]
    pub fetch_first: bool,
    #[command(flatten)]
    pub sandbox: SandboxArgs,
    /// Write a build record (JSON: the inputs, the environment, the output's sha256) to FILE
    /// once the image is in place; `rootbox verify FILE` rebuilds from it.
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,
    /// Skip the worker's canonicalising pass (for diagnosing reproducibility with
    /// `rootbox diff`: shows what the pass fixes).
    #[arg(long, hide = true)]
    pub no_canonicalise: bool,
}

/// The sandbox's limits, for `pull` and `verify`.
#[derive(Debug, Clone, clap::Args)]
pub struct SandboxArgs {
    /// MicroVM guest memory (fixed: the worker streams, so it need not grow with the image).
    #[arg(long, default_value = "256MiB", value_parser = parse_size)]
    pub vm_memory: u64,
    /// Seconds the microVM may take to boot and connect (one more boot if it never started
    /// the worker).
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    pub boot_timeout: u64,
    /// Seconds a job may take in all, in either sandbox; 0 for no limit.
    #[arg(long, default_value_t = 3600, value_name = "SECONDS")]
    pub job_timeout: u64,
}

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// A build record written by `pull --record`.
    pub record: PathBuf,
    /// The sandbox to rebuild in (default: the one the record names).
    #[arg(long, value_enum)]
    pub isolation: Option<IsolationArg>,
    /// The worker image directory (default: $ROOTBOX_WORKER_IMAGE, then the install location).
    #[arg(long)]
    pub worker_image: Option<PathBuf>,
    /// Keep the rebuilt image at PATH (default: built in a temp dir and removed).
    #[arg(long, value_name = "PATH")]
    pub keep: Option<PathBuf>,
    /// Print the verdict as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,
    /// Print progress lines on stderr even when it is not a terminal.
    #[arg(long)]
    pub progress: bool,
    /// Talk plain HTTP to the registry (for a registry on loopback).
    #[arg(long)]
    pub plain_http: bool,
    /// Registry credentials (as for `pull`).
    #[arg(long, value_name = "USER:PASS", value_parser = crate::source::registry::auth::Creds::parse)]
    pub creds: Option<crate::source::registry::auth::Creds>,
    #[command(flatten)]
    pub sandbox: SandboxArgs,
}

#[derive(Debug, clap::Args)]
pub struct BundleArgs {
    /// The same options as `pull`; `-o` names the bundle (OUT.tar.zst).
    #[command(flatten)]
    pub build: PullArgs,
    /// Catalog name (default: derived from the reference, e.g. debian-bookworm).
    #[arg(long)]
    pub name: Option<String>,
    /// Distribution (default: ID-VERSION_ID from the image's os-release).
    #[arg(long)]
    pub distro: Option<String>,
    /// Architecture (default: the --platform architecture).
    #[arg(long)]
    pub arch: Option<String>,
    /// The kernel this rootfs is meant to boot with, recorded in the manifest.
    #[arg(long)]
    pub kernel_ref: Option<String>,
    #[arg(long)]
    pub description: Option<String>,
    /// zstd compression level (1-22).
    #[arg(long, default_value_t = crate::bundle::ZSTD_LEVEL, value_parser = clap::value_parser!(i32).range(1..=22))]
    pub zstd_level: i32,
}

#[derive(Debug, clap::Args)]
pub struct DoctorArgs {
    #[arg(long)]
    pub worker_image: Option<PathBuf>,
    #[arg(long)]
    pub json: bool,
}

impl From<IsolationArg> for crate::sandbox::Isolation {
    fn from(a: IsolationArg) -> Self {
        match a {
            IsolationArg::Auto => Self::Auto,
            IsolationArg::Container => Self::Container,
            IsolationArg::Vm => Self::Vm,
        }
    }
}

impl PullArgs {
    /// The checked request; fails on a malformed `$SOURCE_DATE_EPOCH`.
    pub fn request(&self) -> Result<crate::pull::Request, crate::identity::BadEpoch> {
        Ok(crate::pull::Request {
            source: self.source.clone(),
            output: self.output.clone(),
            isolation: self.isolation.into(),
            size: self.size,
            headroom: self.headroom,
            platform: self.platform.clone(),
            json: self.json,
            progress: self.progress,
            worker_image: self.worker_image.clone(),
            max_uncompressed: self.max_uncompressed,
            max_entries: self.max_entries,
            label: self.label.clone(),
            no_default_assets: self.no_default_assets,
            inject: self.inject.clone(),
            plain_http: self.plain_http,
            creds: self.creds.clone(),
            fetch_first: self.fetch_first,
            vm_memory: self.sandbox.vm_memory,
            boot_timeout: self.sandbox.boot_timeout,
            job_timeout: self.sandbox.job_timeout,
            epoch: crate::identity::source_date_epoch()?,
            canonicalise: !self.no_canonicalise,
            record: self.record.clone(),
        })
    }
}

impl VerifyArgs {
    pub fn request(&self) -> crate::verify::Request {
        crate::verify::Request {
            record: self.record.clone(),
            isolation: self.isolation.map(Into::into),
            worker_image: self.worker_image.clone(),
            keep: self.keep.clone(),
            json: self.json,
            progress: self.progress,
            plain_http: self.plain_http,
            creds: self.creds.clone(),
            vm_memory: self.sandbox.vm_memory,
            boot_timeout: self.sandbox.boot_timeout,
            job_timeout: self.sandbox.job_timeout,
        }
    }
}

impl BundleArgs {
    pub fn request(&self) -> Result<crate::bundle::Request, crate::identity::BadEpoch> {
        Ok(crate::bundle::Request {
            build: self.build.request()?,
            name: self.name.clone(),
            distro: self.distro.clone(),
            arch: self.arch.clone(),
            kernel_ref: self.kernel_ref.clone(),
            description: self.description.clone(),
            zstd_level: self.zstd_level,
        })
    }
}

impl CacheCommand {
    pub fn request(&self) -> crate::cache::Command {
        match *self {
            CacheCommand::Ls { json } => crate::cache::Command::Ls { json },
            CacheCommand::Prune { older_than, max_size, json } => {
                crate::cache::Command::Prune { older_than, max_size, json }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse() {
        let c = Cli::try_parse_from([
            "rootbox",
            "pull",
            "oci:/x:tag",
            "-o",
            "out.ext4",
            "--size",
            "4GiB",
            "--json",
        ])
        .unwrap();
        let Command::Pull(p) = c.command else { panic!("not pull") };
        assert_eq!(p.size, SizeArg::Exact(4 << 30));
        assert_eq!(p.platform.to_string(), "linux/amd64");
        assert!(p.json);
        assert!(Cli::try_parse_from(["rootbox", "pull", "oci:/x", "-o", "o", "--size", "1.5G"])
            .is_err());
        assert!(Cli::try_parse_from([
            "rootbox",
            "pull",
            "oci:/x",
            "-o",
            "o",
            "--isolation",
            "chroot"
        ])
        .is_err());
        assert!(Cli::try_parse_from(["rootbox", "pull", "oci:/x"]).is_err(), "-o is required");
        let c = Cli::try_parse_from([
            "rootbox",
            "pull",
            "docker://127.0.0.1:5000/a:b",
            "-o",
            "o",
            "--plain-http",
            "--creds",
            "u:p:q",
        ])
        .unwrap();
        let Command::Pull(p) = c.command else { panic!("not pull") };
        assert!(p.plain_http);
        assert_eq!(p.creds.map(|c| c.user), Some("u".to_string()));
        assert!(
            Cli::try_parse_from(["rootbox", "pull", "x", "-o", "o", "--creds", "nopass"]).is_err()
        );
        let c = Cli::try_parse_from([
            "rootbox",
            "cache",
            "prune",
            "--older-than",
            "30d",
            "--max-size",
            "10GiB",
        ])
        .unwrap();
        let Command::Cache(CacheCommand::Prune { older_than, max_size, .. }) = c.command else {
            panic!("not cache prune")
        };
        assert_eq!(older_than, Some(std::time::Duration::from_secs(30 * 86_400)));
        assert_eq!(max_size, Some(10 << 30));
    }

    #[test]
    fn no_canonicalise_is_a_hidden_flag() {
        let pull = |extra: &[&str]| {
            let args = ["rootbox", "pull", "oci:/x", "-o", "o"].iter().chain(extra);
            match Cli::try_parse_from(args).map(|c| c.command) {
                Ok(Command::Pull(p)) => Ok(p),
                Ok(other) => panic!("not pull: {other:?}"),
                Err(e) => Err(e),
            }
        };
        assert!(!pull(&[]).unwrap().no_canonicalise);
        let p = pull(&["--no-canonicalise"]).unwrap();
        assert!(p.no_canonicalise);
        if std::env::var_os("SOURCE_DATE_EPOCH").is_none() {
            let r = p.request().unwrap();
            assert_eq!((r.canonicalise, r.epoch), (false, 0));
        }
        // Hidden: a diagnostic, not an everyday option.
        let help = Cli::try_parse_from(["rootbox", "pull", "--help"]).unwrap_err().to_string();
        assert!(help.contains("--label") && !help.contains("--no-canonicalise"), "{help}");
    }

    #[test]
    fn record_flag() {
        let c = Cli::try_parse_from(["rootbox", "pull", "oci:/x", "-o", "o", "--record", "b.json"]);
        let Command::Pull(p) = c.unwrap().command else { panic!("not pull") };
        assert_eq!(p.record, Some(PathBuf::from("b.json")));
        assert!(Cli::try_parse_from(["rootbox", "pull", "oci:/x", "-o", "o", "--record"]).is_err());
        // bundle takes pull's options.
        let c = Cli::try_parse_from(["rootbox", "bundle", "oci:/x", "-o", "b", "--record", "r"]);
        let Command::Bundle(b) = c.unwrap().command else { panic!("not bundle") };
        assert_eq!(b.build.record, Some(PathBuf::from("r")));
        let c = Cli::try_parse_from(["rootbox", "pull", "oci:/x", "-o", "o"]).unwrap();
        let Command::Pull(p) = c.command else { panic!("not pull") };
        assert_eq!(p.record, None);
    }

    #[test]
    fn verify_flags() {
        let c = Cli::try_parse_from(["rootbox", "verify", "r.json"]).unwrap();
        let Command::Verify(v) = c.command else { panic!("not verify") };
        assert_eq!(v.record, PathBuf::from("r.json"));
        assert_eq!((v.isolation, v.keep, v.json), (None, None, false));
        let c = Cli::try_parse_from([
            "rootbox",
            "verify",
            "r.json",
            "--isolation",
            "container",
            "--worker-image",
            "/w",
            "--keep",
            "re.ext4",
            "--json",
        ])
        .unwrap();
        let Command::Verify(v) = c.command else { panic!("not verify") };
        assert_eq!(v.isolation, Some(IsolationArg::Container));
        assert_eq!(v.worker_image, Some(PathBuf::from("/w")));
        assert_eq!(v.keep, Some(PathBuf::from("re.ext4")));
        assert!(v.json);
        assert!(Cli::try_parse_from(["rootbox", "verify"]).is_err(), "the record is required");
        assert!(Cli::try_parse_from(["rootbox", "verify", "r", "--isolation", "chroot"]).is_err());
    }
}
